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
