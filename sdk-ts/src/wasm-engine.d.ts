/**
 * Hand-written mirror of the browser engine's JS API (engine/wasm, built by
 * `wasm-bindgen --target web`: `kwaainet_wasm.js` + `kwaainet_wasm_bg.wasm`), as its
 * contract states it. The engine host codes against these types only; when the generated
 * `kwaainet_wasm.d.ts` exists, a type test can assert that it satisfies `WasmEngineModule`.
 *
 * Two modules share this API: the CPU engine (`dist/engine/`, synchronous `load` and
 * `step`) and the WebGPU engine (`dist/engine-webgpu/`, the crate's `webgpu` feature:
 * `load` and `step` return promises, since they wait for the GPU). The host awaits both
 * the same way.
 *
 * Values returned by the engine are still validated at run time (host/local-engine.ts):
 * the mirror can drift from the real module.
 */

import type { WasmErrorCode } from './wasm-errors.js';

export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

/** What every engine call throws or rejects with (engine/wasm/src/error.rs): an Error named
 *  `KwaaiNetEngineError` with a stable `code`; a context overflow adds its numbers. */
export interface WasmEngineError extends Error {
  code: WasmErrorCode;
  /** `context-full`: positions needed, and positions the context holds. */
  needed?: number;
  max?: number;
}
export type SyncInitInput = BufferSource | WebAssembly.Module;

export interface WasmChatMessage {
  role: string;
  content: string;
}

export interface WasmEngineInfo {
  backend: 'cpu-wasm' | 'webgpu';
  /** False for the WebGPU module. */
  simd128: boolean;
  /** WebGPU module only: the adapter (vendor, architecture, device, description; may be empty). */
  adapter?: string;
  engine_version: string;
  architecture: string;
  name: string | null;
  n_layers: number;
  n_embd: number;
  n_ctx_train: number;
  max_ctx: number;
  vocab_size: number;
  weight_bytes: number;
  kv_cache_bytes: number;
  has_chat_template: boolean;
  /** What the engine can hold and holds (both modules). */
  limits: WasmEngineLimits;
  /** The WebGPU module: the adapter and the device limits it got; null on the CPU. */
  gpu: WasmGpuInfo | null;
}

export interface WasmEngineLimits {
  max_ctx_tokens: number;
  ctx_limit_tokens: number;
  kv_cache_bytes: number;
  model_bytes: number;
  weight_bytes: number;
  /** Linear memory now (it never shrinks: also its high-water mark). */
  wasm_memory_bytes: number;
  wasm_memory_max_bytes: number;
  simd128: boolean;
}

export interface WasmGpuLimits {
  max_buffer_size: number;
  max_storage_buffer_binding_size: number;
  max_uniform_buffer_binding_size: number;
  max_storage_buffers_per_shader_stage: number;
  max_compute_workgroup_storage_size: number;
  max_compute_invocations_per_workgroup: number;
  max_compute_workgroup_size_x: number;
  max_compute_workgroup_size_y: number;
  max_compute_workgroup_size_z: number;
  max_compute_workgroups_per_dimension: number;
}

export interface WasmGpuInfo {
  adapter: string;
  fallback_adapter: boolean;
  backend: string;
  limits: WasmGpuLimits;
}

/** Exactly one of prompt, messages or tokens. Defaults: max_tokens 256, temperature 0
 *  (greedy), top_k 0 (off), top_p 1, repeat_penalty 1, seed 0. */
export interface WasmStartRequest {
  prompt?: string;
  messages?: WasmChatMessage[];
  tokens?: number[];
  max_tokens?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repeat_penalty?: number;
  seed?: number;
  stop?: string[];
}

export interface WasmStepResult {
  text: string;
  tokens: number[];
  done: boolean;
  /** null while !done. "stop" = EOS/EOG or a stop string; "length" = max_tokens or context full. */
  finish_reason: 'stop' | 'length' | null;
  prompt_tokens: number;
  completion_tokens: number;
}

export interface WasmGeneration {
  /** First call runs the prefill; every call then runs up to maxTokens decode steps.
   *  WebGPU: a promise (GPU readback); one call at a time ("internal: engine is busy"). */
  step(maxTokens: number): WasmStepResult | Promise<WasmStepResult>;
  free(): void;
}

export interface WasmEngine {
  info(): WasmEngineInfo;
  tokenize(text: string, parseSpecial: boolean): Uint32Array;
  detokenize(ids: Uint32Array): string;
  applyChatTemplate(messages: WasmChatMessage[], addGenerationPrompt: boolean): string;
  /** Starting a new generation ends the previous one. */
  start(request: WasmStartRequest): WasmGeneration;
  free(): void;
  /** WebGPU module: why the device was lost (undefined while it is there). A lost device
   *  may leave a pending `step` unsettled: the host polls this meanwhile. */
  deviceLost?(): string | undefined;
  /** Test support (WebGPU module): destroys the device, as a driver reset would. */
  debugLoseDevice?(): void;
}

/** A GGUF fed in chunks (`new GgufLoader(totalBytes)`, `push(chunk)`…, `finish(maxCtx)`):
 *  each tensor's bytes are held once, in wasm memory. Errors as for `load`, plus
 *  "memory: ..." when wasm memory runs out; after an error every call fails. */
export interface GgufLoader {
  push(chunk: Uint8Array): void;
  received(): number;
  totalBytes(): number;
  /** Lower-case hex, once every byte is in. */
  sha256(): string;
  /** The engine (a promise from the WebGPU module). Uses the loader up. */
  finish(maxCtx: number): WasmEngine | Promise<WasmEngine>;
  free(): void;
}

export interface GgufLoaderStatic {
  new (totalBytes: number): GgufLoader;
}

export interface WasmEngineStatic {
  /** Throws (CPU) or rejects (WebGPU) with a `WasmEngineError` (`code` "gguf", "model",
   *  "unsupported", …); the WebGPU module rejects with code "webgpu" when it gets no
   *  adapter or device. */
  load(bytes: Uint8Array, maxCtx: number): WasmEngine | Promise<WasmEngine>;
}

/** The ES module `kwaainet_wasm.js`, as `import * as m from '.../kwaainet_wasm.js'` sees it. */
export interface WasmEngineModule {
  default(init?: { module_or_path: InitInput | Promise<InitInput> }): Promise<unknown>;
  initSync(init: { module: SyncInitInput }): unknown;
  engineVersion(): string;
  simd128(): boolean;
  WasmEngine: WasmEngineStatic;
  /** Absent from engines built before the streaming loader. */
  GgufLoader?: GgufLoaderStatic;
}
