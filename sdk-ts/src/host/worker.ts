/**
 * The dedicated-worker host: the page's `postMessage` in, `postMessage` out. One page per
 * worker, so one connection; the page terminates the worker when it goes. It carries the
 * CPU engine only (a small script, fetched on every page load); WebGPU runs in the
 * service-worker host. In a cross-origin-isolated page it runs the multi-threaded CPU
 * engine (its glue imported by URL, its pool a set of nested workers).
 */

import { LocalEngine, type LocalEngineOptions } from '../local-engine.js';
import type { HostMessage } from '../protocol.js';
import type { WasmEngineModule } from '../wasm-engine.js';
import { glueLoader, probeWebGpuAdapter } from './glue.js';
import { EngineHostHandler } from './handler.js';

interface WorkerScope {
  postMessage(message: HostMessage): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
}

/** `loadThreaded`: the multi-threaded CPU engine's loader (`threadedGlueLoader()`), in the
 *  CDN's host; the npm package's host goes without (service-worker/src/worker-st.ts), so
 *  that its script holds no dynamic `import()` — a bundler's dev server (Vite) rewrites
 *  those with a static import of its own, which a classic worker script cannot run. */
export function serveInWorker(glue: WasmEngineModule, loadThreaded?: LocalEngineOptions['loadThreadedModule']): EngineHostHandler {
  const scope = globalThis as unknown as WorkerScope;
  const engine = new LocalEngine({
    host: 'worker', loadModule: glueLoader(glue), probeGpu: () => probeWebGpuAdapter(),
    ...(loadThreaded && { loadThreadedModule: loadThreaded }),
  });
  const handler = new EngineHostHandler(engine);
  const connection = { send: (m: HostMessage) => scope.postMessage(m) };
  scope.addEventListener('message', (event) => void handler.handle(event.data, connection, 'page'));
  return handler;
}
