#!/usr/bin/env node
// A small static server for the demo, until the native `kwaainet` node serves it:
//
//   node cdn/build.mjs && node demo-site/serve.mjs [--port 8080]
//
// Listens on 127.0.0.1 only and serves
//   /                    demo-site/ (index.html with the script tag filled in: CDN path,
//                        SRI hash from the manifest, model URL and SHA-256)
//   /cdn/v<version>/...  dist/cdn/v<version>/ (CORS-enabled, as a CDN would be)
//   /models/model.gguf   the model, with Range support (206 / 416) and an ETag
// The model is $KWAAINET_MODEL, else the CLI's cache
// ($KWAAINET_CACHE or ~/.cache/kwaainet)/models/SmolLM2-135M-Instruct.Q4_1.gguf.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { homedir } from 'node:os';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const version = JSON.parse(readFileSync(join(root, 'sdk-ts', 'package.json'), 'utf8')).version;
const cdnDir = join(root, 'dist', 'cdn', `v${version}`);
const { values: args } = parseArgs({ options: { port: { type: 'string', default: process.env.PORT ?? '8080' } } });

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.wasm': 'application/wasm',
  '.gguf': 'application/octet-stream',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

function findModel() {
  if (process.env.KWAAINET_MODEL) return process.env.KWAAINET_MODEL;
  const cache = process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet');
  const path = join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  return existsSync(path) ? path : null;
}

async function sha256File(path) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash.digest('hex');
}

const modelPath = findModel();
const model = modelPath && existsSync(modelPath)
  ? { path: modelPath, size: statSync(modelPath).size, mtime: statSync(modelPath).mtimeMs, sha256: await sha256File(modelPath) }
  : null;

function manifestIntegrity() {
  try {
    const m = JSON.parse(readFileSync(join(cdnDir, 'sri-manifest.json'), 'utf8'));
    return m.files['distributed-ai.js']?.integrity ?? '';
  } catch {
    return '';
  }
}

function page() {
  const values = {
    cdn: `/cdn/v${version}/`,
    sri: manifestIntegrity(),
    modelUrl: model ? '/models/model.gguf' : '',
    modelSha256: model?.sha256 ?? '',
  };
  return readFileSync(join(here, 'index.html'), 'utf8').replace(/\{\{(\w+)\}\}/g, (_, k) => values[k] ?? '');
}

/** A path inside `dir`, or null for anything that tries to leave it. */
function inside(dir, urlPath) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  const path = normalize(join(dir, decoded));
  return path === dir || path.startsWith(dir + sep) ? path : null;
}

function sendFile(req, res, path, headers = {}) {
  let st;
  try {
    st = statSync(path);
  } catch {
    return notFound(res);
  }
  if (!st.isFile()) return notFound(res);
  const type = MIME[extname(path)] ?? 'application/octet-stream';
  const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  const base = { 'content-type': type, 'accept-ranges': 'bytes', etag, 'cache-control': 'no-cache', ...headers };
  const range = req.headers.range;
  const ifRange = req.headers['if-range'];
  const m = range && (!ifRange || ifRange === etag) ? /^bytes=(\d*)-(\d*)$/.exec(range) : null;
  if (m && (m[1] !== '' || m[2] !== '')) {
    let start = m[1] === '' ? st.size - Number(m[2]) : Number(m[1]);
    let end = m[1] === '' || m[2] === '' ? st.size - 1 : Math.min(Number(m[2]), st.size - 1);
    start = Math.max(0, start);
    if (start >= st.size || start > end) {
      res.writeHead(416, { ...base, 'content-range': `bytes */${st.size}` }).end();
      return;
    }
    res.writeHead(206, { ...base, 'content-range': `bytes ${start}-${end}/${st.size}`, 'content-length': end - start + 1 });
    if (req.method === 'HEAD') return res.end();
    createReadStream(path, { start, end }).pipe(res);
    return;
  }
  res.writeHead(200, { ...base, 'content-length': st.size });
  if (req.method === 'HEAD') return res.end();
  createReadStream(path).pipe(res);
}

function notFound(res) {
  res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
}

const CORS = { 'access-control-allow-origin': '*', 'cross-origin-resource-policy': 'cross-origin', 'timing-allow-origin': '*' };

const server = createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  const { pathname } = new URL(req.url ?? '/', 'http://localhost');
  if (pathname === '/' || pathname === '/index.html') {
    const body = page();
    res.writeHead(200, { 'content-type': MIME['.html'], 'cache-control': 'no-cache', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
    return;
  }
  if (pathname === '/models/model.gguf') {
    if (!model) return notFound(res);
    return sendFile(req, res, model.path, CORS);
  }
  if (pathname.startsWith('/cdn/')) {
    const path = inside(join(root, 'dist', 'cdn'), pathname.slice('/cdn/'.length));
    return path ? sendFile(req, res, path, CORS) : notFound(res);
  }
  const path = inside(here, pathname.slice(1));
  if (!path || path.endsWith('.mjs')) return notFound(res); // not the server itself
  return sendFile(req, res, path);
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`demo: http://127.0.0.1:${port}/`);
  console.log(`demo: cdn ${existsSync(cdnDir) ? cdnDir : `${cdnDir} is missing — run: node cdn/build.mjs`}`);
  console.log(model ? `demo: model ${model.path} (${(model.size / 1048576).toFixed(1)} MiB)` :
    'demo: no model (set KWAAINET_MODEL, or run `npm start` once to fetch the default)');
});
