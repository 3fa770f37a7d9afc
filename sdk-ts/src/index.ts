/** `@kwaainet/sdk`: local LLM inference in the browser behind an OpenAI-shaped API. */

export { KwaaiNet, GRID_G_CO2_PER_KWH, WATTS_PER_BUSY_CORE } from './kwaainet.js';
export type {
  ChatCompletions, Completions, ContributionEvent, EnvironmentalImpactEvent, KwaaiNetEvents, KwaaiNetOptions, Status,
} from './kwaainet.js';
export * from './errors.js';
export * from './openai/types.js';
export { assembleChunks } from './openai/chat.js';
export {
  PROTOCOL_VERSION, parseHostMessage, parsePageMessage,
  type Backend, type EngineInfo, type EngineLimits, type EnginePreference, type GpuInfo, type GpuLimits, type EngineSpec, type GenerateRequest, type GenerationUsage, type HostKind, type HostMessage,
  type HostStatus, type ModelInfo, type ModelSpec, type PageMessage, type Progress, type ProgressPhase,
} from './protocol.js';
export type { Engine, GenerateOptions, GenerationResult, LoadOptions } from './engine.js';
export { ProxyEngine, portTransport, serviceWorkerTransport, workerTransport, type Transport } from './proxy.js';
export { startHost, type HostChoice, type HostPreference, type HostUrls } from './host.js';
export { ASSETS, hostUrls } from './assets.js';
export {
  CacheStorageModelStore, MemoryModelStore, type ModelStore, type PartialMeta, type StoredMeta,
} from './cache.js';
export { fetchModel, sha256Hex, type FetchModelOptions, type ModelBytes } from './download.js';
export {
  DEFAULT_MAX_RESOURCES, DutyCycle, parseMaxResources, type Clock, type MaxResources,
} from './resources.js';
export {
  ConsentManager, dialogConsentPrompt, memoryConsentStorage,
  type ConsentDecision, type ConsentPrompt, type ConsentRequest, type ConsentStorage, type PrivacyFlag, type Service,
} from './consent.js';
export {
  KwaaiNetwork, MAX_MESSAGE_BYTES, fetchBootstrapAddrs,
  type CallOptions, type NetworkEvents, type NetworkMessage, type NetworkOptions, type NetworkPeerEvent, type NetworkStatus,
  type NetworkStatusEvent, type NetworkTransport, type NodeRecord,
} from './network.js';
export { installFromScriptTag, parseScriptTag, type ScriptTagConfig } from './script-tag.js';
