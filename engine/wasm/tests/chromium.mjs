// Runs CPU engine modules (dist/engine*, from scripts/build-wasm.sh) in a page of a real
// headless Chromium: what the relaxed-SIMD test and the browser bench share. Serves each
// module under /<name>/, the model at /model.gguf and llama.cpp's AVX2 reference at
// /reference.json, on 127.0.0.1; the page is cross-origin isolated.
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launch } from '../../../demo-site/tests/browser.mjs';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const modelPath = process.env.KWAAINET_MODEL ??
  join(process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet'), 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const reference = join(root, 'engine', 'core', 'tests', 'data', 'smollm2-135m-q4_1.llamacpp-avx2.json');

/**
 * Opens a page that can import each of `dists` (folders holding kwaainet_wasm.js and its
 * .wasm) as `/<basename>/kwaainet_wasm.js`. Returns `{ page, names, close }`.
 */
export async function enginePage(dists) {
  const folders = new Map(dists.map((d) => [basename(resolve(d)), resolve(d)]));
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const headers = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };
    const send = (file, type) => {
      res.writeHead(200, { ...headers, 'content-type': type, 'content-length': statSync(file).size });
      createReadStream(file).pipe(res);
    };
    if (path === '/') {
      res.writeHead(200, { ...headers, 'content-type': 'text/html' }).end('<!doctype html><title>engine</title>');
    } else if (path === '/model.gguf') {
      send(modelPath, 'application/octet-stream');
    } else if (path === '/reference.json') {
      send(reference, 'application/json');
    } else {
      const m = /^\/([^/]+)\/(kwaainet_wasm(?:_bg\.wasm|\.js))$/.exec(path);
      const dir = m && folders.get(m[1]);
      if (!dir || !existsSync(join(dir, m[2]))) {
        res.writeHead(404, headers).end();
        return;
      }
      send(join(dir, m[2]), m[2].endsWith('.wasm') ? 'application/wasm' : 'text/javascript');
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const browser = await launch();
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${server.address().port}/`, { waitUntil: 'load', timeout: 30_000 });
  // Loads each module once, and the model's bytes once.
  await page.evaluate(async (names) => {
    window.modules = {};
    for (const n of names) {
      const m = await import(`/${n}/kwaainet_wasm.js`);
      await m.default({ module_or_path: `/${n}/kwaainet_wasm_bg.wasm` });
      window.modules[n] = m;
    }
    window.modelBytes = new Uint8Array(await (await fetch('/model.gguf')).arrayBuffer());
    window.reference = await (await fetch('/reference.json')).json();
  }, [...folders.keys()]);
  return {
    page,
    names: [...folders.keys()],
    close: async () => {
      await browser.close();
      await new Promise((ok) => server.close(ok));
    },
  };
}

export const haveModel = () => existsSync(modelPath);
export const readReference = () => JSON.parse(readFileSync(reference, 'utf8'));
