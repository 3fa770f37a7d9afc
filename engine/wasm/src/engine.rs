//! The engine behind the JavaScript classes, in plain Rust (no JS types), so its logic
//! compiles and can be checked on any target; `lib.rs` only converts values.

use std::cell::RefCell;
use std::io::Cursor;
use std::rc::Rc;

use kwaainet_core::chat::{ChatMessage, Prompt};
use kwaainet_core::generate::{FinishReason, GenerateOptions, StepBatch};
use kwaainet_core::gguf::Gguf;
#[cfg(feature = "webgpu")]
use kwaainet_core::models::llama::burn::BurnLlama;
use kwaainet_core::runtime::{GenerationId, Runtime, check_context};

#[cfg(feature = "webgpu")]
use crate::gpu::Gpu;
use kwaainet_core::gguf_stream::Streamed;
use kwaainet_core::{Llama, LlamaConfig, LoadSpec, SamplerConfig};
use serde::{Deserialize, Serialize};

pub use crate::error::{EngineError, ErrorCode};

type Result<T, E = EngineError> = std::result::Result<T, E>;

// The shapes below cross to JavaScript. Their TypeScript types are generated from these
// definitions (ts-rs, in this crate's tests) into `sdk-ts/src/engine-types.ts`, and a test
// fails when that file differs: change a shape here, then regenerate it (`KWAAINET_BLESS=1`).

/// Which engine module runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "WasmBackend"))]
pub enum Backend {
    /// The CPU module (simd128 kernels).
    CpuWasm,
    /// The WebGPU module (burn's wgpu backend and the CubeCL kernels).
    Webgpu,
}

/// What `WasmEngine.info()` returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "WasmEngineInfo"))]
pub struct Info {
    pub backend: Backend,
    /// WebGPU module only: the adapter (vendor, architecture, device, description; may be
    /// empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub adapter: Option<String>,
    /// False for the WebGPU module.
    pub simd128: bool,
    pub engine_version: String,
    pub architecture: String,
    pub name: Option<String>,
    pub n_layers: u32,
    pub n_embd: u32,
    pub n_ctx_train: u32,
    pub max_ctx: u32,
    pub vocab_size: u32,
    pub weight_bytes: f64,
    pub kv_cache_bytes: f64,
    pub has_chat_template: bool,
    /// What this engine can hold and what it holds.
    pub limits: EngineLimits,
    /// The WebGPU module: the adapter and the device limits the engine got; `null` on the
    /// CPU.
    pub gpu: Option<GpuInfo>,
}

/// What the loaded engine can hold and holds (both engines). Bytes unless named otherwise
/// (`f64`: JavaScript numbers).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "EngineLimits"))]
pub struct EngineLimits {
    /// Positions the KV cache holds (`maxCtx` of the load).
    pub max_ctx_tokens: u32,
    /// The largest `maxCtx` this model accepts (its training context).
    pub ctx_limit_tokens: u32,
    /// The KV cache at `maxCtxTokens`.
    pub kv_cache_bytes: f64,
    /// The GGUF file's size.
    pub model_bytes: f64,
    /// The loaded weights (on the device for the WebGPU module).
    pub weight_bytes: f64,
    /// The module's linear memory now (it never shrinks: this is also its high-water mark).
    pub wasm_memory_bytes: f64,
    /// The most linear memory a wasm32 module can address (browsers may grant less).
    pub wasm_memory_max_bytes: f64,
    /// Whether the CPU kernels use WebAssembly SIMD (false on the WebGPU module).
    pub simd128: bool,
}

/// The WebGPU adapter and device limits, as the engine's device got them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "GpuInfo"))]
pub struct GpuInfo {
    /// The adapter's description (browsers may leave it empty).
    pub adapter: String,
    /// A fallback (software) adapter, such as SwiftShader.
    pub fallback_adapter: bool,
    /// wgpu's name for the API under it (`BrowserWebGpu` in browsers).
    pub backend: String,
    pub limits: GpuLimits,
}

/// The WebGPU device limits the engine got (the ones that bound its buffers and kernels).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "GpuLimits"))]
pub struct GpuLimits {
    pub max_buffer_size: f64,
    pub max_storage_buffer_binding_size: f64,
    pub max_uniform_buffer_binding_size: f64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_size_x: u32,
    pub max_compute_workgroup_size_y: u32,
    pub max_compute_workgroup_size_z: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

/// One chat message as JavaScript passes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "WasmChatMessage"))]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The argument of `WasmEngine.start()`. Unknown fields are rejected (see
/// [`Request::FIELDS`]) so that a misspelt option (`maxTokens`) fails loudly instead of
/// being ignored.
///
/// Exactly one of `prompt`, `messages` or `tokens`. Defaults: `max_tokens` 256,
/// `temperature` 0 (greedy), `top_k` 0 (off), `top_p` 1, `repeat_penalty` 1, `seed` 0. The
/// names are the OpenAI API's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    test,
    derive(ts_rs::TS),
    ts(rename = "WasmStartRequest", optional_fields)
)]
pub struct Request {
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub tokens: Option<Vec<u32>>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// A whole number below 2^53 from JavaScript.
    #[cfg_attr(test, ts(type = "number", optional))]
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
}

impl Request {
    /// The field names JavaScript may pass.
    pub const FIELDS: &[&str] = &[
        "prompt",
        "messages",
        "tokens",
        "max_tokens",
        "temperature",
        "top_k",
        "top_p",
        "repeat_penalty",
        "seed",
        "stop",
    ];
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "WasmFinishReason"))]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

/// What `WasmGeneration.step()` returns: the text and tokens produced by this call.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "WasmStepResult"))]
pub struct StepResult {
    pub text: String,
    pub tokens: Vec<u32>,
    pub done: bool,
    /// `null` while not `done`.
    pub finish_reason: Option<Finish>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// The model's runtime (`kwaainet_core::runtime`): on the CPU (simd128 kernels) or, in the
/// `webgpu` build, on a WebGPU device.
enum Rt {
    Cpu(Runtime<Rc<Llama>>),
    #[cfg(feature = "webgpu")]
    Gpu(Runtime<Rc<BurnLlama>>),
}

/// `$body` with `$r` bound to the runtime, whichever backend it runs on.
macro_rules! on_runtime {
    ($rt:expr, $r:ident => $body:expr) => {
        match $rt {
            Rt::Cpu($r) => $body,
            #[cfg(feature = "webgpu")]
            Rt::Gpu($r) => $body,
        }
    };
}

/// A loaded model: the runtime and what this host adds to it.
struct Loaded {
    rt: Rt,
    adapter: Option<String>,
    #[cfg(feature = "webgpu")]
    gpu: Option<Gpu>,
}

/// The GGUF header of `bytes`, its model's hyper-parameters and `max_ctx` checked against
/// them (a whole number from 1 to the training context).
fn parse(bytes: &[u8], max_ctx: f64) -> Result<(Gguf, LlamaConfig, usize)> {
    check_max_ctx(max_ctx)?;
    let gguf = Gguf::read(&mut Cursor::new(bytes)).map_err(kwaainet_core::Error::from)?;
    let (config, max_ctx) = config(&gguf, max_ctx)?;
    Ok((gguf, config, max_ctx))
}

fn check_max_ctx(max_ctx: f64) -> Result<()> {
    if !(max_ctx >= 1.0 && max_ctx.fract() == 0.0 && max_ctx <= f64::from(u32::MAX)) {
        return Err(EngineError::new(
            ErrorCode::InvalidArgument,
            format!("maxCtx must be a positive whole number, got {max_ctx}"),
        ));
    }
    Ok(())
}

/// A streamed file's size from JavaScript: a whole number of bytes, at least 1 and at most
/// `Number.MAX_SAFE_INTEGER`.
pub fn stream_size(total: f64) -> Result<u64> {
    if !(total >= 1.0 && total.fract() == 0.0 && total <= 9_007_199_254_740_991.0) {
        return Err(EngineError::new(
            ErrorCode::InvalidArgument,
            format!("the GGUF size must be a positive whole number of bytes, got {total}"),
        ));
    }
    Ok(total as u64)
}

/// The model's hyper-parameters, and `max_ctx` checked against them before any weight is
/// read.
fn config(gguf: &Gguf, max_ctx: f64) -> Result<(LlamaConfig, usize)> {
    check_max_ctx(max_ctx)?;
    let config = LlamaConfig::from_gguf(gguf)?;
    let max_ctx = max_ctx as usize;
    check_context(&config, max_ctx)?;
    Ok((config, max_ctx))
}

/// State shared by an engine and the generations it started.
struct Shared {
    /// `None` once the engine has been freed.
    loaded: Option<Loaded>,
}

/// A loaded model: the state behind `WasmEngine`.
pub struct Engine {
    shared: Rc<RefCell<Shared>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A generation: the state behind `WasmGeneration`.
#[derive(Clone)]
pub struct Generation {
    shared: Rc<RefCell<Shared>>,
    id: GenerationId,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn busy() -> EngineError {
    kwaainet_core::Error::Busy.into()
}

fn freed() -> EngineError {
    EngineError::new(ErrorCode::Generation, "the engine was freed")
}

impl Engine {
    /// Parses `bytes` as a GGUF file and loads every weight; the KV cache will hold up to
    /// `max_ctx` positions (a whole number from 1 to the model's training context).
    pub fn load(bytes: &[u8], max_ctx: f64) -> Result<Self> {
        let (gguf, config, max_ctx) = parse(bytes, max_ctx)?;
        let model = Llama::load(&gguf, &mut Cursor::new(bytes), LoadSpec::full(&config))?;
        let rt = Runtime::new(&gguf, Rc::new(model), max_ctx, bytes.len() as u64)?;
        Ok(Self::new(Rt::Cpu(rt)))
    }

    /// [`Engine::load`] from a GGUF that arrived through a [`kwaainet_core::gguf_stream::GgufStream`]:
    /// each tensor's bytes are freed as soon as the model holds them.
    pub fn load_streamed(streamed: Streamed, max_ctx: f64) -> Result<Self> {
        let Streamed {
            gguf,
            mut reader,
            size,
        } = streamed;
        let (config, max_ctx) = config(&gguf, max_ctx)?;
        let model = Llama::load(&gguf, &mut reader, LoadSpec::full(&config))?;
        drop(reader);
        let rt = Runtime::new(&gguf, Rc::new(model), max_ctx, size)?;
        Ok(Self::new(Rt::Cpu(rt)))
    }

    /// [`Engine::load`] onto a WebGPU device (burn's wgpu backend, this crate's CubeCL
    /// kernels). Fails with code `webgpu` when the browser has no usable adapter.
    #[cfg(feature = "webgpu")]
    pub async fn load_webgpu(bytes: &[u8], max_ctx: f64) -> Result<Self> {
        let (gguf, config, max_ctx) = parse(bytes, max_ctx)?;
        let (device, gpu) = Gpu::open().await?;
        let model = BurnLlama::load(
            &gguf,
            &mut Cursor::new(bytes),
            &device,
            LoadSpec::full(&config),
        )?;
        let rt = Runtime::new(&gguf, Rc::new(model), max_ctx, bytes.len() as u64)?;
        Ok(Self::new_gpu(rt, gpu))
    }

    /// [`Engine::load_webgpu`] from a streamed GGUF.
    #[cfg(feature = "webgpu")]
    pub async fn load_webgpu_streamed(streamed: Streamed, max_ctx: f64) -> Result<Self> {
        let Streamed {
            gguf,
            mut reader,
            size,
        } = streamed;
        let (config, max_ctx) = config(&gguf, max_ctx)?;
        let (device, gpu) = Gpu::open().await?;
        let model = BurnLlama::load(&gguf, &mut reader, &device, LoadSpec::full(&config))?;
        drop(reader);
        let rt = Runtime::new(&gguf, Rc::new(model), max_ctx, size)?;
        Ok(Self::new_gpu(rt, gpu))
    }

    #[cfg(feature = "webgpu")]
    fn new_gpu(rt: Runtime<Rc<BurnLlama>>, gpu: Gpu) -> Self {
        let name = gpu.info().adapter.trim();
        Self::with_loaded(Loaded {
            rt: Rt::Gpu(rt),
            adapter: (!name.is_empty()).then(|| name.to_owned()),
            gpu: Some(gpu),
        })
    }

    fn new(rt: Rt) -> Self {
        Self::with_loaded(Loaded {
            rt,
            adapter: None,
            #[cfg(feature = "webgpu")]
            gpu: None,
        })
    }

    fn with_loaded(loaded: Loaded) -> Self {
        Self {
            shared: Rc::new(RefCell::new(Shared {
                loaded: Some(loaded),
            })),
        }
    }

    /// The WebGPU module: why its device was lost, or `None` while it is there (and always
    /// on the CPU).
    pub fn device_lost(&self) -> Option<String> {
        #[cfg(feature = "webgpu")]
        {
            let shared = self.shared.try_borrow().ok()?;
            shared.loaded.as_ref()?.gpu.as_ref()?.lost()
        }
        #[cfg(not(feature = "webgpu"))]
        None
    }

    /// Test support: destroys the WebGPU device under the engine (as a driver reset would).
    /// Fails with `invalid-argument` on the CPU.
    pub fn debug_lose_device(&self) -> Result<()> {
        self.with(|_l| {
            #[cfg(feature = "webgpu")]
            if let Some(g) = &_l.gpu {
                g.destroy();
                return Ok(());
            }
            Err(EngineError::new(
                ErrorCode::InvalidArgument,
                "no WebGPU device to lose",
            ))
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Loaded) -> Result<T>) -> Result<T> {
        let shared = self.shared.try_borrow().map_err(|_| busy())?;
        let loaded = shared
            .loaded
            .as_ref()
            .ok_or_else(|| EngineError::new(ErrorCode::Internal, "the engine was freed"))?;
        f(loaded)
    }

    /// The CPU runtime, for what only the CPU engine does.
    fn with_cpu<T>(&self, f: impl FnOnce(&Runtime<Rc<Llama>>) -> Result<T>) -> Result<T> {
        self.with(|l| match &l.rt {
            Rt::Cpu(r) => f(r),
            #[cfg(feature = "webgpu")]
            Rt::Gpu(_) => Err(EngineError::new(
                ErrorCode::InvalidArgument,
                "not available on the webgpu backend",
            )),
        })
    }

    /// Model and engine facts.
    pub fn info(&self) -> Result<Info> {
        self.with(|l| {
            let (backend, simd128) = match l.rt {
                Rt::Cpu(_) => (Backend::CpuWasm, crate::has_simd128()),
                #[cfg(feature = "webgpu")]
                Rt::Gpu(_) => (Backend::Webgpu, false),
            };
            #[cfg(feature = "webgpu")]
            let gpu = l.gpu.as_ref().map(|g| g.info().clone());
            #[cfg(not(feature = "webgpu"))]
            let gpu = None;
            on_runtime!(&l.rt, r => {
                let c = r.config();
                let kv_bytes = r.kv_cache_bytes() as f64;
                let weight_bytes = r.model().weight_bytes() as f64;
                Ok(Info {
                    limits: EngineLimits {
                        max_ctx_tokens: to_u32(r.max_ctx()),
                        ctx_limit_tokens: to_u32(c.context_length),
                        kv_cache_bytes: kv_bytes,
                        model_bytes: r.model_bytes() as f64,
                        weight_bytes,
                        wasm_memory_bytes: crate::wasm_memory_bytes() as f64,
                        wasm_memory_max_bytes: crate::WASM_MEMORY_MAX_BYTES as f64,
                        simd128,
                    },
                    gpu,
                    backend,
                    adapter: l.adapter.clone(),
                    simd128,
                    engine_version: crate::engine_version_str().to_owned(),
                    architecture: c.arch.clone(),
                    name: r.name().map(str::to_owned),
                    n_layers: to_u32(c.n_layers),
                    n_embd: to_u32(c.dim),
                    n_ctx_train: to_u32(c.context_length),
                    max_ctx: to_u32(r.max_ctx()),
                    vocab_size: to_u32(c.vocab_size),
                    weight_bytes,
                    kv_cache_bytes: kv_bytes,
                    has_chat_template: r.template().is_some(),
                })
            })
        })
    }

    /// Token ids of `text` (no BOS added); `parse_special` turns special-token texts such
    /// as `<|im_start|>` into their ids.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        self.with(|l| on_runtime!(&l.rt, r => Ok(r.tokenize(text, parse_special)?)))
    }

    /// Text of `ids`, special tokens included (the inverse of `tokenize(.., true)`).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.with(|l| on_runtime!(&l.rt, r => Ok(r.detokenize(ids)?)))
    }

    /// `messages` rendered with the model's chat template (ChatML when it has none).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages = chat_messages(messages);
        self.with(|l| on_runtime!(&l.rt, r => Ok(r.render(&messages, add_generation_prompt)?)))
    }

    /// Starts a generation, ending the previous one of this engine (whether or not this
    /// request is valid).
    pub fn start(&self, req: Request) -> Result<Generation> {
        let mut shared = self.shared.try_borrow_mut().map_err(|_| busy())?;
        let loaded = shared
            .loaded
            .as_mut()
            .ok_or_else(|| EngineError::new(ErrorCode::Internal, "the engine was freed"))?;
        on_runtime!(&mut loaded.rt, r => r.end());
        let opts = options(&req);
        let id = with_prompt(&req, |prompt| {
            Ok(on_runtime!(&mut loaded.rt, r => r.start(prompt, &opts)?))
        })?;
        Ok(Generation {
            shared: Rc::clone(&self.shared),
            id,
        })
    }

    /// For conformance tests: the logits after running `tokens` in a fresh KV cache.
    pub fn prompt_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.with_cpu(|r| Ok(r.prompt_logits(tokens)?))
    }

    /// For conformance tests: runs `prompt`, then feeds `forced` one token at a time and
    /// returns the argmax of the logits before each forced token (teacher forcing). Uses
    /// its own KV cache; a running generation is not disturbed.
    pub fn teacher_forced_argmax(&self, prompt: &[u32], forced: &[u32]) -> Result<Vec<u32>> {
        self.with_cpu(|r| Ok(r.teacher_forced_argmax(prompt, forced)?))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // `free()` from JavaScript: release the model and any running generation's cache
        // now, even if a generation object is still referenced.
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.loaded = None;
        }
    }
}

impl Generation {
    /// Runs the prefill on the first call, then up to `max_tokens` decode steps (CPU engine;
    /// the WebGPU one steps with [`Generation::step_async`]).
    pub fn step(&self, max_tokens: u32) -> Result<StepResult> {
        let mut shared = self.shared.try_borrow_mut().map_err(|_| busy())?;
        let loaded = shared.loaded.as_mut().ok_or_else(freed)?;
        match &mut loaded.rt {
            Rt::Cpu(r) => Ok(report(r.step(self.id, max_tokens as usize)?)),
            #[cfg(feature = "webgpu")]
            Rt::Gpu(r) if r.is_running(self.id) => Err(EngineError::new(
                ErrorCode::Internal,
                "a WebGPU generation steps asynchronously",
            )),
            #[cfg(feature = "webgpu")]
            Rt::Gpu(_) => Err(kwaainet_core::Error::Ended.into()),
        }
    }

    /// [`Generation::step`] for the WebGPU engine (the CPU one runs synchronously). While a
    /// step awaits the device, other calls on this generation fail as busy; a `start()` in
    /// the meantime ends it.
    #[cfg(feature = "webgpu")]
    pub async fn step_async(&self, max_tokens: u32) -> Result<StepResult> {
        let (mut generator, tokenizer) = {
            let mut shared = self.shared.try_borrow_mut().map_err(|_| busy())?;
            let loaded = shared.loaded.as_mut().ok_or_else(freed)?;
            if let Some(why) = loaded.gpu.as_ref().and_then(Gpu::lost) {
                return Err(device_lost(&why));
            }
            match &mut loaded.rt {
                Rt::Gpu(r) => (r.take(self.id)?, std::sync::Arc::clone(r.tokenizer())),
                Rt::Cpu(_) => {
                    drop(shared);
                    return self.step(max_tokens);
                }
            }
        };
        let result = generator
            .run_steps_async(&tokenizer, max_tokens as usize)
            .await
            .map(report)
            .map_err(EngineError::from);
        // Put the generation back unless it was replaced or the engine freed meanwhile.
        let mut shared = self.shared.try_borrow_mut().map_err(|_| busy())?;
        let loaded = shared.loaded.as_mut().ok_or_else(freed)?;
        // A step that failed because the device went away says so.
        let result = match (result, loaded.gpu.as_ref().and_then(Gpu::lost)) {
            (Err(_), Some(why)) => Err(device_lost(&why)),
            (r, _) => r,
        };
        match &mut loaded.rt {
            Rt::Gpu(r) => r.restore(self.id, generator)?,
            Rt::Cpu(_) => return Err(kwaainet_core::Error::Ended.into()),
        }
        result
    }
}

#[cfg(feature = "webgpu")]
fn device_lost(why: &str) -> EngineError {
    EngineError::new(ErrorCode::Webgpu, format!("device lost ({why})"))
}

/// A core [`StepBatch`] as `step()` reports it.
pub(crate) fn report(a: StepBatch) -> StepResult {
    StepResult {
        text: a.text,
        tokens: a.tokens,
        done: a.finish.is_some(),
        finish_reason: a.finish.map(|r| match r {
            FinishReason::Length => Finish::Length,
            FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
        }),
        prompt_tokens: to_u32(a.prompt_tokens),
        completion_tokens: to_u32(a.completion_tokens),
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Calls `f` with the request's prompt: exactly one of its `prompt`, `messages`, `tokens`.
pub(crate) fn with_prompt<T>(req: &Request, f: impl FnOnce(Prompt<'_>) -> Result<T>) -> Result<T> {
    match (&req.prompt, &req.messages, &req.tokens) {
        (Some(p), None, None) => f(Prompt::Text(p)),
        (None, Some(m), None) => f(Prompt::Chat(&chat_messages(m))),
        (None, None, Some(t)) => f(Prompt::Tokens(t)),
        _ => Err(EngineError::new(
            ErrorCode::InvalidArgument,
            "give exactly one of prompt, messages or tokens",
        )),
    }
}

fn chat_messages(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.as_str(), m.content.as_str()))
        .collect()
}

/// The request's sampling and length options (the runtime validates them when the
/// generation starts).
pub(crate) fn options(req: &Request) -> GenerateOptions {
    let sampler = SamplerConfig {
        temperature: req.temperature.unwrap_or(0.0),
        top_k: req.top_k.unwrap_or(0) as usize,
        top_p: req.top_p.unwrap_or(1.0),
        repetition_penalty: req.repeat_penalty.unwrap_or(1.0),
        seed: req.seed.unwrap_or(0),
        ..SamplerConfig::default()
    };
    GenerateOptions {
        max_tokens: req.max_tokens.unwrap_or(256) as usize,
        sampler,
        stop: req.stop.clone().unwrap_or_default(),
        ignore_eos: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_bytes_and_bad_sizes_are_errors() {
        let e = Engine::load(b"GGUF\x03\x00", 64.0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Gguf, "{e}");
        let e = Engine::load(b"not a model at all", 64.0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Gguf, "{e}");
        for bad in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                Engine::load(b"", bad).unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        for bad in [0.0, -1.0, 0.5, f64::NAN, f64::INFINITY, 2f64.powi(53)] {
            assert_eq!(
                stream_size(bad).unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        assert_eq!(stream_size(4096.0).unwrap(), 4096);
    }
}
