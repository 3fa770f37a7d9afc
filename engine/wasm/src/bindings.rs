//! The wasm-bindgen surface: converts JavaScript values to [`crate::engine`]'s types and back.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, EngineError, ErrorCode, Generation, Message, Request};
use kwaainet_core::gguf_stream::GgufStream;

// The value types (`WasmEngineInfo`, `WasmStartRequest`, …) in the module's own
// declarations: generated from the Rust types in `engine.rs` (see `engine_types.rs`).
#[wasm_bindgen(typescript_custom_section)]
const ENGINE_TYPES: &str = include_str!("../../../sdk-ts/src/engine-types.ts");

/// The crate version.
#[wasm_bindgen(js_name = engineVersion)]
pub fn engine_version() -> String {
    crate::engine_version_str().to_owned()
}

/// True when the module was compiled with WebAssembly SIMD (the quantized kernels' fast
/// path).
#[wasm_bindgen]
pub fn simd128() -> bool {
    crate::has_simd128()
}

/// The threads the CPU engine's matmuls run on: rayon's pool once `initThreadPool(n)` has
/// started it (the `threads` module), 1 otherwise.
/// The quantized kernels' relaxed SIMD: `'fused'` (this module has them and they run),
/// `'unfused'` (it has them, but `relaxed_madd` rounds twice here: the simd128 ones run),
/// `'off'` (a module built without relaxed SIMD).
#[wasm_bindgen(js_name = relaxedSimd)]
pub fn relaxed_simd() -> String {
    match kwaainet_core::kernels::relaxed_simd() {
        Some(true) => "fused",
        Some(false) => "unfused",
        None => "off",
    }
    .to_owned()
}

#[wasm_bindgen(js_name = engineThreads)]
pub fn engine_threads() -> u32 {
    #[cfg(feature = "threads")]
    return rayon::current_num_threads() as u32;
    #[cfg(not(feature = "threads"))]
    1
}

/// Starts `n` web workers sharing this module's memory as rayon's pool (the `threads` module
/// only; the page must be cross-origin isolated). Resolves once every worker is running; call
/// it once, before the first load.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// The JavaScript error for `e`: an `Error` named `KwaaiNetEngineError` whose message is the
/// human part and whose `code` is the [`ErrorCode`]'s name, with `needed` and `max` (numbers)
/// for a context overflow. The SDK maps `code` to its typed errors (`sdk-ts/src/local-engine.ts`).
pub(crate) fn js_err(e: EngineError) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    err.set_name("KwaaiNetEngineError");
    let set = |key: &str, value: JsValue| {
        // Setting a property on a fresh Error object cannot fail.
        let _ = js_sys::Reflect::set(&err, &JsValue::from_str(key), &value);
    };
    set("code", JsValue::from_str(e.code.as_str()));
    if let Some((needed, max)) = e.context {
        set("needed", JsValue::from_f64(needed as f64));
        set("max", JsValue::from_f64(max as f64));
    }
    err.into()
}

pub(crate) fn options_err(what: &str, e: impl std::fmt::Display) -> JsValue {
    js_err(EngineError::new(
        ErrorCode::InvalidArgument,
        format!("{what}: {e}"),
    ))
}

/// Rejects keys of `obj` outside `allowed`: serde-wasm-bindgen reads only the fields a
/// struct declares, so a misspelt option (`maxTokens`) would otherwise be ignored.
pub(crate) fn check_keys(what: &str, obj: &JsValue, allowed: &[&str]) -> Result<(), JsValue> {
    let Some(obj) = obj.dyn_ref::<js_sys::Object>() else {
        return Err(options_err(what, "expected an object"));
    };
    if js_sys::Array::is_array(obj) {
        return Err(options_err(what, "expected an object, not an array"));
    }
    for key in js_sys::Object::keys(obj).iter() {
        let key = key.as_string().unwrap_or_default();
        if !allowed.contains(&key.as_str()) {
            return Err(options_err(
                what,
                format!(
                    "unknown field `{key}` (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Plain objects with `null` (not `undefined`) for absent values.
pub(crate) fn to_js(v: &impl Serialize) -> Result<JsValue, JsValue> {
    let ser = serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true);
    v.serialize(&ser)
        .map_err(|e| js_err(EngineError::new(ErrorCode::Internal, e.to_string())))
}

/// A model loaded into wasm memory.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmEngine {
    inner: Engine,
}

#[wasm_bindgen]
impl WasmEngine {
    /// Parses and loads a GGUF held in memory; `maxCtx` is the KV-cache length in tokens.
    #[cfg(not(feature = "webgpu"))]
    pub fn load(
        bytes: &[u8],
        #[wasm_bindgen(js_name = maxCtx)] max_ctx: f64,
    ) -> Result<WasmEngine, JsValue> {
        Ok(Self {
            inner: Engine::load(bytes, max_ctx).map_err(js_err)?,
        })
    }

    /// Parses a GGUF held in memory and loads it onto a WebGPU device; resolves to the
    /// engine, or rejects with code `webgpu` when the browser has no usable adapter.
    #[cfg(feature = "webgpu")]
    #[wasm_bindgen(unchecked_return_type = "Promise<WasmEngine>")]
    pub fn load(bytes: Vec<u8>, #[wasm_bindgen(js_name = maxCtx)] max_ctx: f64) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            let inner = Engine::load_webgpu(&bytes, max_ctx).await.map_err(js_err)?;
            Ok(JsValue::from(WasmEngine { inner }))
        })
    }

    /// The WebGPU module: why the device was lost (`undefined` while it is there, and
    /// always on the CPU). A host polls it while a step is pending: a lost device may leave
    /// the step's promise unsettled.
    #[wasm_bindgen(js_name = deviceLost)]
    pub fn device_lost(&self) -> Option<String> {
        self.inner.device_lost()
    }

    /// Test support, not part of the host contract: destroys the WebGPU device, as a driver
    /// reset would (an `invalid-argument` error on the CPU).
    #[wasm_bindgen(js_name = debugLoseDevice)]
    pub fn debug_lose_device(&self) -> Result<(), JsValue> {
        self.inner.debug_lose_device().map_err(js_err)
    }

    /// Model and engine facts.
    #[wasm_bindgen(unchecked_return_type = "WasmEngineInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        to_js(&self.inner.info().map_err(js_err)?)
    }

    /// Token ids of `text` (no BOS added).
    pub fn tokenize(
        &self,
        text: &str,
        #[wasm_bindgen(js_name = parseSpecial)] parse_special: bool,
    ) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenize(text, parse_special).map_err(js_err)
    }

    /// Text of `ids`, special tokens included.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, JsValue> {
        self.inner.detokenize(ids).map_err(js_err)
    }

    /// `messages` (`{ role, content }[]`) rendered with the model's chat template.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(
        &self,
        #[wasm_bindgen(unchecked_param_type = "WasmChatMessage[]")] messages: JsValue,
        #[wasm_bindgen(js_name = addGenerationPrompt)] add_generation_prompt: bool,
    ) -> Result<String, JsValue> {
        let messages: Vec<Message> =
            serde_wasm_bindgen::from_value(messages).map_err(|e| options_err("messages", e))?;
        self.inner
            .apply_chat_template(&messages, add_generation_prompt)
            .map_err(js_err)
    }

    /// Starts a generation (ending this engine's previous one).
    pub fn start(
        &self,
        #[wasm_bindgen(unchecked_param_type = "WasmStartRequest")] request: JsValue,
    ) -> Result<WasmGeneration, JsValue> {
        check_keys("request", &request, Request::FIELDS)?;
        let req: Request =
            serde_wasm_bindgen::from_value(request).map_err(|e| options_err("request", e))?;
        Ok(WasmGeneration {
            inner: self.inner.start(req).map_err(js_err)?,
        })
    }

    /// Test support, not part of the host contract: the logits after `tokens`.
    #[wasm_bindgen(js_name = promptLogits)]
    pub fn prompt_logits(&self, tokens: &[u32]) -> Result<Vec<f32>, JsValue> {
        self.inner.prompt_logits(tokens).map_err(js_err)
    }

    /// Test support, not part of the host contract: the argmax before each of `forced`
    /// when `prompt` and then `forced` are fed in (teacher forcing).
    #[wasm_bindgen(js_name = teacherForcedArgmax)]
    pub fn teacher_forced_argmax(
        &self,
        prompt: &[u32],
        forced: &[u32],
    ) -> Result<Vec<u32>, JsValue> {
        self.inner
            .teacher_forced_argmax(prompt, forced)
            .map_err(js_err)
    }
}

/// A running generation, advanced by `step`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmGeneration {
    inner: Generation,
}

#[wasm_bindgen]
impl WasmGeneration {
    /// Runs the prefill on the first call, then up to `maxTokens` decode steps; returns
    /// what they produced (`step(0)` on the first call runs only the prefill).
    #[cfg(not(feature = "webgpu"))]
    #[wasm_bindgen(unchecked_return_type = "WasmStepResult")]
    pub fn step(
        &self,
        #[wasm_bindgen(js_name = maxTokens)] max_tokens: f64,
    ) -> Result<JsValue, JsValue> {
        let n = step_count(max_tokens)?;
        to_js(&in_pool(|| self.inner.step(n)).map_err(js_err)?)
    }

    /// As in the CPU engine, but resolves once the device has produced the tokens.
    #[cfg(feature = "webgpu")]
    #[wasm_bindgen(unchecked_return_type = "Promise<WasmStepResult>")]
    pub fn step(&self, #[wasm_bindgen(js_name = maxTokens)] max_tokens: f64) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let n = step_count(max_tokens)?;
            let r = inner.step_async(n).await.map_err(js_err)?;
            to_js(&r)
        })
    }
}

/// Runs `f` on a thread of the engine's pool (the `threads` module) while every other
/// thread of the pool spins on rayon's `yield_now`, taking the jobs of each matmul as they
/// are spawned — instead of sleeping between matmuls and being woken for each: decode's
/// matmuls are small (a fraction of a millisecond, about 120 a token) and a wake-up cost
/// what the second thread gained. The calling thread waits once per step. Without threads,
/// `f` runs here.
///
/// A spinner must never sit above a job that waits (that thread would spin until the step
/// ends, and the step would wait for it): on wasm32 kwaainet-core's `run_tasks` spawns only
/// leaf jobs, which never wait, so whatever a thread runs before or inside its spinner has
/// ended by the time it spins; the spinner itself is a broadcast, one per thread, queued
/// before any work of the step.
#[cfg(not(feature = "webgpu"))]
fn in_pool<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "threads")]
    if rayon::current_num_threads() > 1 {
        let f = Handover(f);
        return rayon::scope(move |s| {
            use std::sync::atomic::{AtomicBool, Ordering};
            let owner = rayon::current_thread_index();
            let done = std::sync::Arc::new(AtomicBool::new(false));
            let flag = std::sync::Arc::clone(&done);
            s.spawn_broadcast(move |_, ctx| {
                if Some(ctx.index()) == owner {
                    return;
                }
                // Spin while there is work; after a stretch without any, nap between looks
                // (a futex wait with a timeout), so that on a busy device the spinners give
                // their core back to the thread that has the step's serial work.
                let mut idle = 0u32;
                while !flag.load(Ordering::Acquire) {
                    if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                        idle = 0;
                    } else {
                        idle = idle.saturating_add(1);
                        if idle > SPINS_BEFORE_NAP {
                            std::thread::sleep(NAP);
                        }
                    }
                }
            });
            let r = Handover((f.into_inner())());
            done.store(true, Ordering::Release);
            r
        })
        .into_inner();
    }
    f()
}

/// Looks for work a spinner makes before it starts napping between looks, and the nap.
#[cfg(feature = "threads")]
const SPINS_BEFORE_NAP: u32 = 256;
#[cfg(feature = "threads")]
const NAP: std::time::Duration = std::time::Duration::from_micros(20);

/// A value handed to one pool thread and back while its owner waits: the engine's state is
/// `Rc`-shared (`engine::Shared`), so not `Send`, but during `in_pool` only one thread
/// touches it at a time.
#[cfg(feature = "threads")]
struct Handover<T>(T);

#[cfg(feature = "threads")]
impl<T> Handover<T> {
    /// Taking the value by a method makes closures capture the whole `Handover` (edition
    /// 2021's disjoint captures would otherwise capture the non-`Send` field alone).
    fn into_inner(self) -> T {
        self.0
    }
}

// SAFETY: `rayon::scope` blocks the calling thread until the closure has returned, and the
// closure runs on exactly one pool thread; the scope's latch orders every write of that
// thread before the caller resumes. So the value (the step closure, which reaches the
// engine's `Rc<RefCell<..>>` through `&self`, and its result) is only ever used by one
// thread at a time, with happens-before edges at each handover, and none of it is bound to a
// thread (the engine's state is plain Rust: no `JsValue`).
#[cfg(feature = "threads")]
unsafe impl<T> Send for Handover<T> {}

/// `maxTokens` as a step count: a whole number >= 0; huge counts mean "until done".
pub(crate) fn step_count(max_tokens: f64) -> Result<u32, JsValue> {
    if !(max_tokens >= 0.0 && max_tokens.fract() == 0.0) {
        return Err(options_err(
            "maxTokens",
            format!("{max_tokens} is not a whole number >= 0"),
        ));
    }
    Ok(max_tokens.min(f64::from(u32::MAX)) as u32)
}

/// A GGUF arriving in chunks (a `Response` body): `new GgufLoader(totalBytes)`, then
/// `push(chunk)` for each `Uint8Array` in order, then `finish(maxCtx)` for the engine. Each
/// tensor's bytes are kept once, in wasm memory, and freed as the model takes them; the
/// file's SHA-256 is computed on the way (`sha256()` once every byte is in).
#[wasm_bindgen]
#[derive(Debug)]
pub struct GgufLoader {
    inner: GgufStream,
}

#[wasm_bindgen]
impl GgufLoader {
    /// A loader for a file of `totalBytes` bytes.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(js_name = totalBytes)] total_bytes: f64,
    ) -> Result<GgufLoader, JsValue> {
        Ok(Self {
            inner: GgufStream::new(crate::engine::stream_size(total_bytes).map_err(js_err)?)
                .map_err(|e| js_err(e.into()))?,
        })
    }

    /// The next bytes of the file (copied in; the caller may reuse the chunk).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        self.inner.push(chunk).map_err(|e| js_err(e.into()))
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> f64 {
        self.inner.received() as f64
    }

    /// The size given to the constructor.
    #[wasm_bindgen(js_name = totalBytes)]
    pub fn total_bytes(&self) -> f64 {
        self.inner.total() as f64
    }

    /// SHA-256 of the bytes pushed (lower-case hex), once all of them are in.
    pub fn sha256(&self) -> Result<String, JsValue> {
        self.inner.sha256().map_err(|e| js_err(e.into()))
    }

    /// Loads the model from the bytes pushed; the loader is used up.
    #[cfg(not(feature = "webgpu"))]
    pub fn finish(
        &mut self,
        #[wasm_bindgen(js_name = maxCtx)] max_ctx: f64,
    ) -> Result<WasmEngine, JsValue> {
        let streamed = self.inner.finish().map_err(|e| js_err(e.into()))?;
        Ok(WasmEngine {
            inner: Engine::load_streamed(streamed, max_ctx).map_err(js_err)?,
        })
    }

    /// Loads the model onto a WebGPU device; rejects with code `webgpu` without one. The
    /// loader is used up.
    #[cfg(feature = "webgpu")]
    #[wasm_bindgen(unchecked_return_type = "Promise<WasmEngine>")]
    pub fn finish(&mut self, #[wasm_bindgen(js_name = maxCtx)] max_ctx: f64) -> js_sys::Promise {
        let streamed = self.inner.finish();
        wasm_bindgen_futures::future_to_promise(async move {
            let streamed = streamed.map_err(|e| js_err(e.into()))?;
            let inner = Engine::load_webgpu_streamed(streamed, max_ctx)
                .await
                .map_err(js_err)?;
            Ok(JsValue::from(WasmEngine { inner }))
        })
    }
}

/// Options of [`WasmSpanServer`]'s constructor (camelCase in JavaScript).
#[cfg(feature = "serve")]
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpanServerOptions {
    model_id: Option<String>,
    sha256: Option<String>,
    start: u32,
    end: u32,
    cache_tokens: Option<u32>,
    max_length: Option<u32>,
    max_sessions: Option<u32>,
    device_class: Option<kwaainet_footprint::meter::DeviceClass>,
    region: Option<String>,
}

/// A span of a model's blocks served to the swarm from this page (the same server a native
/// node runs: `kwaainet-swarm`). `new WasmSpanServer(ggufBytes, { modelId | sha256, start, end,
/// cacheTokens?, maxLength?, maxSessions? })` loads only those blocks; the page's P2P node
/// feeds each inbound `/kwaainet/inference/1.0.0` stream's frames to `handle(stream, frame)`
/// and sends back what it returns (`undefined`: end the stream), and `close(stream)` when a
/// stream ends.
#[cfg(feature = "serve")]
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmSpanServer {
    inner: crate::span::SpanHost,
}

#[cfg(feature = "serve")]
#[wasm_bindgen]
impl WasmSpanServer {
    /// Loads blocks `start..end` of the GGUF file `bytes` (defaults: 2048 cache positions,
    /// sessions as long as the cache, 8 sessions).
    #[wasm_bindgen(constructor)]
    pub fn new(
        bytes: &[u8],
        #[wasm_bindgen(
            unchecked_param_type = "{ modelId?: string, sha256?: string, start: number, end: number, cacheTokens?: number, maxLength?: number, maxSessions?: number, deviceClass?: 'phone' | 'tablet' | 'laptop' | 'desktop', region?: string }"
        )]
        options: JsValue,
    ) -> Result<WasmSpanServer, JsValue> {
        check_keys(
            "span options",
            &options,
            &[
                "modelId",
                "sha256",
                "start",
                "end",
                "cacheTokens",
                "maxLength",
                "maxSessions",
                "deviceClass",
                "region",
            ],
        )?;
        let o: SpanServerOptions =
            serde_wasm_bindgen::from_value(options).map_err(|e| options_err("span options", e))?;
        let cache_tokens = o.cache_tokens.unwrap_or(2048) as usize;
        let model = crate::span::ModelName::from_options(o.model_id, o.sha256)
            .map_err(|e| options_err("span options", e.message))?;
        let options = crate::span::SpanOptions {
            model,
            blocks: o.start as usize..o.end as usize,
            cache_tokens,
            max_length: o.max_length.map(|n| n as usize),
            max_sessions: o.max_sessions.unwrap_or(8) as usize,
            device: (o.device_class).unwrap_or(kwaainet_footprint::meter::DeviceClass::Laptop),
            region: o.region,
        };
        Ok(Self {
            inner: crate::span::SpanHost::load(bytes, options).map_err(js_err)?,
        })
    }

    /// The id the span is announced under (`name@sha256-prefix`).
    #[wasm_bindgen(getter, js_name = modelId)]
    pub fn model_id(&self) -> String {
        self.inner.model_id().to_owned()
    }

    /// Handles one frame of stream `stream`; the reply to send, or `undefined` to end the
    /// stream.
    pub fn handle(&mut self, stream: u32, frame: &[u8]) -> Option<Vec<u8>> {
        self.inner.handle(stream, frame)
    }

    /// Stream `stream` ended: its session goes.
    pub fn close(&mut self, stream: u32) {
        self.inner.close(stream);
    }

    /// Ends every stream's session (the span is withdrawn).
    #[wasm_bindgen(js_name = closeAll)]
    pub fn close_all(&mut self) {
        self.inner.close_all();
    }

    /// Tokens per second through one block, measured over `steps` one-token steps.
    #[wasm_bindgen(js_name = measureThroughput)]
    pub fn measure_throughput(&self, steps: u32) -> Result<f64, JsValue> {
        self.inner
            .measure_throughput(steps as usize)
            .map_err(js_err)
    }

    /// `{ sessions, steps, tokens, blockTokens, busyUs, bytesIn, bytesOut, energyUwh,
    /// carbonUg, intensityMgPerKwh, gridYear, sessionsOpen, freeCache, connections,
    /// modelBytes, start, end }`: what this span has served (its energy modelled from its
    /// busy time and the device class), and its state now.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        // A plain object (the counters are flattened in, which would otherwise make a Map).
        let ser = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true);
        self.inner
            .stats()
            .serialize(&ser)
            .map_err(|e| js_err(EngineError::new(ErrorCode::Internal, e.to_string())))
    }
}
