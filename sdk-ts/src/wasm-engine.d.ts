/**
 * The browser engine's JS API (engine/wasm, built by `wasm-bindgen --target web`:
 * `kwaainet_wasm.js` + `kwaainet_wasm_bg.wasm`), as its contract states it. The engine host
 * codes against these types only. The values that cross (info, requests, step results) are
 * typed by engine-types.ts, generated from the Rust types and kept equal to them by a Rust
 * test; the classes and methods are declared here.
 *
 * Two modules share this API: the CPU engine (`dist/engine/`, synchronous `load` and
 * `step`) and the WebGPU engine (`dist/engine-webgpu/`, the crate's `webgpu` feature:
 * `load` and `step` return promises, since they wait for the GPU). The host awaits both
 * the same way.
 */

import type { WasmChatMessage, WasmEngineInfo, WasmStartRequest, WasmStepResult } from './engine-types.js';
import type { WasmErrorCode } from './wasm-errors.js';

export type { WasmChatMessage, WasmEngineInfo, WasmStartRequest, WasmStepResult };

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
  /** 'fused' (relaxed-SIMD kernels run), 'unfused' (built with them, simd128 ones run), 'off'.
   *  Absent in modules older than it. */
  relaxedSimd?(): string;
  WasmEngine: WasmEngineStatic;
  /** Absent from engines built before the streaming loader. */
  GgufLoader?: GgufLoaderStatic;
  /** Threads the CPU engine's matmuls run on (absent from engines built before threads). */
  engineThreads?(): number;
  /** The multi-threaded module only (`FEATURES=threads`): starts `n` web workers over the
   *  module's shared memory; once, before the first load. */
  initThreadPool?(n: number): Promise<unknown>;
}

/** What a span server has served (`WasmSpanServer.stats()`), and its state now. */
export interface WasmSpanStats {
  sessions: number;
  steps: number;
  tokens: number;
  blockTokens: number;
  busyUs: number;
  bytesIn: number;
  bytesOut: number;
  /** Energy of the steps served (µWh, modelled) and its carbon (µg CO2e). */
  energyUwh: number;
  carbonUg: number;
  intensityMgPerKwh: number;
  gridYear: number;
  renewablePermille: number;
  sessionsOpen: number;
  freeCache: number;
  connections: number;
  modelBytes: number;
  start: number;
  end: number;
}

export interface WasmSpanServerOptions {
  /** The id to announce, or … */
  modelId?: string;
  /** … the file's SHA-256 (hex), from which the id is derived as a native node derives it. */
  sha256?: string;
  start: number;
  end: number;
  cacheTokens?: number;
  maxLength?: number;
  maxSessions?: number;
  deviceClass?: 'phone' | 'tablet' | 'laptop' | 'desktop';
  /** ISO 3166 alpha-2: the grid's country (default: the world's mean). */
  region?: string;
}

/** A span of blocks served to the swarm (engine/wasm `WasmSpanServer`, `serve` builds only). */
export interface WasmSpanServer {
  readonly modelId: string;
  handle(stream: number, frame: Uint8Array): Uint8Array | undefined;
  close(stream: number): void;
  closeAll(): void;
  measureThroughput(steps: number): number;
  stats(): WasmSpanStats;
  free(): void;
}

/** A server a swarm generation may route over (from the swarm's directory). */
export interface WasmSwarmServer {
  /** Its peer id. */
  id: string;
  start: number;
  end: number;
  /** Tokens per second through one block, as it announced. */
  throughput?: number;
  freeCache?: number;
}

/** Where a swarm generation went (`WasmSwarmClient.report()`). */
export interface WasmSwarmReport {
  route: { server: string; start: number; end: number }[];
  steps: number;
  failovers: number;
  replays: number;
  bytesSent: number;
  bytesReceived: number;
  /** What the route's servers reported their steps cost, summed (null: none reported). */
  footprint: { energyUwh: number; carbonUg: number; method: 'measured' | 'modelled' | 'declared'; regions: string[] } | null;
  /** This page's own part (embedding and head), ms. */
  localBusyMs: number;
}

/** A model's embedding and head, generating through span servers (engine/wasm
 *  `WasmSwarmClient`, `serve` builds only). Its links are the worker's global
 *  `kwaainetSwarmLinks` (host/link-bridge.ts). */
export interface WasmSwarmClient {
  readonly modelId: string;
  readonly blocks: number;
  readonly maxCtx: number;
  start(request: WasmStartRequest, route: { servers: WasmSwarmServer[]; codec?: string; sessionId: string }): number;
  step(id: number, maxTokens: number): WasmStepResult;
  report(id: number): WasmSwarmReport | null;
  end(): void;
  free(): void;
}

/** The engine module built with the span server (`FEATURES=serve OUT=dist/engine-serve`). */
export interface WasmServeModule extends WasmEngineModule {
  WasmSpanServer: new (bytes: Uint8Array, options: WasmSpanServerOptions) => WasmSpanServer;
  WasmSwarmClient: new (bytes: Uint8Array, options: { modelId?: string; sha256?: string; maxCtx?: number }) => WasmSwarmClient;
}
