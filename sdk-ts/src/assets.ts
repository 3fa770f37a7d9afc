/**
 * The files the SDK loads next to itself (cdn/ builds them into one versioned folder; the
 * npm package carries the same files: packaged.ts), and their SRI hashes, which the CDN
 * build bakes into distributed-ai.js / kwaainet.mjs so that the integrity on the script tag
 * extends to the worker and the .wasm.
 */

import type { HostUrls } from './host.js';
import { packagedAssets, packagedWasmIntegrity } from './packaged.js';

export const ASSETS = {
  worker: 'kwaainet-worker.js',
  serviceWorker: 'kwaainet-sw.js',
  wasm: 'kwaainet_wasm_bg.wasm',
  glue: 'kwaainet_wasm.js',
  /** The WebGPU engine (dist/engine-webgpu/, renamed: both builds name their files alike). */
  webgpuWasm: 'kwaainet_wasm_webgpu_bg.wasm',
  webgpuGlue: 'kwaainet_wasm_webgpu.js',
  /** The multi-threaded CPU engine (dist/engine-mt/, renamed likewise; its worker helper,
   *  a wasm-bindgen snippet, is flattened next to it as kwaainet_wasm_mt_workers.js). */
  threadsWasm: 'kwaainet_wasm_mt_bg.wasm',
  threadsGlue: 'kwaainet_wasm_mt.js',
  /** The two CPU engines built with relaxed SIMD (dist/engine-relaxed/,
   *  dist/engine-mt-relaxed/): their glue is the plain builds' own (the CDN build checks),
   *  so only the .wasm files are shipped; a host loads them where relaxed SIMD validates. */
  relaxedWasm: 'kwaainet_wasm_relaxed_bg.wasm',
  threadsRelaxedWasm: 'kwaainet_wasm_mt_relaxed_bg.wasm',
  /** Serving a span (`serveSpan`): its module worker (ES module, self-contained) and the CPU
   *  engine built with the span server (dist/engine-serve/, renamed likewise). */
  spanWorker: 'kwaainet-span-worker.js',
  serveWasm: 'kwaainet_wasm_serve_bg.wasm',
  serveGlue: 'kwaainet_wasm_serve.js',
  /** The page-side P2P node (dist/p2p/, renamed likewise). */
  p2pWasm: 'kwaainet_p2p_bg.wasm',
  p2pGlue: 'kwaainet_p2p.js',
} as const;

export type AssetName = keyof typeof ASSETS;

// Replaced by the CDN build (esbuild `define`); absent in the plain npm build.
declare const __KWAAINET_ASSET_SRI__: Record<string, string> | undefined;

export function bakedIntegrity(): Record<string, string> {
  return typeof __KWAAINET_ASSET_SRI__ === 'undefined' ? {} : __KWAAINET_ASSET_SRI__;
}

/** Where the engine files are, relative to `baseUrl` (the folder holding distributed-ai.js). */
export function hostUrls(baseUrl: string, serviceWorkerUrl: string | null | undefined, integrity = bakedIntegrity()): HostUrls {
  // A CDN build bakes the hash of every engine file it ships (the worker's always): there,
  // a WebGPU engine without a hash is one the build does not have.
  return urlsOf((name) => new URL(ASSETS[name], baseUrl).href, serviceWorkerUrl, integrity, integrity[ASSETS.worker] !== undefined);
}

/**
 * The engine files next to the SDK's own module (packaged.ts): the npm package's copies, as
 * the app's bundler rewrote their URLs, or the CDN folder for kwaainet.mjs. Null where the
 * module has no URL (the script tag's IIFE, which passes `baseUrl`).
 */
export function packagedHostUrls(serviceWorkerUrl: string | null | undefined): HostUrls | null {
  const files = packagedAssets();
  if (!files) return null;
  const baked = bakedIntegrity();
  if (baked[ASSETS.worker] !== undefined) return urlsOf((name) => files[name], serviceWorkerUrl, baked, true);
  // The npm package: hashes of the .wasm files only. Bundlers copy binary assets as they
  // are, but may rewrite a .js one; and without a hash the same-origin worker starts from
  // its URL, so a site's `worker-src 'self'` CSP needs no `blob:`.
  const packed = packagedWasmIntegrity();
  return urlsOf((name) => files[name], serviceWorkerUrl, packed, packed[ASSETS.wasm] !== undefined);
}

function urlsOf(
  at: (name: AssetName) => string, serviceWorkerUrl: string | null | undefined, integrity: Readonly<Record<string, string>>,
  complete: boolean,
): HostUrls {
  const urls: HostUrls = {
    worker: at('worker'),
    serviceWorker: serviceWorkerUrl === undefined ? at('serviceWorker') : serviceWorkerUrl,
    wasm: at('wasm'),
    glue: at('glue'),
    webgpuWasm: complete && integrity[ASSETS.webgpuWasm] === undefined ? null : at('webgpuWasm'),
    webgpuGlue: at('webgpuGlue'),
    // Only where the build says it has one: the npm package does not ship it (an app's
    // bundler would rename the helper its glue imports), the CDN folder does.
    threadsGlue: integrity[ASSETS.threadsWasm] === undefined ? null : at('threadsGlue'),
    threadsWasm: integrity[ASSETS.threadsWasm] === undefined ? null : at('threadsWasm'),
    relaxedWasm: integrity[ASSETS.relaxedWasm] === undefined ? null : at('relaxedWasm'),
    threadsRelaxedWasm: integrity[ASSETS.threadsRelaxedWasm] === undefined ? null : at('threadsRelaxedWasm'),
    spanWorker: complete && integrity[ASSETS.serveWasm] === undefined ? null : at('spanWorker'),
    serveGlue: complete && integrity[ASSETS.serveWasm] === undefined ? null : at('serveGlue'),
    serveWasm: complete && integrity[ASSETS.serveWasm] === undefined ? null : at('serveWasm'),
  };
  const w = integrity[ASSETS.worker];
  if (w) urls.workerIntegrity = w;
  const m = integrity[ASSETS.wasm];
  if (m) urls.wasmIntegrity = m;
  const g = integrity[ASSETS.webgpuWasm];
  if (g) urls.webgpuWasmIntegrity = g;
  const t = integrity[ASSETS.threadsWasm];
  if (t) urls.threadsWasmIntegrity = t;
  const rx = integrity[ASSETS.relaxedWasm];
  if (rx) urls.relaxedWasmIntegrity = rx;
  const trx = integrity[ASSETS.threadsRelaxedWasm];
  if (trx) urls.threadsRelaxedWasmIntegrity = trx;
  const sw = integrity[ASSETS.spanWorker];
  if (sw) urls.spanWorkerIntegrity = sw;
  const sv = integrity[ASSETS.serveWasm];
  if (sv) urls.serveWasmIntegrity = sv;
  return urls;
}
