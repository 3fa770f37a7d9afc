//! A loaded model for a host that runs one generation at a time, as a browser engine does:
//! its tokenizer and chat template, the context it was given, prompt building, and the one
//! running generation with its life cycle (a new `start` ends the previous one; a step of an
//! ended generation is an error, never a step of another one).
//!
//! The same [`Runtime`] drives every [`SpanModel`]: the CPU model steps synchronously
//! ([`Runtime::step`]); a model whose results arrive asynchronously (a GPU that reads back
//! later) is stepped by taking its generator out ([`Runtime::take`]), awaiting
//! [`Generator::run_steps_async`], and putting it back ([`Runtime::restore`]), so that a
//! host keeping the runtime in a `RefCell` holds no borrow across the await.

use std::ops::Deref;
use std::sync::Arc;

use crate::chat::{self, ChatMessage, ChatTemplate, Prompt};
use crate::generate::{GenerateOptions, Generator, Session, SpanSession, StepBatch};
use crate::gguf::Gguf;
use crate::{Error, Llama, LlamaConfig, Result, SpanModel, Tokenizer};

/// Which generation of a [`Runtime`] a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GenerationId(u64);

/// A running generation of a [`Runtime`] over the model held as `P`.
pub type RuntimeGenerator<P> = Generator<SpanSession<P>>;

/// One loaded model and at most one running generation (see the [module](self) docs).
pub struct Runtime<P: Deref<Target: SpanModel>> {
    model: P,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    name: Option<String>,
    max_ctx: usize,
    model_bytes: u64,
    active: Option<Active<P>>,
    next_id: u64,
}

/// The running generation: `None` while a host has taken it out to await a step.
struct Active<P: Deref<Target: SpanModel>> {
    id: GenerationId,
    generator: Option<Box<RuntimeGenerator<P>>>,
}

impl<P: Deref<Target: SpanModel>> std::fmt::Debug for Runtime<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.name)
            .field("max_ctx", &self.max_ctx)
            .field("active", &self.active.as_ref().map(|a| a.id))
            .finish_non_exhaustive()
    }
}

/// Checks a requested context against the model's: `max_ctx` positions, from 1 to the
/// training context. A host calls it before loading the weights, so that a bad request
/// fails before gigabytes are read.
pub fn check_context(config: &LlamaConfig, max_ctx: usize) -> Result<()> {
    if max_ctx == 0 {
        return Err(Error::InvalidArgument(
            "maxCtx must be at least 1 position".into(),
        ));
    }
    if max_ctx > config.context_length {
        return Err(Error::InvalidArgument(format!(
            "maxCtx {max_ctx} exceeds the model's training context of {}",
            config.context_length
        )));
    }
    Ok(())
}

impl<P: Deref<Target: SpanModel> + Clone> Runtime<P> {
    /// A runtime for `model`, loaded whole from `gguf` (whose file has `model_bytes` bytes),
    /// with generations of up to `max_ctx` positions (checked by [`check_context`]).
    pub fn new(gguf: &Gguf, model: P, max_ctx: usize, model_bytes: u64) -> Result<Self> {
        check_context(model.config(), max_ctx)?;
        let layers = model.config().n_layers;
        let spec = model.spec();
        if !(spec.embed && spec.head && spec.blocks == (0..layers)) {
            return Err(Error::InvalidArgument(format!(
                "a runtime generates with the whole model; this one holds blocks {:?} \
                 (embedding: {}, head: {})",
                spec.blocks, spec.embed, spec.head
            )));
        }
        let name = gguf
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Ok(Self {
            tokenizer: Arc::new(Tokenizer::from_gguf(gguf)?),
            template: ChatTemplate::from_gguf(gguf)?,
            model,
            name,
            max_ctx,
            model_bytes,
            active: None,
            next_id: 0,
        })
    }

    /// The model.
    pub fn model(&self) -> &P {
        &self.model
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// The tokenizer, shared so that a step awaiting the device can hold it.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The GGUF's chat template, if it ships one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// `general.name` from the GGUF.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Most positions a generation holds.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// The GGUF file's size in bytes.
    pub fn model_bytes(&self) -> u64 {
        self.model_bytes
    }

    /// Bytes of the KV cache of one generation at `max_ctx` positions (f32 keys and values).
    pub fn kv_cache_bytes(&self) -> usize {
        let c = self.config();
        2 * c.n_layers * self.max_ctx * c.kv_dim() * size_of::<f32>()
    }

    /// Token ids of `text` (no BOS added); `parse_special` turns special-token texts such as
    /// `<|im_start|>` into their ids.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, parse_special)
    }

    /// Text of `ids`, special tokens included (the inverse of `tokenize(.., true)`); an id
    /// outside the vocabulary is an error.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.check_ids(ids)?;
        Ok(self.tokenizer.decode(ids, false))
    }

    /// `messages` rendered with the model's chat template (ChatML when it has none).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        chat::render(self.template.as_ref(), messages, add_generation_prompt)
    }

    /// The prompt's token ids, built by [`chat::prompt_ids`] as every host builds them.
    pub fn prompt_ids(&self, prompt: Prompt<'_>) -> Result<Vec<u32>> {
        chat::prompt_ids(&self.tokenizer, self.template.as_ref(), prompt)
    }

    /// Starts a generation, ending the previous one whether or not this request is valid
    /// (its KV cache is released before the new one is allocated). The sampler settings and
    /// the prompt's length are checked before the new cache is allocated (the generator
    /// checks them again, cheaply). Nothing runs until the first step.
    pub fn start(&mut self, prompt: Prompt<'_>, opts: &GenerateOptions) -> Result<GenerationId> {
        self.active = None;
        opts.sampler.validate()?;
        let prompt = self.prompt_ids(prompt)?;
        if prompt.len() > self.max_ctx {
            return Err(Error::ContextFull {
                needed: prompt.len(),
                max: self.max_ctx,
            });
        }
        let session = SpanSession::new(self.model.clone(), self.max_ctx)?;
        let generator = Generator::new_async(session, &prompt, opts)?;
        let id = GenerationId(self.next_id);
        self.next_id += 1;
        self.active = Some(Active {
            id,
            generator: Some(Box::new(generator)),
        });
        Ok(id)
    }

    /// Ends the running generation, if any, and releases its KV cache.
    pub fn end(&mut self) {
        self.active = None;
    }

    /// Whether `id` is the running generation.
    pub fn is_running(&self, id: GenerationId) -> bool {
        self.active.as_ref().is_some_and(|a| a.id == id)
    }

    /// Takes generation `id` out to step it while the runtime is free for other calls;
    /// [`restore`](Self::restore) puts it back. Errors: [`Error::Ended`] when a newer start
    /// replaced it, [`Error::Busy`] when it is already out.
    pub fn take(&mut self, id: GenerationId) -> Result<Box<RuntimeGenerator<P>>> {
        match &mut self.active {
            Some(a) if a.id == id => a.generator.take().ok_or(Error::Busy),
            _ => Err(Error::Ended),
        }
    }

    /// Puts back a generation taken with [`take`](Self::take). If a newer start replaced it
    /// meanwhile, the generation is dropped and the answer is [`Error::Ended`].
    pub fn restore(&mut self, id: GenerationId, generator: Box<RuntimeGenerator<P>>) -> Result<()> {
        match &mut self.active {
            Some(a) if a.id == id && a.generator.is_none() => {
                a.generator = Some(generator);
                Ok(())
            }
            _ => Err(Error::Ended),
        }
    }

    fn running(&mut self, id: GenerationId) -> Result<&mut RuntimeGenerator<P>> {
        match &mut self.active {
            Some(a) if a.id == id => a.generator.as_deref_mut().ok_or(Error::Busy),
            _ => Err(Error::Ended),
        }
    }
}

/// What only the CPU model does: synchronous steps, and the conformance helpers.
impl<P: Deref<Target = Llama> + Clone> Runtime<P> {
    /// Steps generation `id`: the prefill on the first call, then up to `max_tokens` decode
    /// steps ([`Generator::run_steps`]).
    pub fn step(&mut self, id: GenerationId, max_tokens: usize) -> Result<StepBatch> {
        let tokenizer = Arc::clone(&self.tokenizer);
        self.running(id)?.run_steps(&tokenizer, max_tokens)
    }

    /// The logits after running `tokens` in a fresh KV cache (a running generation is not
    /// disturbed).
    pub fn prompt_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("tokens is empty".into()));
        }
        SpanSession::new(self.model.clone(), tokens.len())?.forward(tokens)
    }

    /// Runs `prompt`, then feeds `forced` one token at a time and returns the argmax of the
    /// logits before each forced token (teacher forcing), in a KV cache of its own.
    pub fn teacher_forced_argmax(&self, prompt: &[u32], forced: &[u32]) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        let mut session = SpanSession::new(self.model.clone(), prompt.len() + forced.len())?;
        let mut logits = session.forward(prompt)?;
        let mut out = Vec::with_capacity(forced.len());
        for &t in forced {
            out.push(argmax(&logits));
            logits = session.forward(&[t])?;
        }
        Ok(out)
    }
}

/// The first index of the largest value.
fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}
