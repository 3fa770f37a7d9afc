/**
 * Initialising a WASM engine module (wasm-bindgen `--target web` glue) from a URL, and
 * probing WebGPU. Used by every host.
 */

import type { WasmEngineModule } from '../wasm-engine.js';

/** Where one engine module's .wasm is. */
export interface ModuleSource {
  wasmUrl: string;
  /** SRI (`sha384-...`) checked when fetching it. */
  wasmIntegrity?: string;
}

/** A module loader for LocalEngine: fetches the .wasm (with its SRI hash when given) and
 *  initialises `glue` with it, once (again after a failure). */
export function glueLoader(glue: WasmEngineModule, fetchFn: typeof fetch = globalThis.fetch.bind(globalThis)):
  (source: ModuleSource) => Promise<WasmEngineModule> {
  let ready: Promise<WasmEngineModule> | null = null;
  return (source) => {
    ready ??= (async () => {
      const init: RequestInit = { credentials: 'same-origin' };
      if (source.wasmIntegrity) init.integrity = source.wasmIntegrity;
      await glue.default({ module_or_path: fetchFn(source.wasmUrl, init) });
      return glue;
    })();
    ready.catch(() => {
      ready = null;
    });
    return ready;
  };
}

/** Where the multi-threaded CPU engine is, and how many threads to start. */
export interface ThreadedSource extends ModuleSource {
  /** Its ES-module glue: imported by URL, since its pool's workers import it again. */
  glueUrl: string;
  threads: number;
}

/** How long the pool's workers may take to start. */
const POOL_START_MS = 30_000;

/**
 * A loader for the multi-threaded CPU engine: imports its glue from `glueUrl`, initialises
 * it with the .wasm (SRI-checked when a hash is given) and starts its pool of web workers
 * over the module's shared memory (`initThreadPool`). Needs a cross-origin-isolated page
 * (shared memory) and a context that can start workers; once per context (a pool cannot be
 * started twice), again after a failure.
 */
export function threadedGlueLoader(
  importFn: (url: string) => Promise<unknown> = (url) => import(/* webpackIgnore: true */ /* @vite-ignore */ url),
  fetchFn: typeof fetch = globalThis.fetch.bind(globalThis),
): (source: ThreadedSource) => Promise<WasmEngineModule> {
  let ready: Promise<WasmEngineModule> | null = null;
  return (source) => {
    ready ??= (async () => {
      const glue = (await importFn(source.glueUrl)) as WasmEngineModule;
      if (typeof glue.initThreadPool !== 'function' || typeof glue.engineThreads !== 'function') {
        throw new Error(`${source.glueUrl} is not the multi-threaded engine (FEATURES=threads)`);
      }
      const init: RequestInit = { credentials: 'same-origin' };
      if (source.wasmIntegrity) init.integrity = source.wasmIntegrity;
      await glue.default({ module_or_path: fetchFn(source.wasmUrl, init) });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`its ${source.threads} workers did not start within ${POOL_START_MS / 1000} s`)), POOL_START_MS);
      });
      try {
        await Promise.race([glue.initThreadPool(source.threads), timeout]);
      } finally {
        clearTimeout(timer);
      }
      return glue;
    })();
    ready.catch(() => {
      ready = null;
    });
    return ready;
  };
}

/** A WebGPU adapter found by `probeWebGpuAdapter`. */
export interface GpuProbe {
  /** Vendor, architecture, device and description joined (may be empty). */
  adapter: string;
}

interface GpuAdapterLike {
  info?: { vendor?: unknown; architecture?: unknown; device?: unknown; description?: unknown };
}

interface GpuLike {
  requestAdapter(): Promise<GpuAdapterLike | null | undefined>;
}

function describe(adapter: GpuAdapterLike): string {
  const info = adapter.info;
  if (!info) return '';
  const parts = [info.vendor, info.architecture, info.device, info.description]
    .filter((p): p is string => typeof p === 'string' && p.trim() !== '')
    .map((p) => p.trim());
  return [...new Set(parts)].join(' ').slice(0, 256);
}

/** The WebGPU adapter here, or null when `navigator.gpu` gives none within `timeoutMs`. */
export async function probeWebGpuAdapter(timeoutMs = 3000): Promise<GpuProbe | null> {
  const gpu = (globalThis.navigator as { gpu?: GpuLike } | undefined)?.gpu;
  if (!gpu || typeof gpu.requestAdapter !== 'function') return null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), timeoutMs);
  });
  try {
    const found = gpu.requestAdapter().then(
      (a) => (a === null || a === undefined ? null : { adapter: describe(a) }),
      () => null,
    );
    return await Promise.race([found, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `navigator.gpu` yields an adapter here within `timeoutMs`. */
export async function probeWebGpu(timeoutMs = 3000): Promise<boolean> {
  return (await probeWebGpuAdapter(timeoutMs)) !== null;
}
