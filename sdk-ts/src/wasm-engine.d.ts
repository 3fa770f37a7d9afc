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

export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;
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
}

export interface WasmEngineStatic {
  /** Throws (CPU) or rejects (WebGPU) with an Error whose message starts with a stable
   *  code ("gguf: ...", "model: ..."); the WebGPU module rejects with "webgpu: ..." when it
   *  gets no adapter or device. */
  load(bytes: Uint8Array, maxCtx: number): WasmEngine | Promise<WasmEngine>;
}

/** The ES module `kwaainet_wasm.js`, as `import * as m from '.../kwaainet_wasm.js'` sees it. */
export interface WasmEngineModule {
  default(init?: { module_or_path: InitInput | Promise<InitInput> }): Promise<unknown>;
  initSync(init: { module: SyncInitInput }): unknown;
  engineVersion(): string;
  simd128(): boolean;
  WasmEngine: WasmEngineStatic;
}
