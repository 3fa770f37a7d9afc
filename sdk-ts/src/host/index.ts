/** `@kwaainet/sdk/host`: what runs inside the engine host (worker or service worker). */

export { EngineHostHandler, type HandlerOptions, type HostConnection } from './handler.js';
export {
  glueLoader, probeWebGpu, probeWebGpuAdapter, threadedGlueLoader, type GpuProbe, type ModuleSource, type ThreadedSource,
} from './glue.js';
export { serveInServiceWorker } from './service-worker.js';
export { serveInWorker } from './worker.js';
export { LocalEngine, type LocalEngineOptions } from '../local-engine.js';
export type * from '../wasm-engine.js';
