// The demo's static server as a library: `serve.mjs` runs it from the command line, the
// browser tests and the bench start it in-process on an ephemeral port and read what it
// served (requests for the model, Range headers, bytes sent).
//
// It listens on 127.0.0.1 only and serves
//   /                    demo-site/index.html with the script tag filled in by the rules the
//                        node uses (template.mjs): CDN path, SRI
//                        hash from the manifest, model URL and SHA-256; `?host=worker` etc.
//                        adds data-host, `?engine=cpu` etc. data-engine, `?threads=2` data-threads,
//                        `?load=lazy` adds data-load-model="lazy", `?isolated=0` leaves COOP/COEP off,
//                        `?max=storage:50` sets data-max-resources, `?cdn=cross-origin`
//                        loads the bundle from http://localhost:<port>/ instead)
//   /bench.html          the browser bench page (demo-site/bench.html)
//   /privacy.html        the privacy page (demo-site/privacy.html; it needs a node's API)
//   /favicon.ico         favicon.svg
//   /cdn/v<version>/...  dist/cdn/v<version>/ (CORS-enabled, as a CDN would be)
//   /models/model.gguf   the model, with Range support (206 / 416) and an ETag
//   /wllama/...          a wllama package folder, when `wllamaDir` is given (bench only)
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { homedir } from 'node:os';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fillTemplate } from './template.mjs';

/** Modules of this folder the page imports (every other `.mjs` is server or test code). */
export const PAGE_MODULES = Object.freeze(['/coverage.mjs', '/rights-ui.mjs', '/privacy.mjs', '/impact.mjs', '/pwa.mjs']);

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
export const version = JSON.parse(readFileSync(join(root, 'sdk-ts', 'package.json'), 'utf8')).version;
export const cdnDir = join(root, 'dist', 'cdn', `v${version}`);

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
  '.png': 'image/png',
  '.webmanifest': 'application/manifest+json',
};

// Only these values reach the page's data-host attribute (the SDK validates it again).
const HOSTS = new Set(['auto', 'service-worker', 'worker', 'in-page']);
const ENGINES = new Set(['auto', 'webgpu', 'cpu']);

/** $KWAAINET_MODEL, else the CLI's cache ($KWAAINET_CACHE or ~/.cache/kwaainet). */
export function findModel() {
  if (process.env.KWAAINET_MODEL) return process.env.KWAAINET_MODEL;
  const cache = process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet');
  const path = join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  return existsSync(path) ? path : null;
}

export async function sha256File(path) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash.digest('hex');
}

/** The SRI hash of distributed-ai.js, from the CDN build's manifest. */
export function manifestIntegrity() {
  try {
    const m = JSON.parse(readFileSync(join(cdnDir, 'sri-manifest.json'), 'utf8'));
    return m.files['distributed-ai.js']?.integrity ?? '';
  } catch {
    return '';
  }
}

// `extra` is built in page() from fixed strings only; every other value is escaped.
const RAW = new Set(['extra']);

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

function notFound(res) {
  res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
}

const CORS = { 'access-control-allow-origin': '*', 'cross-origin-resource-policy': 'cross-origin', 'timing-allow-origin': '*' };

/**
 * Starts the server. Options:
 *   port          default 8080; 0 picks a free one
 *   modelPath     default findModel(); null serves no model
 *   integrity     override of the script tag's integrity (tests prove a wrong one is refused)
 *   cutModelOnce  { afterBytes }: the first model response is cut after that many body
 *                 bytes (the socket is destroyed), once: a connection lost mid-download
 *   crossOriginIsolated  send COOP `same-origin` / COEP `require-corp` (default true, as
 *                 the node does: the multi-threaded CPU engine and wllama's threads need
 *                 shared memory); `?isolated=0` on a page leaves them off that document
 *   wllamaDir     folder served at /wllama/ (bench only)
 *   appDir        a built app (sdk-ts/test/package/): its files at every path but the
 *                 model's (index.html for /), instead of the demo's
 * Returns { url, port, model, stats, close() }; `stats.model` lists every model response as
 * { range, status, bytes } (bytes: body bytes written to the connection).
 */
export async function startDemoServer(options = {}) {
  const modelPath = options.modelPath === undefined ? findModel() : options.modelPath;
  const model = modelPath && existsSync(modelPath)
    ? { path: modelPath, size: statSync(modelPath).size, sha256: await sha256File(modelPath) }
    : null;
  const stats = { model: [], requests: [] };
  let cut = options.cutModelOnce ?? null;
  const isolation = options.crossOriginIsolated ?? true
    ? { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' }
    : {};

  function page(file, query, port) {
    const host = query.get('host');
    const extra = [];
    if (host !== null && HOSTS.has(host)) extra.push(`data-host="${host}"`);
    const engine = query.get('engine');
    if (engine !== null && ENGINES.has(engine)) extra.push(`data-engine="${engine}"`);
    const threads = query.get('threads');
    if (threads !== null && /^[1-9]\d?$/.test(threads)) extra.push(`data-threads="${threads}"`);
    if (query.get('load') === 'lazy') extra.push('data-load-model="lazy"');
    const max = query.get('max');
    const values = {
      // ?cdn=cross-origin: the bundle from another origin (localhost vs 127.0.0.1, both
      // this server), as from a real CDN: CORS, a blob worker, no service worker.
      cdn: query.get('cdn') === 'cross-origin' ? `http://localhost:${port}/cdn/v${version}/` : `/cdn/v${version}/`,
      // Else the page's own default.
      maxResources: max !== null && /^[a-z]+:\d+(,[a-z]+:\d+)*$/.test(max) ? max : undefined,
      sri: options.integrity ?? manifestIntegrity(),
      modelUrl: model ? '/models/model.gguf' : '',
      modelSha256: model?.sha256 ?? '',
      extra: extra.length > 0 ? extra.join(' ') : undefined,
    };
    return fillTemplate(readFileSync(join(here, file), 'utf8'), values, { raw: RAW });
  }

  function sendFile(req, res, path, headers = {}, record = null) {
    let st;
    try {
      st = statSync(path);
    } catch {
      return notFound(res);
    }
    if (!st.isFile()) return notFound(res);
    const type = MIME[extname(path)] ?? 'application/octet-stream';
    const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    const base = { 'content-type': type, 'accept-ranges': 'bytes', etag, 'cache-control': 'no-cache', ...isolation, ...headers };
    const range = req.headers.range;
    const ifRange = req.headers['if-range'];
    const m = range && (!ifRange || ifRange === etag) ? /^bytes=(\d*)-(\d*)$/.exec(range) : null;
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    if (m && (m[1] !== '' || m[2] !== '')) {
      start = m[1] === '' ? st.size - Number(m[2]) : Number(m[1]);
      end = m[1] === '' || m[2] === '' ? st.size - 1 : Math.min(Number(m[2]), st.size - 1);
      start = Math.max(0, start);
      if (start >= st.size || start > end) {
        if (record) record.status = 416;
        res.writeHead(416, { ...base, 'content-range': `bytes */${st.size}` }).end();
        return;
      }
      status = 206;
      base['content-range'] = `bytes ${start}-${end}/${st.size}`;
    }
    if (record) record.status = status;
    res.writeHead(status, { ...base, 'content-length': end - start + 1 });
    if (req.method === 'HEAD') return res.end();
    // A connection lost mid-file, once: the headers promised more than the body delivers.
    let limit = end;
    let cutHere = false;
    if (record && cut) {
      limit = Math.min(end, start + cut.afterBytes - 1);
      cutHere = true;
      cut = null;
    }
    const stream = createReadStream(path, { start, end: limit });
    if (record) stream.on('data', (chunk) => (record.bytes += chunk.length));
    if (cutHere) {
      // end(), not destroy(): what was written still reaches the browser, then the
      // connection closes short of the Content-Length it announced.
      stream.on('end', () => res.socket?.end());
      stream.pipe(res, { end: false });
    } else {
      stream.pipe(res);
    }
  }

  const server = createServer((req, res) => {
    const { pathname, searchParams } = new URL(req.url ?? '/', 'http://localhost');
    stats.requests.push(pathname);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (options.appDir && pathname !== '/models/model.gguf') {
      const path = inside(options.appDir, pathname === '/' ? 'index.html' : pathname.slice(1));
      return path ? sendFile(req, res, path) : notFound(res);
    }
    const pages = { '/': 'index.html', '/index.html': 'index.html', '/bench.html': 'bench.html', '/privacy.html': 'privacy.html' };
    if (Object.hasOwn(pages, pathname)) {
      let body;
      try {
        body = page(pages[pathname], searchParams, server.address().port);
      } catch (err) {
        // As the node answers: a page it cannot fill completely is an error, never sent.
        console.error(`demo page: ${err.message}`);
        res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8' }).end(`demo page: ${err.message}\n`);
        return;
      }
      const isolated = searchParams.get('isolated') === '0' ? {} : isolation;
      res.writeHead(200, { 'content-type': MIME['.html'], 'cache-control': 'no-cache', 'content-length': Buffer.byteLength(body), ...isolated });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (pathname === '/models/model.gguf') {
      if (!model) return notFound(res);
      const record = { range: req.headers.range ?? null, status: 0, bytes: 0 };
      stats.model.push(record);
      return sendFile(req, res, model.path, CORS, record);
    }
    if (pathname.startsWith('/cdn/')) {
      const path = inside(join(root, 'dist', 'cdn'), pathname.slice('/cdn/'.length));
      return path ? sendFile(req, res, path, CORS) : notFound(res);
    }
    if (options.wllamaDir && pathname.startsWith('/wllama/')) {
      const path = inside(options.wllamaDir, pathname.slice('/wllama/'.length));
      return path ? sendFile(req, res, path, CORS) : notFound(res);
    }
    // Browsers ask for /favicon.ico where a page names no icon.
    const path = inside(here, pathname === '/favicon.ico' ? 'favicon.svg' : pathname.slice(1));
    // Not the server, the tests or the bench themselves (the page's own modules are served:
    // the node's list is the same, engine/p2p/src/http.rs PAGE_MODULES).
    const pageModule = PAGE_MODULES.includes(pathname);
    if (!path || (path.endsWith('.mjs') && !pageModule) || path.startsWith(join(here, 'tests') + sep)) return notFound(res);
    return sendFile(req, res, path);
  });
  // Tests close the server while the browser may still hold keep-alive connections.
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 8080, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    model,
    stats,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
