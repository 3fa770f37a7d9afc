/**
 * The files the SDK loads next to itself (cdn/ builds them into one versioned folder), and
 * their SRI hashes, which the CDN build bakes into distributed-ai.js / kwaainet.mjs so that
 * the integrity on the script tag extends to the worker and the .wasm.
 */

import type { HostUrls } from './host.js';

export const ASSETS = {
  worker: 'kwaainet-worker.js',
  serviceWorker: 'kwaainet-sw.js',
  wasm: 'kwaainet_wasm_bg.wasm',
  glue: 'kwaainet_wasm.js',
  /** The WebGPU engine (dist/engine-webgpu/, renamed: both builds name their files alike). */
  webgpuWasm: 'kwaainet_wasm_webgpu_bg.wasm',
  webgpuGlue: 'kwaainet_wasm_webgpu.js',
  /** The page-side P2P node (dist/p2p/, renamed likewise). */
  p2pWasm: 'kwaainet_p2p_bg.wasm',
  p2pGlue: 'kwaainet_p2p.js',
} as const;

// Replaced by the CDN build (esbuild `define`); absent in the plain npm build.
declare const __KWAAINET_ASSET_SRI__: Record<string, string> | undefined;

export function bakedIntegrity(): Record<string, string> {
  return typeof __KWAAINET_ASSET_SRI__ === 'undefined' ? {} : __KWAAINET_ASSET_SRI__;
}

/** Where the engine files are, relative to `baseUrl` (the folder holding distributed-ai.js). */
export function hostUrls(baseUrl: string, serviceWorkerUrl: string | null | undefined, integrity = bakedIntegrity()): HostUrls {
  const at = (name: string): string => new URL(name, baseUrl).href;
  // A CDN build bakes the hash of every engine file it ships (the worker's always): there,
  // a WebGPU engine without a hash is one the build does not have.
  const built = integrity[ASSETS.worker] !== undefined;
  const urls: HostUrls = {
    worker: at(ASSETS.worker),
    serviceWorker: serviceWorkerUrl === undefined ? at(ASSETS.serviceWorker) : serviceWorkerUrl,
    wasm: at(ASSETS.wasm),
    glue: at(ASSETS.glue),
    webgpuWasm: built && integrity[ASSETS.webgpuWasm] === undefined ? null : at(ASSETS.webgpuWasm),
    webgpuGlue: at(ASSETS.webgpuGlue),
  };
  const w = integrity[ASSETS.worker];
  if (w) urls.workerIntegrity = w;
  const m = integrity[ASSETS.wasm];
  if (m) urls.wasmIntegrity = m;
  const g = integrity[ASSETS.webgpuWasm];
  if (g) urls.webgpuWasmIntegrity = g;
  return urls;
}
