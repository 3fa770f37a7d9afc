/**
 * `@kwaainet/sdk/internal`: what this repository's other parts share with the SDK (the
 * service-worker and worker hosts, the CDN build, the tests): the page ⇄ host protocol,
 * the `Engine` seam and its transports, model stores and delivery, the CPU scheduler, the
 * consent machinery and the script-tag installer. No stability promise: it changes with
 * the code behind it. Sites use `@kwaainet/sdk` (index.ts).
 */

export {
  PROTOCOL_VERSION, parseHostMessage, parsePageMessage,
  type EngineSpec, type GenerateRequest, type GenerationUsage, type HostMessage, type HostStatus, type ModelSpec,
  type PageMessage,
} from './protocol.js';
export type { Engine, GenerateOptions, GenerationResult, LoadOptions } from './engine.js';
export {
  ProxyEngine, portTransport, serviceWorkerTransport, workerTransport, type ProxyOptions, type Transport,
} from './proxy.js';
// KwaaiNetOptions.startHost (custom hosts, tests) is typed with these.
export { startHost, type HostChoice, type HostUrls, type StartHostOptions } from './host.js';
export { ASSETS, hostUrls } from './assets.js';
export {
  CacheStorageModelStore, MemoryModelStore, type ModelStore, type PartialMeta, type StoredMeta,
} from './cache.js';
export { fetchModel, sha256Hex, type FetchModelOptions, type ModelBytes } from './download.js';
export { DutyCycle, type Clock } from './resources.js';
export { ConsentManager, dialogConsentPrompt, memoryConsentStorage, type ConsentOptions } from './consent.js';
export {
  abortErrorFrom, errorFields, errorFromWire, isErrorCode, throwIfAborted, toKwaaiNetError, type ErrorFields,
} from './errors.js';
export {
  WASM_ERROR_CODES, WASM_P2P_ERROR_CODES, describeWasmError, fromWasmError, fromWasmP2pError, wasmErrorCode,
  type WasmErrorCode, type WasmP2pErrorCode,
} from './wasm-errors.js';
export { installFromScriptTag, parseScriptTag, type ScriptLike } from './script-tag.js';
export { DEFAULT_POWER_POLICY, PowerGovernor, decide as decidePower, type PowerEnvironment } from './power.js';
