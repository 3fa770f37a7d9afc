#!/usr/bin/env node
// Browser bench: the SDK's CPU-WASM host (dedicated worker, simd128, one thread) in
// headless Chromium on the demo page, measured like `kwaainet bench` and
// engine/wasm/bench.mjs: load time, then prefill and decode tokens/s, medians of --runs.
// With --wllama, wllama (llama.cpp compiled to WebAssembly, npm @wllama/wllama) runs the
// same GGUF in the same browser, one thread, for comparison.
//
//   npm run bench:browser                          (= node demo-site/bench.mjs --wllama)
//   node demo-site/bench.mjs [--runs 5] [--repeat 3] [--gen-tokens 64] [--wllama]
//
// The prompt is `kwaainet bench`'s text repeated --repeat times (3: about 125 tokens), the
// same string for both engines; each reports how many tokens it made of it.
//
// Needs what the browser tests need (dist/cdn with the engine, Chromium, the model:
// --model, $KWAAINET_MODEL or the CLI's cache). wllama is not a dependency of the project:
// --wllama installs @wllama/wllama@2.4.0 (the faster release here) with npm into
// $KWAAINET_CACHE/bench (default ~/.cache/kwaainet/bench), once.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { findModel, startDemoServer } from './server.mjs';
import { launch, openDemo, recordEvents, within } from './tests/browser.mjs';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    repeat: { type: 'string', default: '3' },
    'gen-tokens': { type: 'string', default: '64' },
    wllama: { type: 'boolean', default: false },
    'wllama-version': { type: 'string', default: '2.4.0' },
    model: { type: 'string' },
  },
});
const runs = Number(args.runs);
const repeat = Number(args.repeat);
const genTokens = Number(args['gen-tokens']);
const modelPath = args.model ?? findModel();
if (!modelPath) {
  console.error('no model: pass --model PATH or set KWAAINET_MODEL');
  process.exit(1);
}

// The same text as `kwaainet bench`.
const TEXT =
  'The history of distributed computing begins with networks of machines that ' +
  'shared work over slow links. Volunteers donated spare cycles to science, and ' +
  'later, peer-to-peer systems spread files and computation across the world. ';

const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const fmt = (v, d = 1) => v.toFixed(d);

function wllamaDir() {
  const version = args['wllama-version'];
  const dir = join(process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet'), 'bench', `wllama-${version}`);
  const pkg = join(dir, 'node_modules', '@wllama', 'wllama');
  if (!existsSync(join(pkg, 'esm', 'index.js'))) {
    mkdirSync(dir, { recursive: true });
    console.log(`bench: installing @wllama/wllama@${version} into ${dir} (bench only)`);
    execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', dir, `@wllama/wllama@${version}`], { stdio: 'inherit' });
  }
  return pkg;
}

async function benchKwaaiNet(server) {
  const browser = await launch();
  try {
    await recordEvents(browser.context);
    const { page } = browser;
    // Load: navigation to ready. The first includes the download (loopback) into Cache
    // Storage; the others read the cache, verify SHA-256 and parse.
    const loads = [];
    for (let i = 0; i <= runs; i++) {
      const t0 = performance.now();
      if (i === 0) await openDemo(page, server.url);
      else {
        await page.reload();
        await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 60_000 });
      }
      loads.push((performance.now() - t0) / 1000);
    }
    const info = await page.evaluate(() => window.kwaainet.engineInfo());
    const samples = [];
    for (let i = 0; i <= runs; i++) { // the first run warms up
      const r = await within(120_000, page.evaluate(async ({ prompt, gen }) => {
        const res = await window.kwaainet.completions.create({ prompt, max_tokens: gen });
        return res.usage;
      }, { prompt: TEXT.repeat(repeat), gen: genTokens }), 'a bench run');
      if (i > 0) samples.push(r);
    }
    // The host's time to first token covers the prefill and the first decode step.
    const prefill = samples.map((u) => u.prompt_tokens / ((u.extra.time_to_first_token_ms - 1000 / u.extra.decode_tokens_per_s) / 1000));
    return {
      name: `KwaaiNet ${info.engineVersion} (${info.host} host, ${info.backend}${info.simd128 ? ', simd128' : ''}, 1 thread)`,
      coldLoad: loads[0],
      warmLoad: median(loads.slice(1)),
      prompt: samples[0].prompt_tokens,
      gen: median(samples.map((u) => u.completion_tokens)),
      prefill: median(prefill),
      decode: median(samples.map((u) => u.extra.decode_tokens_per_s)),
    };
  } finally {
    await browser.close();
  }
}

async function benchWllama(server) {
  const browser = await launch();
  try {
    const { page } = browser;
    await page.goto(new URL('bench.html', server.url).href);
    const r = await within(600_000, page.evaluate(async ({ text, genTokens, runs, modelUrl }) => {
      const { Wllama } = await import('/wllama/esm/index.js');
      const paths = { 'single-thread/wllama.wasm': '/wllama/esm/single-thread/wllama.wasm' };
      const loads = [];
      let w = null;
      for (let i = 0; i <= runs; i++) {
        if (w) await w.exit();
        w = new Wllama(paths, { suppressNativeLog: true });
        const t0 = performance.now();
        await w.loadModelFromUrl(modelUrl, { n_threads: 1, n_ctx: 2048, n_batch: 512, n_gpu_layers: 0 });
        loads.push((performance.now() - t0) / 1000);
      }
      const prompt = await w.tokenize(text, true);
      const samples = [];
      for (let i = 0; i <= runs; i++) {
        await w.kvClear();
        await w.samplingInit({ temp: 0 });
        let t = performance.now();
        await w.decode(prompt, {});
        const prefillS = (performance.now() - t) / 1000;
        t = performance.now();
        let n = 0;
        for (; n < genTokens; n++) {
          const { token } = await w.samplingSample();
          await w.samplingAccept([token]);
          await w.decode([token], {});
        }
        const decodeS = (performance.now() - t) / 1000;
        if (i > 0) samples.push({ prefill: prompt.length / prefillS, decode: n / decodeS });
      }
      return { loads, samples, threads: w.getNumThreads(), multi: w.isMultithread(), prompt: prompt.length };
    }, { text: TEXT.repeat(repeat), genTokens, runs, modelUrl: new URL('models/model.gguf', server.url).href }), 'wllama');
    return {
      name: `wllama ${args['wllama-version']} (${r.multi ? 'multi' : 'single'}-thread build, ${r.threads} thread)`,
      coldLoad: r.loads[0],
      warmLoad: median(r.loads.slice(1)),
      prompt: r.prompt,
      gen: genTokens,
      prefill: median(r.samples.map((s) => s.prefill)),
      decode: median(r.samples.map((s) => s.decode)),
    };
  } finally {
    await browser.close();
  }
}

const server = await startDemoServer({ port: 0, modelPath, ...(args.wllama && { wllamaDir: wllamaDir() }) });
try {
  const results = [await benchKwaaiNet(server)];
  if (args.wllama) results.push(await benchWllama(server));
  const chromium = execFileSync(process.env.CHROMIUM ?? '/usr/bin/chromium', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  console.log(`${chromium}, headless; model ${modelPath} (${fmt(server.model.size / 1e6)} MB); median of ${runs} runs`);
  console.log(`${genTokens} tokens generated after the prompt; load = navigation (KwaaiNet) or loadModelFromUrl (wllama) to model ready; cold: downloaded over loopback, warm: from the browser's cache`);
  for (const r of results) {
    console.log(`${r.name}`);
    console.log(`  load     cold ${fmt(r.coldLoad, 2)} s, warm ${fmt(r.warmLoad, 2)} s`);
    console.log(`  prefill  ${fmt(r.prefill)} tok/s (${r.prompt} tokens)`);
    console.log(`  decode   ${fmt(r.decode)} tok/s (${r.gen} tokens)`);
  }
} finally {
  await server.close();
}
