/**
 * Initialising the WASM engine module (wasm-bindgen `--target web` glue) from a URL, and
 * probing WebGPU. Used by every host.
 */

import type { EngineSpec } from '../protocol.js';
import type { WasmEngineModule } from '../wasm-engine.js';

/** A `loadModule` for LocalEngine: fetches the .wasm (with its SRI hash when given) and
 *  initialises `glue` with it, once. */
export function glueLoader(glue: WasmEngineModule, fetchFn: typeof fetch = globalThis.fetch.bind(globalThis)):
  (engine: EngineSpec) => Promise<WasmEngineModule> {
  let ready: Promise<WasmEngineModule> | null = null;
  return (engine) => {
    ready ??= (async () => {
      const init: RequestInit = { credentials: 'same-origin' };
      if (engine.wasmIntegrity) init.integrity = engine.wasmIntegrity;
      await glue.default({ module_or_path: fetchFn(engine.wasmUrl, init) });
      return glue;
    })();
    ready.catch(() => {
      ready = null;
    });
    return ready;
  };
}

interface GpuLike {
  requestAdapter(): Promise<unknown>;
}

/** Whether `navigator.gpu` yields an adapter here within `timeoutMs`. */
export async function probeWebGpu(timeoutMs = 3000): Promise<boolean> {
  const gpu = (globalThis.navigator as { gpu?: GpuLike } | undefined)?.gpu;
  if (!gpu || typeof gpu.requestAdapter !== 'function') return false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([gpu.requestAdapter().then((a) => a !== null && a !== undefined, () => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
