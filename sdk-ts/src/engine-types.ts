// Generated from engine/wasm/src/engine.rs by ts-rs (engine/wasm/src/engine_types.rs).
// Do not edit: change the Rust types, then run
// `KWAAINET_BLESS=1 cargo test -p kwaainet-wasm engine_types`.

/**
 * Which engine module runs the model.
 */
export type WasmBackend = "cpu-wasm" | "webgpu";

/**
 * What `WasmEngine.info()` returns.
 */
export type WasmEngineInfo = { backend: WasmBackend, 
/**
 * WebGPU module only: the adapter (vendor, architecture, device, description; may be
 * empty).
 */
adapter?: string, 
/**
 * False for the WebGPU module.
 */
simd128: boolean, engineVersion: string, architecture: string, name: string | null, nLayers: number, nEmbd: number, nCtxTrain: number, maxCtx: number, vocabSize: number, weightBytes: number, kvCacheBytes: number, hasChatTemplate: boolean, 
/**
 * What this engine can hold and what it holds.
 */
limits: EngineLimits, 
/**
 * The WebGPU module: the adapter and the device limits the engine got; `null` on the
 * CPU.
 */
gpu: GpuInfo | null, };

/**
 * What the loaded engine can hold and holds (both engines). Bytes unless named otherwise
 * (`f64`: JavaScript numbers).
 */
export type EngineLimits = { 
/**
 * Positions the KV cache holds (`maxCtx` of the load).
 */
maxCtxTokens: number, 
/**
 * The largest `maxCtx` this model accepts (its training context).
 */
ctxLimitTokens: number, 
/**
 * The KV cache at `maxCtxTokens`.
 */
kvCacheBytes: number, 
/**
 * The GGUF file's size.
 */
modelBytes: number, 
/**
 * The loaded weights (on the device for the WebGPU module).
 */
weightBytes: number, 
/**
 * The module's linear memory now (it never shrinks: this is also its high-water mark).
 */
wasmMemoryBytes: number, 
/**
 * The most linear memory a wasm32 module can address (browsers may grant less).
 */
wasmMemoryMaxBytes: number, 
/**
 * Whether the CPU kernels use WebAssembly SIMD (false on the WebGPU module).
 */
simd128: boolean, };

/**
 * The WebGPU adapter and device limits, as the engine's device got them.
 */
export type GpuInfo = { 
/**
 * The adapter's description (browsers may leave it empty).
 */
adapter: string, 
/**
 * A fallback (software) adapter, such as SwiftShader.
 */
fallbackAdapter: boolean, 
/**
 * wgpu's name for the API under it (`BrowserWebGpu` in browsers).
 */
backend: string, limits: GpuLimits, };

/**
 * The WebGPU device limits the engine got (the ones that bound its buffers and kernels).
 */
export type GpuLimits = { maxBufferSize: number, maxStorageBufferBindingSize: number, maxUniformBufferBindingSize: number, maxStorageBuffersPerShaderStage: number, maxComputeWorkgroupStorageSize: number, maxComputeInvocationsPerWorkgroup: number, maxComputeWorkgroupSizeX: number, maxComputeWorkgroupSizeY: number, maxComputeWorkgroupSizeZ: number, maxComputeWorkgroupsPerDimension: number, };

/**
 * One chat message as JavaScript passes it.
 */
export type WasmChatMessage = { role: string, content: string, };

/**
 * The argument of `WasmEngine.start()`. Unknown fields are rejected (see
 * [`Request::FIELDS`]) so that a misspelt option (`maxTokens`) fails loudly instead of
 * being ignored.
 *
 * Exactly one of `prompt`, `messages` or `tokens`. Defaults: `max_tokens` 256,
 * `temperature` 0 (greedy), `top_k` 0 (off), `top_p` 1, `repeat_penalty` 1, `seed` 0. The
 * names are the OpenAI API's.
 */
export type WasmStartRequest = { prompt?: string, messages?: Array<WasmChatMessage>, tokens?: Array<number>, max_tokens?: number, temperature?: number, top_k?: number, top_p?: number, repeat_penalty?: number, 
/**
 * A whole number below 2^53 from JavaScript.
 */
seed?: number, stop?: Array<string>, };

/**
 * Why a generation ended.
 */
export type WasmFinishReason = "stop" | "length";

/**
 * What `WasmGeneration.step()` returns: the text and tokens produced by this call.
 */
export type WasmStepResult = { text: string, tokens: Array<number>, done: boolean, 
/**
 * `null` while not `done`.
 */
finish_reason: WasmFinishReason | null, prompt_tokens: number, completion_tokens: number, };
