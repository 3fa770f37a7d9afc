#!/usr/bin/env node
// Builds the CDN bundle into dist/cdn/v<version>/ (version: sdk-ts/package.json):
//
//   distributed-ai.js      IIFE behind the one-line <script> tag (window.KwaaiNet, window.kwaainet)
//   kwaainet.mjs           the SDK's public API (sdk-ts/src/index.ts) as one ES module
//   kwaainet-worker.js     dedicated-worker engine host (classic script, engine glue inlined)
//   kwaainet-worker-st.js  the same without the multi-threaded engine: the npm package's copy
//   kwaainet-sw.js         service-worker engine host (classic script, both engines' glue inlined)
//   kwaainet_wasm.js       engine glue as an ES module (the in-page host imports it)   } from
//   kwaainet_wasm_bg.wasm  the CPU engine                                               } dist/engine/
//   kwaainet_wasm_webgpu.js       the WebGPU engine's glue (ES module)   } from dist/engine-webgpu/
//   kwaainet_wasm_webgpu_bg.wasm  the WebGPU engine                      } (renamed), when built
//   kwaainet_p2p.js        the page-side P2P node's glue (ES module)   } from dist/p2p/
//   kwaainet_p2p_bg.wasm   the page-side P2P node                      } (renamed), when built
//   kwaainet-span-worker.js      the serving worker (serveSpan; an ES module)
//   kwaainet_wasm_serve.js       the engine with the span server (glue)   } from dist/engine-serve/
//   kwaainet_wasm_serve_bg.wasm  the engine with the span server          } (renamed), when built
//   kwaainet_wasm_mt.js          the multi-threaded CPU engine's glue   } from dist/engine-mt/
//   kwaainet_wasm_mt_bg.wasm     the multi-threaded CPU engine          } (renamed), when built;
//   kwaainet_wasm_mt_workers.js  its pool's worker helper (a wasm-bindgen snippet, moved
//                                out of snippets/ so the folder stays flat; the glue's
//                                import of it is rewritten to match)
//   kwaainet_wasm_relaxed_bg.wasm     the CPU engines built with relaxed SIMD (from
//   kwaainet_wasm_mt_relaxed_bg.wasm  dist/engine-relaxed/, dist/engine-mt-relaxed/, when
//                                     built): the plain builds' glue loads them, so their
//                                     own glue must be byte-identical to it (checked here)
//   sri-manifest.json      sha384 SRI hash and size of every file above
//
// The SRI hashes of the worker and the .wasm files are baked into distributed-ai.js and
// kwaainet.mjs, so the `integrity` on the script tag covers what they load in turn.
//
//   node cdn/build.mjs [--out DIR] [--engine-dir DIR] [--webgpu-dir DIR] [--p2p-dir DIR] [--threads-dir DIR]
//                      [--serve-dir DIR] [--relaxed-dir DIR] [--threads-relaxed-dir DIR] [--check-deterministic]
//
// --check-deterministic builds twice into temporary folders and fails unless every byte
// matches. Without dist/engine/ the hosts are built against a stub that reports the
// engine missing, and the .wasm + glue are left out (with a note). Without
// dist/engine-webgpu/ the bundle is CPU-only (with a note): the service worker has no
// WebGPU engine and the SDK does not ask for one.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const version = JSON.parse(readFileSync(join(root, 'sdk-ts', 'package.json'), 'utf8')).version;

const { values: args } = parseArgs({
  options: {
    out: { type: 'string' },
    'engine-dir': { type: 'string' },
    'webgpu-dir': { type: 'string' },
    'p2p-dir': { type: 'string' },
    'threads-dir': { type: 'string' },
    'serve-dir': { type: 'string' },
    'relaxed-dir': { type: 'string' },
    'threads-relaxed-dir': { type: 'string' },
    'check-deterministic': { type: 'boolean', default: false },
  },
});
const outDir = args.out ?? join(root, 'dist', 'cdn', `v${version}`);
const engineDir = args['engine-dir'] ?? join(root, 'dist', 'engine');
const webgpuDir = args['webgpu-dir'] ?? join(root, 'dist', 'engine-webgpu');
const p2pDir = args['p2p-dir'] ?? join(root, 'dist', 'p2p');
const threadsDir = args['threads-dir'] ?? join(root, 'dist', 'engine-mt');
const serveDir = args['serve-dir'] ?? join(root, 'dist', 'engine-serve');
const relaxedDir = args['relaxed-dir'] ?? join(root, 'dist', 'engine-relaxed');
const threadsRelaxedDir = args['threads-relaxed-dir'] ?? join(root, 'dist', 'engine-mt-relaxed');
const GLUE = 'kwaainet_wasm.js';
const WASM = 'kwaainet_wasm_bg.wasm';
// Both wasm-bindgen builds name their files alike: the WebGPU ones are renamed here
// (sdk-ts/src/assets.ts has the same names).
const WEBGPU_GLUE = 'kwaainet_wasm_webgpu.js';
const WEBGPU_WASM = 'kwaainet_wasm_webgpu_bg.wasm';
const P2P_GLUE = 'kwaainet_p2p.js';
const P2P_WASM = 'kwaainet_p2p_bg.wasm';
const WORKER_ST = 'kwaainet-worker-st.js';
const MT_GLUE = 'kwaainet_wasm_mt.js';
const MT_WASM = 'kwaainet_wasm_mt_bg.wasm';
const MT_WORKERS = 'kwaainet_wasm_mt_workers.js';
const SERVE_GLUE = 'kwaainet_wasm_serve.js';
const SERVE_WASM = 'kwaainet_wasm_serve_bg.wasm';
const SPAN_WORKER = 'kwaainet-span-worker.js';
const RELAXED_WASM = 'kwaainet_wasm_relaxed_bg.wasm';
const MT_RELAXED_WASM = 'kwaainet_wasm_mt_relaxed_bg.wasm';

/**
 * Whether the relaxed-SIMD build in `from` can ship: built, and its glue byte for byte the
 * plain build's in `plainDir` (which loads its .wasm). A relaxed build without its plain
 * counterpart is left out.
 */
function relaxedBuild(from, plainDir) {
  if (!built(from) || !built(plainDir)) return false;
  if (!readFileSync(join(from, GLUE)).equals(readFileSync(join(plainDir, GLUE)))) {
    throw new Error(`cdn: ${join(from, GLUE)} differs from ${join(plainDir, GLUE)}: rebuild both from one checkout`);
  }
  return true;
}

/**
 * The multi-threaded engine's files, or null when it was not built: its glue with the
 * import of wasm-bindgen-rayon's worker helper (under snippets/<crate-hash>/) pointed at the
 * helper's flat name, and the helper itself. The helper starts each pool worker from its
 * own URL and the glue's, so both only have to sit side by side.
 */
function threadedEngine() {
  if (!built(threadsDir)) return null;
  const glue = readFileSync(join(threadsDir, GLUE), 'utf8');
  const imports = [...glue.matchAll(/from '(\.\/snippets\/wasm-bindgen-rayon-[0-9a-f]+\/src\/workerHelpers\.no-bundler\.js)'/g)];
  if (imports.length !== 1) throw new Error(`cdn: ${join(threadsDir, GLUE)}: expected one import of wasm-bindgen-rayon's worker helper, found ${imports.length}`);
  const helper = readFileSync(join(threadsDir, imports[0][1]));
  return { glue: glue.replace(imports[0][1], `./${MT_WORKERS}`), helper };
}

export const sri = (bytes) => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;

const common = {
  bundle: true,
  minify: true,
  sourcemap: 'linked',
  sourcesContent: true,
  legalComments: 'none',
  charset: 'utf8',
  target: ['es2022', 'chrome113', 'firefox115', 'safari16.4'],
  platform: 'browser',
  absWorkingDir: root,
  logLevel: 'warning',
  // The IIFE builds have no import.meta; the code falls back to explicit URLs.
  logOverride: { 'empty-import-meta': 'silent' },
};

// Every build is laid out as if written to dist/cdn/v<version>/, then copied to its real
// folder: source-map paths (relative to the output) never depend on --out.
const virtualDir = join(root, 'dist', 'cdn', `v${version}`);

async function emit(options, dir, name) {
  const result = await build({ ...common, ...options, outfile: join(virtualDir, name), write: false });
  for (const file of result.outputFiles) {
    writeFileSync(join(dir, relative(virtualDir, file.path)), file.contents);
  }
}

/** Whether `from` holds a wasm-bindgen build (its glue and .wasm). */
const built = (from) => existsSync(join(from, GLUE)) && existsSync(join(from, WASM));

/** Copies the build in `from` into `dir` under the bundle's names for it. */
function copyModule(from, dir, glueName, wasmName) {
  copyFileSync(join(from, WASM), join(dir, wasmName));
  copyFileSync(join(from, GLUE), join(dir, glueName));
}

async function buildInto(dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const haveEngine = built(engineDir);
  const glue = haveEngine ? join(engineDir, GLUE) : join(root, 'service-worker', 'src', 'engine-missing.ts');
  const haveWebgpu = built(webgpuDir);
  // `kwaainet-webgpu-glue` (service-worker/src/glue.d.ts): the WebGPU glue's namespace, or null.
  const webgpuModule = haveWebgpu
    ? `import * as glue from ${JSON.stringify(join(webgpuDir, GLUE))};\nexport const webgpuGlue = glue;\n`
    : 'export const webgpuGlue = null;\n';
  const gluePlugin = {
    name: 'kwaainet-wasm-glue',
    setup(b) {
      b.onResolve({ filter: /^kwaainet-wasm-glue$/ }, () => ({ path: glue }));
      b.onResolve({ filter: /^kwaainet-webgpu-glue$/ }, () => ({ path: 'kwaainet-webgpu-glue', namespace: 'kwaainet' }));
      b.onLoad({ filter: /.*/, namespace: 'kwaainet' }, () => ({ contents: webgpuModule, loader: 'js', resolveDir: root }));
    },
  };
  if (haveEngine) copyModule(engineDir, dir, GLUE, WASM);
  if (haveWebgpu) copyModule(webgpuDir, dir, WEBGPU_GLUE, WEBGPU_WASM);
  const haveP2p = built(p2pDir);
  if (haveP2p) copyModule(p2pDir, dir, P2P_GLUE, P2P_WASM);
  const haveServe = built(serveDir);
  if (haveServe) copyModule(serveDir, dir, SERVE_GLUE, SERVE_WASM);
  const mt = threadedEngine();
  const haveThreads = mt !== null;
  if (mt) {
    copyFileSync(join(threadsDir, WASM), join(dir, MT_WASM));
    writeFileSync(join(dir, MT_GLUE), mt.glue);
    writeFileSync(join(dir, MT_WORKERS), mt.helper);
  }
  const haveRelaxed = haveEngine && relaxedBuild(relaxedDir, engineDir);
  if (haveRelaxed) copyFileSync(join(relaxedDir, WASM), join(dir, RELAXED_WASM));
  const haveThreadsRelaxed = haveThreads && relaxedBuild(threadsRelaxedDir, threadsDir);
  if (haveThreadsRelaxed) copyFileSync(join(threadsRelaxedDir, WASM), join(dir, MT_RELAXED_WASM));

  // 1. The hosts.
  for (const [entry, out] of [['worker.ts', 'kwaainet-worker.js'], ['sw.ts', 'kwaainet-sw.js']]) {
    await emit({ entryPoints: [join(root, 'service-worker', 'src', entry)], format: 'iife', plugins: [gluePlugin] }, dir, out);
  }
  // The npm package's dedicated-worker host: without the multi-threaded engine (the package
  // does not ship it), so with no dynamic import() at all, which Vite's dev server would
  // rewrite into a static import a classic worker cannot run.
  await emit({ entryPoints: [join(root, 'service-worker', 'src', 'worker-st.ts')], format: 'iife', plugins: [gluePlugin] }, dir, WORKER_ST);
  if (/\bimport\s*\(/.test(readFileSync(join(dir, WORKER_ST), 'utf8'))) {
    throw new Error(`cdn: ${WORKER_ST} still holds a dynamic import()`);
  }

  // The serving worker: an ES module (it imports the serve engine's glue by URL).
  if (haveServe) {
    await emit({ entryPoints: [join(root, 'sdk-ts', 'src', 'host', 'span-worker.ts')], format: 'esm' }, dir, SPAN_WORKER);
  }

  // 2. The SDK, with the hosts' hashes baked in.
  const baked = { 'kwaainet-worker.js': sri(readFileSync(join(dir, 'kwaainet-worker.js'))) };
  if (haveServe) {
    baked[SPAN_WORKER] = sri(readFileSync(join(dir, SPAN_WORKER)));
    baked[SERVE_WASM] = sri(readFileSync(join(dir, SERVE_WASM)));
  }
  if (haveEngine) baked[WASM] = sri(readFileSync(join(dir, WASM)));
  if (haveWebgpu) baked[WEBGPU_WASM] = sri(readFileSync(join(dir, WEBGPU_WASM)));
  if (haveP2p) baked[P2P_WASM] = sri(readFileSync(join(dir, P2P_WASM)));
  if (haveThreads) baked[MT_WASM] = sri(readFileSync(join(dir, MT_WASM)));
  if (haveRelaxed) baked[RELAXED_WASM] = sri(readFileSync(join(dir, RELAXED_WASM)));
  if (haveThreadsRelaxed) baked[MT_RELAXED_WASM] = sri(readFileSync(join(dir, MT_RELAXED_WASM)));
  const define = { __KWAAINET_ASSET_SRI__: JSON.stringify(baked) };
  await emit({ entryPoints: [join(root, 'sdk-ts', 'src', 'entries', 'distributed-ai.ts')], format: 'iife', define }, dir, 'distributed-ai.js');
  await emit({ entryPoints: [join(root, 'sdk-ts', 'src', 'index.ts')], format: 'esm', define }, dir, 'kwaainet.mjs');

  // 3. The manifest: every file, sorted, so rebuilds compare byte for byte.
  const files = {};
  for (const name of readdirSync(dir).sort()) {
    const bytes = readFileSync(join(dir, name));
    files[name] = { integrity: sri(bytes), size: bytes.byteLength };
  }
  const manifest = {
    name: '@kwaainet/sdk', version, path: `v${version}/`, engine: haveEngine, webgpu: haveWebgpu, p2p: haveP2p, threads: haveThreads,
    serve: haveServe, relaxedSimd: haveRelaxed, threadsRelaxedSimd: haveThreadsRelaxed, files,
  };
  writeFileSync(join(dir, 'sri-manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  return { haveEngine, haveWebgpu, haveP2p, haveThreads, haveServe, haveRelaxed, haveThreadsRelaxed, files };
}

function sameTree(a, b) {
  const names = readdirSync(a).sort();
  const other = readdirSync(b).sort();
  if (names.join('\n') !== other.join('\n')) return `file lists differ: ${names} vs ${other}`;
  for (const name of names) {
    if (!readFileSync(join(a, name)).equals(readFileSync(join(b, name)))) return `${name} differs between two builds`;
  }
  return null;
}

if (args['check-deterministic']) {
  const tmp = mkdtempSync(join(tmpdir(), 'kwaainet-cdn-'));
  try {
    // Different folders on purpose: nothing may depend on where the build runs.
    await buildInto(join(tmp, 'a', `v${version}`));
    await buildInto(join(tmp, 'b', 'x', `v${version}`));
    const diff = sameTree(join(tmp, 'a', `v${version}`), join(tmp, 'b', 'x', `v${version}`));
    if (diff) {
      console.error(`cdn: the build is not deterministic: ${diff}`);
      process.exit(1);
    }
    console.log('cdn: two builds are byte-identical');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

const { haveEngine, haveWebgpu, haveP2p, haveThreads, haveServe, haveRelaxed, haveThreadsRelaxed, files } = await buildInto(outDir);
const shown = relative(root, outDir) || '.';
for (const [name, f] of Object.entries(files)) console.log(`cdn: ${shown}/${name}  ${f.size} B  ${f.integrity}`);
if (!haveEngine) {
  console.log(`cdn: note: no engine in ${relative(root, engineDir) || engineDir}/ (${GLUE} + ${WASM}); the hosts report it missing until it is built`);
}
if (!haveP2p) {
  console.log(`cdn: note: no P2P module in ${relative(root, p2pDir) || p2pDir}/ (MODULE=p2p bash scripts/build-wasm.sh): pages cannot join the network`);
}
if (!haveServe) {
  console.log(`cdn: note: no span-server engine in ${relative(root, serveDir) || serveDir}/ (FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh): pages cannot serve spans with this bundle's defaults`);
}
if (!haveThreads) {
  console.log(`cdn: note: no multi-threaded engine in ${relative(root, threadsDir) || threadsDir}/ (FEATURES=threads OUT=dist/engine-mt bash scripts/build-wasm.sh): the CPU engine runs on one thread`);
}
if (haveEngine && !haveRelaxed) {
  console.log(`cdn: note: no relaxed-SIMD engine in ${relative(root, relaxedDir) || relaxedDir}/ (RELAXED=1 OUT=dist/engine-relaxed bash scripts/build-wasm.sh): the CPU engine runs its simd128 kernels everywhere`);
}
if (haveThreads && !haveThreadsRelaxed) {
  console.log(`cdn: note: no relaxed-SIMD multi-threaded engine in ${relative(root, threadsRelaxedDir) || threadsRelaxedDir}/ (RELAXED=1 FEATURES=threads OUT=dist/engine-mt-relaxed bash scripts/build-wasm.sh)`);
}
if (!haveWebgpu) {
  console.log(`cdn: note: no WebGPU engine in ${relative(root, webgpuDir) || webgpuDir}/ (FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh): this bundle is CPU-only`);
}
