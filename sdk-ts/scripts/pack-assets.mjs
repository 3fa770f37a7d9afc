#!/usr/bin/env node
// `npm pack` / `npm publish` of @kwaainet/sdk (its `prepack`): puts the engine files into
// sdk-ts/dist/ next to the SDK's modules, under the CDN folder's names, where packaged.ts
// points at them with `new URL('./file', import.meta.url)` (what bundlers copy and rewrite):
//
//   kwaainet-worker.js, kwaainet-sw.js            the two engine hosts (classic scripts; the
//                                                 worker is the CDN's kwaainet-worker-st.js)
//   kwaainet_wasm.js, kwaainet_wasm_bg.wasm       the CPU engine (glue for the in-page host)
//   kwaainet_wasm_webgpu.js, …_webgpu_bg.wasm     the WebGPU engine
//   kwaainet_p2p.js, kwaainet_p2p_bg.wasm         the page-side P2P node
//   kwaainet-span-worker.js                       the serving worker (serveSpan; ES module)
//   kwaainet_wasm_serve.js, …_serve_bg.wasm       the engine with the span server
//
// (Not the multi-threaded engine: its glue imports its worker helper by name, which an
// app's bundler would rename; the CDN folder ships it.)
//
// and writes dist/packaged-integrity.js with the SRI hash of each .wasm. It takes them
// from the CDN build (dist/cdn/v<version>/, `node cdn/build.mjs`), which must hold all
// four modules: a package without its engines must not be published.
//
//   node sdk-ts/scripts/pack-assets.mjs [--cdn-dir DIR]
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const sdk = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(sdk, '..');
const { version } = JSON.parse(readFileSync(join(sdk, 'package.json'), 'utf8'));
const { values: args } = parseArgs({ options: { 'cdn-dir': { type: 'string' } } });
const cdn = args['cdn-dir'] ?? join(root, 'dist', 'cdn', `v${version}`);
const out = join(sdk, 'dist');

function fail(message) {
  console.error(`pack-assets: ${message}`);
  process.exit(1);
}

const SCRIPTS = [
  'kwaainet-worker.js', 'kwaainet-sw.js', 'kwaainet_wasm.js', 'kwaainet_wasm_webgpu.js', 'kwaainet_p2p.js',
  'kwaainet-span-worker.js', 'kwaainet_wasm_serve.js',
];
const WASM = ['kwaainet_wasm_bg.wasm', 'kwaainet_wasm_webgpu_bg.wasm', 'kwaainet_p2p_bg.wasm', 'kwaainet_wasm_serve_bg.wasm'];
const HOW = {
  engine: 'bash scripts/build-wasm.sh',
  webgpu: 'FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh',
  p2p: 'MODULE=p2p bash scripts/build-wasm.sh',
  serve: 'FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh',
};

if (!existsSync(join(out, 'index.js')) || !existsSync(join(out, 'packaged.js'))) {
  fail('sdk-ts/dist/ has no build: run `npm run build -w @kwaainet/sdk` first');
}
let manifest;
try {
  manifest = JSON.parse(readFileSync(join(cdn, 'sri-manifest.json'), 'utf8'));
} catch {
  fail(`no CDN build in ${cdn}: run \`node cdn/build.mjs\` first`);
}
if (manifest.version !== version) fail(`the CDN build is v${manifest.version}, the package v${version}`);
const missing = Object.keys(HOW).filter((k) => manifest[k] !== true);
if (missing.length > 0) {
  fail(`the CDN build lacks ${missing.join(', ')}: build ${missing.map((k) => `\`${HOW[k]}\``).join(', ')}, then \`node cdn/build.mjs\``);
}

const sri = (bytes) => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;
let total = 0;
const sizes = [];
// The package's dedicated-worker host is the CDN's single-threaded one (the package does
// not ship the multi-threaded engine; that script holds no dynamic import() a dev server
// would rewrite), under the name packaged.ts uses.
const FROM = { 'kwaainet-worker.js': 'kwaainet-worker-st.js' };
for (const name of SCRIPTS) {
  const src = join(cdn, FROM[name] ?? name);
  if (!existsSync(src)) fail(`${src} is missing`);
  // The CDN's source maps stay on the CDN: a bundler copies this file as it is, and a
  // comment naming a map it never copied only gives DevTools a 404.
  const text = readFileSync(src, 'utf8').replace(/\n\/\/# sourceMappingURL=[^\n]*\n?$/, '\n');
  writeFileSync(join(out, name), text);
  sizes.push([name, Buffer.byteLength(text)]);
}
const integrity = {};
for (const name of WASM) {
  const bytes = readFileSync(join(cdn, name));
  const expected = manifest.files[name]?.integrity;
  integrity[name] = sri(bytes);
  if (integrity[name] !== expected) fail(`${name} does not match the CDN manifest: rebuild with \`node cdn/build.mjs\``);
  writeFileSync(join(out, name), bytes);
  sizes.push([name, bytes.byteLength]);
}
// packaged-integrity.js as tsc wrote it holds `{}` (its .d.ts stays right: a string record).
const body = Object.entries(integrity).map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v)},`).join('\n');
writeFileSync(join(out, 'packaged-integrity.js'),
  `// Written by sdk-ts/scripts/pack-assets.mjs: the SRI hash of each .wasm this package ships.\nconst integrity = Object.freeze({\n${body}\n});\nexport default integrity;\n`);
rmSync(join(out, 'packaged-integrity.js.map'), { force: true });

for (const [name, size] of sizes) {
  total += size;
  console.log(`  ${name.padEnd(32)} ${(size / 1024).toFixed(1).padStart(9)} KiB`);
}
console.log(`pack-assets: ${sizes.length} engine files, ${(total / 1048576).toFixed(2)} MiB, into ${out}`);

