/**
 * `@kwaainet/sdk`: local LLM inference in the browser behind an OpenAI-shaped API.
 *
 * This entry is the public API, and only it: the `KwaaiNet` facade, the page's P2P node
 * (`KwaaiNetwork`), every typed error, the OpenAI shapes, and the types a site needs to
 * configure them (README "Public API" says why each is here). What the rest of this
 * repository shares between its parts (protocol, transports, stores, hosts) lives in
 * `@kwaainet/sdk/internal` and may change in any release. `test/exports.test.ts` fails on a
 * value export that is added here without being added to that list.
 */

export { KwaaiNet, GRID_G_CO2_PER_KWH, WATTS_PER_BUSY_CORE } from './kwaainet.js';
export type {
  ChatCompletions, Completions, ContributionEvent, EnvironmentalImpactEvent, KwaaiNetEvents, KwaaiNetOptions, RouteEvent, Status,
} from './kwaainet.js';
// What `engineInfo()`, the 'ready' status and 'progress' events carry, and the host/engine choices.
export type {
  Backend, EngineInfo, EngineLimits, EnginePreference, GpuInfo, GpuLimits, HostKind, ModelInfo, Progress, ProgressPhase,
} from './protocol.js';
export type { HostPreference } from './host.js';

export {
  AbortError, BackendLostError, ConsentRequiredError, DisposedError, EngineCrashedError, EngineError, IntegrityError,
  InvalidArgumentError, KwaaiNetError, ModelTooLargeError, NetworkError, NodeApiError, NotInitializedError, P2pError,
  ProtocolError, QuotaExceededError, UnsupportedError,
  type ContextFull, type ErrorCode, type P2pFailure,
} from './errors.js';

export type * from './openai/types.js';
export { assembleChunks } from './openai/chat.js';

export { DEFAULT_MAX_RESOURCES, parseMaxResources, type MaxResources } from './resources.js';
// Types only: `ai.consent` is a ConsentManager and `startContributing()` returns a
// DutyCycle, but a site never constructs either (the classes are in ./internal).
export type { ConsentManager } from './consent.js';
export type { DutyCycle } from './resources.js';
export type { PauseReason, PowerPolicy, PowerState, PressureLevel } from './power.js';
export type {
  ConsentDecision, ConsentPrompt, ConsentRequest, ConsentStorage, PrivacyFlag, Service,
} from './consent.js';

export {
  KwaaiNetwork, MAX_MESSAGE_BYTES, fetchBootstrapAddrs,
  type CallOptions, type NetworkEvents, type NetworkMessage, type NetworkOptions, type NetworkPeerEvent, type NetworkStatus,
  type NetworkStatusEvent, type NetworkTransport, type NodeRecord,
} from './network.js';
export type { AuditCheckpoint, AuditEntry, AuditOptions, AuditVerification } from './audit.js';
export type { DataErasure, DataExport, DataRightsOptions, Erasure, ExportItem, VerifiedExport } from './data-rights.js';
export type { PageVault, VaultCallOptions } from './vault.js';
export type { DidSigner, IdentityLevel, IdentityPermissions, IdentityStatus, LinkStatementWire, PasskeyIdentity, PasskeyOptions } from './passkey.js';
export type { ConsentPurpose, ConsentReceipt, SignedConsentRecord } from './consent-record.js';
export type {
  ConsentGate, ServeSpanOptions, SpanContribution, SpanService, SpanServiceEvents, WithdrawReason,
} from './serve.js';
export type { PageSwarm, PageSwarmOptions, SwarmGenerationResult, SwarmReport } from './swarm.js';

export type { ScriptTagConfig } from './script-tag.js';
