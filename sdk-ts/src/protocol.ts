/**
 * The message protocol between the page (SDK) and the engine host (dedicated worker,
 * service worker, or in-page). Every message carries `v: PROTOCOL_VERSION` and a `type`
 * discriminator; requests carry an `id` that every reply to them repeats.
 *
 * Nothing received is trusted: `parsePageMessage` / `parseHostMessage` validate
 * `event.data` field by field (types, ranges, lengths) and build fresh objects, so extra or
 * hostile fields never reach the engine.
 *
 * Page → host                          Host → page
 *   ping                                 pong (host instance id: a new id = host restarted)
 *   status                               status
 *   load  (model url, sha256, caps)      progress* then loaded | error
 *   chat  (messages | prompt, sampling)  started, chunk* then done | error
 *   abort (id of a chat or load)         (the aborted request ends with error 'aborted')
 *   info                                 info
 *   has-model / delete-model (url)       model-state
 */

import { P2P_FAILURES, ProtocolError, isErrorCode, type ErrorCode, type ErrorFields } from './errors.js';
import {
  SHA256_HEX, array, boolean, integer, number, oneOf, optional, record, string, type Fail,
} from './validate.js';

/** 2: chat requests may carry a raw `prompt`; `chunk` carries the token ids; `started`.
 *  3: the WebGPU engine: `load` names its .wasm and the backend wanted; `info` reports the
 *  adapter and why that backend.
 *  4: `info` carries the engine's limits and the WebGPU device's (`limits`, `gpu`); error
 *  code 'backend-lost' (the WebGPU device was lost: the host moved to the CPU engine).
 *  Since then, additively (a side that does not know it ignores it): `error.fields`, the
 *  error class's own fields (ErrorFields), validated when present.
 *  5: the multi-threaded CPU engine: `load` may name it and the threads wanted; `info`
 *  reports the threads the CPU engine runs on and why that many.
 *  6: the CPU engines built with relaxed SIMD: `load` may name their .wasm; `info` says
 *  whether the relaxed-SIMD kernels run (`relaxedSimd`). */
export const PROTOCOL_VERSION = 6;

/** The most threads the CPU engine runs on. */
export const MAX_THREADS = 16;

/** Size limits on what a message may carry. */
export const LIMITS = {
  id: 64,
  url: 4096,
  messages: 1024,
  /** Characters of one message's content. */
  content: 1 << 20,
  stop: 16,
  stopLength: 256,
  chunkText: 1 << 20,
  errorMessage: 4096,
  text: 256,
  /** Token ids in one chunk (the host sends at most a few dozen per step). */
  chunkTokens: 4096,
} as const;

export type HostKind = 'service-worker' | 'worker' | 'in-page';
export type Backend = 'cpu-wasm' | 'webgpu';
/** Which engine module a host loads: 'auto' = WebGPU in the service-worker host when it has
 *  an adapter, else the CPU engine; 'webgpu' fails where WebGPU cannot run. */
export type EnginePreference = 'auto' | 'webgpu' | 'cpu';
export type ProgressPhase = 'download' | 'verify' | 'load';
export type ChatRole = 'system' | 'user' | 'assistant';

/** One progress event for the whole model delivery: `loaded` / `total` count bytes of the
 *  current phase; `fraction` (0..1) is the combined progress over all phases. */
export interface Progress {
  phase: ProgressPhase;
  loaded: number;
  total: number;
  fraction: number;
}

export interface ModelSpec {
  url: string;
  /** Lower-case hex. When absent the bytes are not verified (a warning in `info`). */
  sha256?: string;
  /** KV-cache length in tokens. */
  maxCtx: number;
  /** Model bytes + KV cache must fit (maxResources.memory). */
  memoryLimitBytes?: number;
  /** The model cache must fit (maxResources.storage). */
  storageLimitBytes?: number;
}

/** Where the host finds the WASM engines (each initialised on its first load). */
export interface EngineSpec {
  /** The CPU engine. */
  wasmUrl: string;
  /** SRI (`sha384-...`) checked when fetching the .wasm. */
  wasmIntegrity?: string;
  /** The WebGPU engine (absent: the host runs the CPU engine). */
  webgpuWasmUrl?: string;
  webgpuWasmIntegrity?: string;
  /** The multi-threaded CPU engine's ES-module glue (it imports its worker helper from next
   *  to itself) and .wasm; absent: the CPU engine runs on one thread. Used only where the
   *  host can start web workers and the page is cross-origin isolated. */
  threadsGlueUrl?: string;
  threadsWasmUrl?: string;
  threadsWasmIntegrity?: string;
  /** The single- and multi-threaded CPU engines built with relaxed SIMD (the plain ones'
   *  glue loads them): used where the host's engine validates relaxed SIMD. */
  relaxedWasmUrl?: string;
  relaxedWasmIntegrity?: string;
  threadsRelaxedWasmUrl?: string;
  threadsRelaxedWasmIntegrity?: string;
  /** Most threads for the CPU engine (default: the device's cores, at most 16; 1: one). */
  threads?: number;
  /** Default 'auto'. */
  backend?: EnginePreference;
}

/** Exactly one of `messages` (rendered with the model's chat template) or `prompt` (raw
 *  text, special tokens such as `<|im_start|>` parsed: OpenAI's legacy completions). */
export interface GenerateRequest {
  messages?: Array<{ role: ChatRole; content: string }>;
  prompt?: string;
  max_tokens?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repeat_penalty?: number;
  seed?: number;
  stop?: string[];
}

export interface ModelInfo {
  url: string;
  sha256: string | null;
  architecture: string;
  name: string | null;
  nLayers: number;
  nEmbd: number;
  nCtxTrain: number;
  maxCtx: number;
  vocabSize: number;
  weightBytes: number;
  kvCacheBytes: number;
  hasChatTemplate: boolean;
}

// What the loaded engine can hold and holds, and the WebGPU device it got: the engine
// module's own types, generated from its Rust definitions (engine-types.ts).
import type { EngineLimits, GpuInfo, GpuLimits } from './engine-types.js';
export type { EngineLimits, GpuInfo, GpuLimits };

export interface EngineInfo {
  host: HostKind;
  /** The engine running the loaded model; before a load, the one the next load tries. */
  backend: Backend;
  /** Why that backend (e.g. why WebGPU was not used). */
  backendReason: string;
  /** Threads the CPU engine's matmuls run on (1 on WebGPU, and where threads are off). */
  threads: number;
  /** Why that many (e.g. "the page is not cross-origin isolated"). */
  threadsReason: string;
  /** Whether a WebGPU adapter was available in the host. */
  gpuAvailable: boolean;
  /** The WebGPU adapter's description, when known (may be empty); null on the CPU. */
  adapter: string | null;
  simd128: boolean;
  /** Whether the CPU engine's quantized kernels run with relaxed SIMD (the module built with
   *  it, where the engine has it and its fused multiply-add is fused: see engine/wasm). */
  relaxedSimd: boolean;
  engineVersion: string;
  hostInstanceId: string;
  model: ModelInfo | null;
  /** Null until a model is loaded. */
  limits: EngineLimits | null;
  /** The WebGPU engine's device; null on the CPU engine and before a load. */
  gpu: GpuInfo | null;
}

export interface HostStatus {
  instanceId: string;
  host: HostKind;
  gpuAvailable: boolean;
  modelLoaded: boolean;
  modelUrl: string | null;
  busy: boolean;
}

export interface GenerationUsage {
  promptTokens: number;
  completionTokens: number;
  timeToFirstTokenMs: number;
  decodeTokensPerS: number;
}

export interface WireError {
  code: ErrorCode;
  message: string;
  /** The error class's own fields (`ErrorFields`); absent when it has none. */
  fields?: ErrorFields;
}

type Envelope<T extends string, B = object> = { v: typeof PROTOCOL_VERSION; type: T; id: string } & B;

export type PageMessage =
  | Envelope<'ping'>
  | Envelope<'status'>
  | Envelope<'load', { model: ModelSpec; engine: EngineSpec }>
  | Envelope<'chat', { request: GenerateRequest }>
  | Envelope<'abort'>
  | Envelope<'info'>
  | Envelope<'has-model', { url: string }>
  | Envelope<'delete-model', { url: string }>;

export type HostMessage =
  | Envelope<'pong', { instanceId: string }>
  | Envelope<'status', { status: HostStatus }>
  | Envelope<'progress', { progress: Progress }>
  | Envelope<'loaded', { info: EngineInfo }>
  /** The generation begins its prefill, which blocks the host until the first chunk. */
  | Envelope<'started'>
  /** `tokens`: the ids generated since the previous chunk (a final end-of-turn id included). */
  | Envelope<'chunk', { text: string; tokens: number[]; completionTokens: number }>
  | Envelope<'done', { finishReason: 'stop' | 'length'; usage: GenerationUsage }>
  | Envelope<'error', { error: WireError }>
  | Envelope<'info', { info: EngineInfo | null }>
  | Envelope<'model-state', { present: boolean }>;

export type PageMessageType = PageMessage['type'];
export type HostMessageType = HostMessage['type'];

const PAGE_TYPES = ['ping', 'status', 'load', 'chat', 'abort', 'info', 'has-model', 'delete-model'] as const;
const HOST_TYPES = ['pong', 'status', 'progress', 'loaded', 'started', 'chunk', 'done', 'error', 'info', 'model-state'] as const;
const ROLES = ['system', 'user', 'assistant'] as const;
const HOSTS = ['service-worker', 'worker', 'in-page'] as const;
const BACKENDS = ['cpu-wasm', 'webgpu'] as const;
const ENGINE_PREFERENCES = ['auto', 'webgpu', 'cpu'] as const;
const PHASES = ['download', 'verify', 'load'] as const;
const MAX_BYTES = Number.MAX_SAFE_INTEGER;

const fail: Fail = (m) => new ProtocolError(m);

function header(data: unknown, types: readonly string[]): { m: Record<string, unknown>; type: string; id: string } {
  const m = record(data, 'message', fail);
  if (m.v !== PROTOCOL_VERSION) {
    throw new ProtocolError(`message: protocol version ${String(m.v).slice(0, 16)} (this side speaks ${PROTOCOL_VERSION})`);
  }
  const type = oneOf(m.type, 'message.type', fail, types);
  const id = string(m.id, 'message.id', fail, LIMITS.id);
  if (id.length === 0) throw new ProtocolError('message.id: empty');
  return { m, type, id };
}

function url(value: unknown, path: string): string {
  const u = string(value, path, fail, LIMITS.url);
  if (u.length === 0) throw new ProtocolError(`${path}: empty`);
  return u;
}

const bytes = (value: unknown, path: string): number => integer(value, path, fail, 0, MAX_BYTES);

function modelSpec(value: unknown): ModelSpec {
  const r = record(value, 'model', fail);
  const spec: ModelSpec = { url: url(r.url, 'model.url'), maxCtx: integer(r.maxCtx, 'model.maxCtx', fail, 1, 1 << 20) };
  const sha = optional(r.sha256, (v) => string(v, 'model.sha256', fail, 64));
  if (sha !== undefined) {
    if (!SHA256_HEX.test(sha)) throw new ProtocolError('model.sha256: expected 64 lower-case hex digits');
    spec.sha256 = sha;
  }
  const mem = optional(r.memoryLimitBytes, (v) => bytes(v, 'model.memoryLimitBytes'));
  if (mem !== undefined) spec.memoryLimitBytes = mem;
  const storage = optional(r.storageLimitBytes, (v) => bytes(v, 'model.storageLimitBytes'));
  if (storage !== undefined) spec.storageLimitBytes = storage;
  return spec;
}

function sriHash(value: unknown, path: string): string | undefined {
  const integrity = optional(value, (v) => string(v, path, fail, 256));
  if (integrity !== undefined && !/^sha(256|384|512)-[A-Za-z0-9+/=]+$/.test(integrity)) {
    throw new ProtocolError(`${path}: not an SRI hash`);
  }
  return integrity;
}

function engineSpec(value: unknown): EngineSpec {
  const r = record(value, 'engine', fail);
  const spec: EngineSpec = { wasmUrl: url(r.wasmUrl, 'engine.wasmUrl') };
  const integrity = sriHash(r.wasmIntegrity, 'engine.wasmIntegrity');
  if (integrity !== undefined) spec.wasmIntegrity = integrity;
  const gpuUrl = optional(r.webgpuWasmUrl, (v) => url(v, 'engine.webgpuWasmUrl'));
  if (gpuUrl !== undefined) spec.webgpuWasmUrl = gpuUrl;
  const gpuIntegrity = sriHash(r.webgpuWasmIntegrity, 'engine.webgpuWasmIntegrity');
  if (gpuIntegrity !== undefined) spec.webgpuWasmIntegrity = gpuIntegrity;
  const threadsGlue = optional(r.threadsGlueUrl, (v) => url(v, 'engine.threadsGlueUrl'));
  if (threadsGlue !== undefined) spec.threadsGlueUrl = threadsGlue;
  const threadsWasm = optional(r.threadsWasmUrl, (v) => url(v, 'engine.threadsWasmUrl'));
  if (threadsWasm !== undefined) spec.threadsWasmUrl = threadsWasm;
  const threadsIntegrity = sriHash(r.threadsWasmIntegrity, 'engine.threadsWasmIntegrity');
  if (threadsIntegrity !== undefined) spec.threadsWasmIntegrity = threadsIntegrity;
  const relaxedWasm = optional(r.relaxedWasmUrl, (v) => url(v, 'engine.relaxedWasmUrl'));
  if (relaxedWasm !== undefined) spec.relaxedWasmUrl = relaxedWasm;
  const relaxedIntegrity = sriHash(r.relaxedWasmIntegrity, 'engine.relaxedWasmIntegrity');
  if (relaxedIntegrity !== undefined) spec.relaxedWasmIntegrity = relaxedIntegrity;
  const threadsRelaxed = optional(r.threadsRelaxedWasmUrl, (v) => url(v, 'engine.threadsRelaxedWasmUrl'));
  if (threadsRelaxed !== undefined) spec.threadsRelaxedWasmUrl = threadsRelaxed;
  const threadsRelaxedIntegrity = sriHash(r.threadsRelaxedWasmIntegrity, 'engine.threadsRelaxedWasmIntegrity');
  if (threadsRelaxedIntegrity !== undefined) spec.threadsRelaxedWasmIntegrity = threadsRelaxedIntegrity;
  const threads = optional(r.threads, (v) => integer(v, 'engine.threads', fail, 1, MAX_THREADS));
  if (threads !== undefined) spec.threads = threads;
  const backend = optional(r.backend, (v) => oneOf(v, 'engine.backend', fail, ENGINE_PREFERENCES));
  if (backend !== undefined) spec.backend = backend;
  return spec;
}

/** Validates the sampling fields of a generate request (shared with the SDK's own checks). */
export function generateRequest(value: unknown, failWith: Fail = fail): GenerateRequest {
  const r = record(value, 'request', failWith);
  const req: GenerateRequest = {};
  if (r.prompt !== undefined) {
    if (r.messages !== undefined) throw failWith('request: exactly one of messages or prompt');
    req.prompt = string(r.prompt, 'request.prompt', failWith, LIMITS.content);
    if (req.prompt.length === 0) throw failWith('request.prompt: empty');
  } else {
    const list = array(r.messages, 'request.messages', failWith, LIMITS.messages);
    if (list.length === 0) throw failWith('request.messages: empty');
    req.messages = list.map((entry, i) => {
      const e = record(entry, `request.messages[${i}]`, failWith);
      return {
        role: oneOf(e.role, `request.messages[${i}].role`, failWith, ROLES),
        content: string(e.content, `request.messages[${i}].content`, failWith, LIMITS.content),
      };
    });
  }
  const set = <K extends keyof GenerateRequest>(key: K, v: GenerateRequest[K] | undefined): void => {
    if (v !== undefined) req[key] = v;
  };
  set('max_tokens', optional(r.max_tokens, (v) => integer(v, 'request.max_tokens', failWith, 1, 1 << 20)));
  set('temperature', optional(r.temperature, (v) => number(v, 'request.temperature', failWith, 0, 100)));
  set('top_k', optional(r.top_k, (v) => integer(v, 'request.top_k', failWith, 0, 1 << 20)));
  set('top_p', optional(r.top_p, (v) => number(v, 'request.top_p', failWith, Number.MIN_VALUE, 1)));
  set('repeat_penalty', optional(r.repeat_penalty, (v) => number(v, 'request.repeat_penalty', failWith, 0, 100)));
  set('seed', optional(r.seed, (v) => integer(v, 'request.seed', failWith, 0, Number.MAX_SAFE_INTEGER)));
  set('stop', optional(r.stop, (v) =>
    array(v, 'request.stop', failWith, LIMITS.stop).map((s, i) => {
      const stop = string(s, `request.stop[${i}]`, failWith, LIMITS.stopLength);
      if (stop.length === 0) throw failWith(`request.stop[${i}]: empty`);
      return stop;
    })));
  return req;
}

/** Validates a message received by the engine host. Throws ProtocolError. */
export function parsePageMessage(data: unknown): PageMessage {
  const { m, type, id } = header(data, PAGE_TYPES);
  const v = PROTOCOL_VERSION;
  switch (type as PageMessageType) {
    case 'ping': return { v, type: 'ping', id };
    case 'status': return { v, type: 'status', id };
    case 'abort': return { v, type: 'abort', id };
    case 'info': return { v, type: 'info', id };
    case 'load': return { v, type: 'load', id, model: modelSpec(m.model), engine: engineSpec(m.engine) };
    case 'chat': return { v, type: 'chat', id, request: generateRequest(m.request) };
    case 'has-model': return { v, type: 'has-model', id, url: url(m.url, 'url') };
    case 'delete-model': return { v, type: 'delete-model', id, url: url(m.url, 'url') };
  }
}

function text(value: unknown, path: string): string {
  return string(value, path, fail, LIMITS.text);
}

function modelInfo(value: unknown): ModelInfo {
  const r = record(value, 'info.model', fail);
  const n = (k: string): number => integer(r[k], `info.model.${k}`, fail, 0, MAX_BYTES);
  const sha = r.sha256 === null ? null : string(r.sha256, 'info.model.sha256', fail, 64);
  return {
    url: url(r.url, 'info.model.url'),
    sha256: sha,
    architecture: text(r.architecture, 'info.model.architecture'),
    name: r.name === null ? null : text(r.name, 'info.model.name'),
    nLayers: n('nLayers'),
    nEmbd: n('nEmbd'),
    nCtxTrain: n('nCtxTrain'),
    maxCtx: n('maxCtx'),
    vocabSize: n('vocabSize'),
    weightBytes: n('weightBytes'),
    kvCacheBytes: n('kvCacheBytes'),
    hasChatTemplate: boolean(r.hasChatTemplate, 'info.model.hasChatTemplate', fail),
  };
}

const GPU_LIMIT_KEYS = [
  'maxBufferSize', 'maxStorageBufferBindingSize', 'maxUniformBufferBindingSize', 'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ', 'maxComputeWorkgroupsPerDimension',
] as const satisfies readonly (keyof GpuLimits)[];
/** Compiles only while GPU_LIMIT_KEYS names every generated GpuLimits key. */
const GPU_LIMIT_KEYS_COMPLETE: Exclude<keyof GpuLimits, (typeof GPU_LIMIT_KEYS)[number]> extends never ? true : never = true;

function engineLimits(value: unknown): EngineLimits {
  const r = record(value, 'info.limits', fail);
  const n = (k: string): number => bytes(r[k], `info.limits.${k}`);
  return {
    maxCtxTokens: n('maxCtxTokens'),
    ctxLimitTokens: n('ctxLimitTokens'),
    kvCacheBytes: n('kvCacheBytes'),
    modelBytes: n('modelBytes'),
    weightBytes: n('weightBytes'),
    wasmMemoryBytes: n('wasmMemoryBytes'),
    wasmMemoryMaxBytes: n('wasmMemoryMaxBytes'),
    simd128: boolean(r.simd128, 'info.limits.simd128', fail),
  };
}

function gpuInfo(value: unknown): GpuInfo {
  const r = record(value, 'info.gpu', fail);
  const l = record(r.limits, 'info.gpu.limits', fail);
  const limits = {} as GpuLimits;
  for (const k of GPU_LIMIT_KEYS) limits[k] = bytes(l[k], `info.gpu.limits.${k}`);
  return {
    adapter: text(r.adapter, 'info.gpu.adapter'),
    fallbackAdapter: boolean(r.fallbackAdapter, 'info.gpu.fallbackAdapter', fail),
    backend: text(r.backend, 'info.gpu.backend'),
    limits,
  };
}

function engineInfo(value: unknown): EngineInfo {
  const r = record(value, 'info', fail);
  return {
    host: oneOf(r.host, 'info.host', fail, HOSTS),
    backend: oneOf(r.backend, 'info.backend', fail, BACKENDS),
    backendReason: string(r.backendReason, 'info.backendReason', fail, LIMITS.errorMessage),
    threads: integer(r.threads, 'info.threads', fail, 1, MAX_THREADS),
    threadsReason: string(r.threadsReason, 'info.threadsReason', fail, LIMITS.errorMessage),
    gpuAvailable: boolean(r.gpuAvailable, 'info.gpuAvailable', fail),
    adapter: r.adapter === null ? null : text(r.adapter, 'info.adapter'),
    simd128: boolean(r.simd128, 'info.simd128', fail),
    relaxedSimd: boolean(r.relaxedSimd, 'info.relaxedSimd', fail),
    engineVersion: text(r.engineVersion, 'info.engineVersion'),
    hostInstanceId: string(r.hostInstanceId, 'info.hostInstanceId', fail, LIMITS.id),
    model: r.model === null ? null : modelInfo(r.model),
    limits: r.limits === null ? null : engineLimits(r.limits),
    gpu: r.gpu === null ? null : gpuInfo(r.gpu),
  };
}

function hostStatus(value: unknown): HostStatus {
  const r = record(value, 'status', fail);
  return {
    instanceId: string(r.instanceId, 'status.instanceId', fail, LIMITS.id),
    host: oneOf(r.host, 'status.host', fail, HOSTS),
    gpuAvailable: boolean(r.gpuAvailable, 'status.gpuAvailable', fail),
    modelLoaded: boolean(r.modelLoaded, 'status.modelLoaded', fail),
    modelUrl: r.modelUrl === null ? null : url(r.modelUrl, 'status.modelUrl'),
    busy: boolean(r.busy, 'status.busy', fail),
  };
}

function progress(value: unknown): Progress {
  const r = record(value, 'progress', fail);
  const loaded = bytes(r.loaded, 'progress.loaded');
  const total = bytes(r.total, 'progress.total');
  return {
    phase: oneOf(r.phase, 'progress.phase', fail, PHASES),
    loaded,
    total,
    fraction: number(r.fraction, 'progress.fraction', fail, 0, 1),
  };
}

function usage(value: unknown): GenerationUsage {
  const r = record(value, 'usage', fail);
  return {
    promptTokens: integer(r.promptTokens, 'usage.promptTokens', fail, 0, MAX_BYTES),
    completionTokens: integer(r.completionTokens, 'usage.completionTokens', fail, 0, MAX_BYTES),
    timeToFirstTokenMs: number(r.timeToFirstTokenMs, 'usage.timeToFirstTokenMs', fail, 0, Number.MAX_VALUE),
    decodeTokensPerS: number(r.decodeTokensPerS, 'usage.decodeTokensPerS', fail, 0, Number.MAX_VALUE),
  };
}

function errorFieldsOf(value: unknown): ErrorFields {
  const r = record(value, 'error.fields', fail);
  const out: ErrorFields = {};
  if (r.limit !== undefined) out.limit = oneOf(r.limit, 'error.fields.limit', fail, ['browser', 'maxResources'] as const);
  if (r.status !== undefined) out.status = integer(r.status, 'error.fields.status', fail, 0, 999);
  if (r.reason !== undefined) out.reason = oneOf(r.reason, 'error.fields.reason', fail, P2P_FAILURES);
  if (r.contextFull !== undefined) {
    const c = record(r.contextFull, 'error.fields.contextFull', fail);
    out.contextFull = {
      needed: integer(c.needed, 'error.fields.contextFull.needed', fail, 0, Number.MAX_SAFE_INTEGER),
      max: integer(c.max, 'error.fields.contextFull.max', fail, 0, Number.MAX_SAFE_INTEGER),
    };
  }
  return out;
}

function wireError(value: unknown): WireError {
  const r = record(value, 'error', fail);
  if (!isErrorCode(r.code)) throw new ProtocolError('error.code: unknown error code');
  const message = string(r.message, 'error.message', fail, LIMITS.errorMessage);
  return r.fields === undefined ? { code: r.code, message } : { code: r.code, message, fields: errorFieldsOf(r.fields) };
}

/** Validates a message received by the page from the engine host. Throws ProtocolError. */
export function parseHostMessage(data: unknown): HostMessage {
  const { m, type, id } = header(data, HOST_TYPES);
  const v = PROTOCOL_VERSION;
  switch (type as HostMessageType) {
    case 'pong': return { v, type: 'pong', id, instanceId: string(m.instanceId, 'instanceId', fail, LIMITS.id) };
    case 'status': return { v, type: 'status', id, status: hostStatus(m.status) };
    case 'progress': return { v, type: 'progress', id, progress: progress(m.progress) };
    case 'loaded': return { v, type: 'loaded', id, info: engineInfo(m.info) };
    case 'started': return { v, type: 'started', id };
    case 'chunk': return {
      v, type: 'chunk', id,
      text: string(m.text, 'text', fail, LIMITS.chunkText),
      tokens: array(m.tokens, 'tokens', fail, LIMITS.chunkTokens).map((t, i) => integer(t, `tokens[${i}]`, fail, 0, 0xffffffff)),
      completionTokens: integer(m.completionTokens, 'completionTokens', fail, 0, MAX_BYTES),
    };
    case 'done': return {
      v, type: 'done', id,
      finishReason: oneOf(m.finishReason, 'finishReason', fail, ['stop', 'length'] as const),
      usage: usage(m.usage),
    };
    case 'error': return { v, type: 'error', id, error: wireError(m.error) };
    case 'info': return { v, type: 'info', id, info: m.info === null ? null : engineInfo(m.info) };
    case 'model-state': return { v, type: 'model-state', id, present: boolean(m.present, 'present', fail) };
  }
}

/** A message builder that fills in the version (`msg({ type: 'ping', id })`). */
type WithoutV<T> = T extends unknown ? Omit<T, 'v'> : never;
export function pageMessage(m: WithoutV<PageMessage>): PageMessage {
  return { ...m, v: PROTOCOL_VERSION } as PageMessage;
}
export function hostMessage(m: WithoutV<HostMessage>): HostMessage {
  return { ...m, v: PROTOCOL_VERSION } as HostMessage;
}

/** Truncates an error message so it always fits the protocol; `fields` go as they are
 *  (`errorFields(err)`), left out when empty. */
export function wireErrorOf(code: ErrorCode, message: string, fields: ErrorFields = {}): WireError {
  const m = message.length > LIMITS.errorMessage ? `${message.slice(0, LIMITS.errorMessage - 1)}…` : message;
  return Object.keys(fields).length === 0 ? { code, message: m } : { code, message: m, fields };
}
