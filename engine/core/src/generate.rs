//! The generation loop: prefill, sample, stream text, stop on end-of-generation tokens,
//! stop strings or the token budget.

use std::ops::Deref;

use crate::models::llama::cpu::Llama;
use crate::models::llama::{SpanCache, SpanModel};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// Something that turns tokens into next-token logits while keeping its own context:
/// the CPU model with its KV cache, or another backend.
pub trait Session {
    /// Runs `tokens` after the positions already processed; returns the logits of the last.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Positions processed so far.
    fn len(&self) -> usize;
    /// True before the first token.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Most positions this session can hold.
    fn max_ctx(&self) -> usize;
}

/// A session of any [`SpanModel`] over all of its blocks: its cache, and the model it runs.
///
/// `P` is how the session holds the model: a borrow (`&Llama`) for a scoped session, or a
/// shared owner (`Rc<BurnLlama>`, `Arc<Llama>`) for one that must outlive the caller's frame,
/// as the browser engine's generation objects do. Every model is an [`AsyncSession`]; the CPU
/// model, whose results are ready at once, is also a [`Session`].
pub struct SpanSession<P: Deref<Target: SpanModel>> {
    model: P,
    cache: <P::Target as SpanModel>::Cache,
}

/// A session of the CPU model ([`Session`]: synchronous).
pub type CpuSession<P> = SpanSession<P>;

impl<P: Deref<Target: SpanModel>> std::fmt::Debug for SpanSession<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanSession")
            .field("spec", self.model.spec())
            .field("len", &self.cache.len())
            .field("max_ctx", &self.cache.max_ctx())
            .finish()
    }
}

impl<P: Deref<Target: SpanModel>> SpanSession<P> {
    /// A fresh session holding up to `max_ctx` positions (at most the training context).
    pub fn new(model: P, max_ctx: usize) -> Result<Self> {
        let cache = model.new_cache(0..model.config().n_layers, max_ctx)?;
        Ok(Self { model, cache })
    }

    /// The KV cache (e.g. to truncate it for re-use of a shared prefix).
    pub fn cache_mut(&mut self) -> &mut <P::Target as SpanModel>::Cache {
        &mut self.cache
    }

    /// Runs `tokens` after the cached positions; resolves to the logits of the last one.
    pub async fn forward_async(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to run".into()));
        }
        let h = self.model.embed(tokens)?;
        let h = self.model.forward_span(h, &mut self.cache)?;
        self.model.last_logits(h).await
    }
}

impl<P: Deref<Target = Llama>> Session for SpanSession<P> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.forward(tokens, &mut self.cache)
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn max_ctx(&self) -> usize {
        self.cache.max_ctx()
    }
}

impl<P: Deref<Target: SpanModel>> AsyncSession for SpanSession<P> {
    async fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_async(tokens).await
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn max_ctx(&self) -> usize {
        self.cache.max_ctx()
    }
}

/// A [`Session`] whose forward pass completes later: the GPU model in a browser, where
/// reading results back from the device is asynchronous. Drive it with
/// [`Generator::step_async`].
pub trait AsyncSession {
    /// Runs `tokens` after the positions already processed; resolves to the logits of the last.
    fn forward(&mut self, tokens: &[u32]) -> impl std::future::Future<Output = Result<Vec<f32>>>;
    /// Positions processed so far.
    fn len(&self) -> usize;
    /// True before the first token.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Most positions this session can hold.
    fn max_ctx(&self) -> usize;
}

impl<S: Session + ?Sized> Session for Box<S> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        (**self).forward(tokens)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn max_ctx(&self) -> usize {
        (**self).max_ctx()
    }
}

impl<S: Session + ?Sized> Session for &mut S {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        (**self).forward(tokens)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn max_ctx(&self) -> usize {
        (**self).max_ctx()
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampler: SamplerConfig,
    /// Generation ends before the first occurrence of any of these (not included in the text).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (for benchmarks and reference runs).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token, or a stop string appeared.
    Stop,
    /// `max_tokens` or the context size was reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids (including a final end-of-generation token, if any).
    pub tokens: Vec<u32>,
    /// New text, without special tokens and cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
}

/// One step reported to the caller's callback.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The prompt has been processed.
    PrefillDone,
    /// A token was produced; `text` is the newly final text (may be empty while a
    /// multi-byte character or a possible stop string is incomplete).
    Token {
        /// Token id.
        id: u32,
        /// Text that became final with this token.
        text: &'a str,
    },
}

/// What one [`Generator::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The prompt has been processed.
    Prefilled,
    /// A token was produced; `text` is the newly final text (may be empty while a
    /// multi-byte character or a possible stop string is incomplete).
    Token {
        /// Token id.
        id: u32,
        /// Text that became final with this token.
        text: String,
    },
    /// Generation is over. `text` is what was still held back (an incomplete character,
    /// or the start of a stop string that never completed); later steps return this again
    /// with empty text.
    Finished {
        /// Final text released at the end.
        text: String,
        /// Why it ended.
        reason: FinishReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The prompt has not been run yet.
    Prefill,
    /// Sampling tokens; `feed` is the last sampled token, not yet run through the model.
    Decode { feed: Option<u32> },
    /// Over; `flush` says whether held-back text is still to be released.
    Ending { reason: FinishReason, flush: bool },
    /// Over and flushed.
    Done(FinishReason),
}

/// A generation that runs one step at a time and owns everything it needs between steps
/// (the session, sampler, stream decoder and stop matcher), so a caller can interleave it
/// with other work: the browser engine yields to its event loop between steps.
///
/// [`generate`] is the same loop run to the end.
#[derive(Debug)]
pub struct Generator<S> {
    session: S,
    /// Positions the session holds (as of the last model call) and can hold.
    ctx_len: usize,
    max_ctx: usize,
    sampler: Sampler,
    max_tokens: usize,
    ignore_eos: bool,
    prompt: Vec<u32>,
    history: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    logits: Vec<f32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    phase: Phase,
}

impl<S: Session> Generator<S> {
    /// A generation of up to `opts.max_tokens` tokens after `prompt`, checked up front:
    /// the prompt must be non-empty and fit the session's context, the sampler settings
    /// valid. Nothing runs until the first [`step`](Self::step).
    pub fn new(session: S, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
        let (len, max) = (session.len(), session.max_ctx());
        Self::with_context(session, len, max, prompt, opts)
    }

    /// Runs one step: the prefill first, then one token per call, then the end.
    ///
    /// A model error leaves the generation finished (later steps report
    /// [`FinishReason::Cancelled`]) rather than half-updated.
    pub fn step(&mut self, tokenizer: &Tokenizer) -> Result<Step> {
        let logits = match self.pending() {
            Some(tokens) => self.session.forward(&tokens).map(Some),
            None => Ok(None),
        };
        self.finish_step(tokenizer, logits)
    }

    /// Runs the prefill when it has not run yet, then up to `max_tokens` decode steps, then
    /// the end when nothing is left to compute (rather than on the next call): what a host
    /// that streams in chunks runs per chunk. `run_steps(.., 0)` on a new generation runs
    /// only the prefill.
    pub fn run_steps(&mut self, tokenizer: &Tokenizer, max_tokens: usize) -> Result<StepBatch> {
        let mut out = StepBatch::start(self);
        if !self.is_prefilled() {
            out.push(self.step(tokenizer)?);
        }
        let mut n = 0;
        while n < max_tokens && self.finish_reason().is_none() {
            n += out.push(self.step(tokenizer)?);
        }
        if self.is_ending() {
            out.push(self.step(tokenizer)?);
        }
        Ok(out.end(self))
    }
}

impl<S: AsyncSession> Generator<S> {
    /// [`Generator::new`] for an [`AsyncSession`].
    pub fn new_async(session: S, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
        let (len, max) = (session.len(), session.max_ctx());
        Self::with_context(session, len, max, prompt, opts)
    }

    /// [`Generator::step`] for an [`AsyncSession`].
    pub async fn step_async(&mut self, tokenizer: &Tokenizer) -> Result<Step> {
        let logits = match self.pending() {
            Some(tokens) => self.session.forward(&tokens).await.map(Some),
            None => Ok(None),
        };
        self.finish_step(tokenizer, logits)
    }

    /// [`Generator::run_steps`] for an [`AsyncSession`].
    pub async fn run_steps_async(
        &mut self,
        tokenizer: &Tokenizer,
        max_tokens: usize,
    ) -> Result<StepBatch> {
        let mut out = StepBatch::start(self);
        if !self.is_prefilled() {
            out.push(self.step_async(tokenizer).await?);
        }
        let mut n = 0;
        while n < max_tokens && self.finish_reason().is_none() {
            n += out.push(self.step_async(tokenizer).await?);
        }
        if self.is_ending() {
            out.push(self.step_async(tokenizer).await?);
        }
        Ok(out.end(self))
    }
}

/// What one [`Generator::run_steps`] call produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// The text that became final during the call.
    pub text: String,
    /// The tokens sampled during the call.
    pub tokens: Vec<u32>,
    /// Set once the generation is over.
    pub finish: Option<FinishReason>,
    /// Tokens generated so far, this call's included.
    pub completion_tokens: usize,
    /// The prompt's length.
    pub prompt_tokens: usize,
    /// How many of the generation's tokens came before this call.
    before: usize,
}

impl StepBatch {
    fn start<S>(g: &Generator<S>) -> Self {
        Self {
            before: g.tokens().len(),
            ..Self::default()
        }
    }

    /// Adds a step's text; counts 1 for a token.
    fn push(&mut self, step: Step) -> usize {
        match step {
            Step::Token { text, .. } => {
                self.text.push_str(&text);
                1
            }
            Step::Finished { text, .. } => {
                self.text.push_str(&text);
                0
            }
            Step::Prefilled => 0,
        }
    }

    fn end<S>(mut self, g: &Generator<S>) -> Self {
        self.tokens = g.tokens()[self.before..].to_vec();
        self.finish = g.finish_reason();
        self.completion_tokens = g.tokens().len();
        self.prompt_tokens = g.prompt_tokens();
        self
    }
}

/// What the model must run before a generation driven from outside can take its next step
/// ([`Generator::needs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs<'a> {
    /// The whole prompt (a caller may run it in chunks: only the last row's logits count).
    Prompt(&'a [u32]),
    /// The token sampled last.
    Token(u32),
    /// No model work: the next step samples from logits already held, or ends.
    Nothing,
}

impl Generator<()> {
    /// A generation whose model calls the caller makes (a batch of sequences sharing
    /// passes over the weights): ask [`Generator::needs`], run it, pass the last row's
    /// logits to [`Generator::step_with`]. Positions are counted against `max_ctx`.
    pub fn detached(prompt: &[u32], opts: &GenerateOptions, max_ctx: usize) -> Result<Self> {
        Self::with_context((), 0, max_ctx, prompt, opts)
    }
}

impl<S> Generator<S> {
    /// What the model must run before the next step.
    pub fn needs(&self) -> Needs<'_> {
        match self.phase {
            Phase::Prefill => Needs::Prompt(&self.prompt),
            Phase::Decode { feed: Some(id) } => Needs::Token(id),
            _ => Needs::Nothing,
        }
    }

    /// Takes the next step with the logits of what [`Self::needs`] asked for (`None` when
    /// it asked for nothing). Like [`Generator::step`], an error leaves it finished.
    pub fn step_with(&mut self, tokenizer: &Tokenizer, logits: Option<Vec<f32>>) -> Result<Step> {
        self.finish_step(tokenizer, Ok(logits))
    }

    /// The logits the last token was sampled from (empty before the first).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    fn with_context(
        session: S,
        ctx_len: usize,
        max_ctx: usize,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        if ctx_len + prompt.len() > max_ctx {
            return Err(Error::ContextFull {
                needed: ctx_len + prompt.len(),
                max: max_ctx,
            });
        }
        Ok(Self {
            sampler: Sampler::new(opts.sampler.clone())?,
            session,
            ctx_len,
            max_ctx,
            max_tokens: opts.max_tokens,
            ignore_eos: opts.ignore_eos,
            prompt: prompt.to_vec(),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            text: String::new(),
            logits: Vec::new(),
            decoder: StreamDecoder::new(true),
            stops: StopMatcher::new(&opts.stop),
            phase: Phase::Prefill,
        })
    }

    /// Tokens the next step must run through the model, if any.
    fn pending(&self) -> Option<Vec<u32>> {
        match self.phase {
            Phase::Prefill => Some(self.prompt.clone()),
            Phase::Decode { feed: Some(id) } => Some(vec![id]),
            _ => None,
        }
    }

    /// The rest of a step once the model has run [`Self::pending`]'s tokens (`logits` is
    /// `Ok(None)` when there were none). An error leaves the generation finished (later steps
    /// report [`FinishReason::Cancelled`]) rather than half-updated.
    fn finish_step(
        &mut self,
        tokenizer: &Tokenizer,
        logits: Result<Option<Vec<f32>>>,
    ) -> Result<Step> {
        let out = logits.and_then(|l| self.advance(tokenizer, l));
        if out.is_err() {
            self.phase = Phase::Done(FinishReason::Cancelled);
        }
        out
    }

    fn advance(&mut self, tokenizer: &Tokenizer, logits: Option<Vec<f32>>) -> Result<Step> {
        match self.phase {
            Phase::Prefill => {
                self.logits = logits.ok_or_else(|| Error::Backend("no prefill logits".into()))?;
                self.ctx_len += self.prompt.len();
                self.phase = Phase::Decode { feed: None };
                Ok(Step::Prefilled)
            }
            Phase::Decode { feed } => {
                if feed.is_some() {
                    self.logits =
                        logits.ok_or_else(|| Error::Backend("no decode logits".into()))?;
                    self.ctx_len += 1;
                }
                self.decode_one(tokenizer)
            }
            Phase::Ending { reason, flush } => {
                let mut reason = reason;
                let mut text = String::new();
                if flush {
                    // Release text held back for a possible stop string or an incomplete
                    // character; the tail may itself complete a stop string.
                    let tail = self.decoder.finish();
                    let (ready, hit) = self.stops.push(&tail);
                    text = ready;
                    if hit {
                        reason = FinishReason::Stop;
                    } else {
                        text.push_str(&self.stops.flush());
                    }
                }
                self.text.push_str(&text);
                self.phase = Phase::Done(reason);
                Ok(Step::Finished { text, reason })
            }
            Phase::Done(reason) => Ok(Step::Finished {
                text: String::new(),
                reason,
            }),
        }
    }

    fn decode_one(&mut self, tokenizer: &Tokenizer) -> Result<Step> {
        if self.tokens.len() >= self.max_tokens {
            self.phase = Phase::Ending {
                reason: FinishReason::Length,
                flush: true,
            };
            return self.advance(tokenizer, None);
        }
        let id = self.sampler.sample(&self.logits, &self.history)?;
        self.tokens.push(id);
        self.history.push(id);
        if !self.ignore_eos && tokenizer.is_eog(id) {
            self.phase = Phase::Ending {
                reason: FinishReason::Stop,
                flush: true,
            };
            return self.advance(tokenizer, None);
        }
        let piece = self.decoder.push(tokenizer, id);
        let (text, hit) = self.stops.push(&piece);
        self.text.push_str(&text);
        self.phase = if hit {
            Phase::Ending {
                reason: FinishReason::Stop,
                flush: false,
            }
        } else if self.tokens.len() >= self.max_tokens || self.ctx_len >= self.max_ctx {
            Phase::Ending {
                reason: FinishReason::Length,
                flush: true,
            }
        } else {
            Phase::Decode { feed: Some(id) }
        };
        Ok(Step::Token { id, text })
    }

    /// True once the prompt has run.
    pub fn is_prefilled(&self) -> bool {
        self.phase != Phase::Prefill
    }

    /// True when the next step only releases held-back text and reports the end (no
    /// model work).
    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::Ending { .. })
    }

    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        match self.phase {
            Phase::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Stops here: later steps report [`FinishReason::Cancelled`].
    pub fn cancel(&mut self) {
        self.phase = Phase::Done(FinishReason::Cancelled);
    }

    /// Prompt length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    /// Tokens produced so far (including a final end-of-generation token, if any).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Text produced so far (final text only: nothing still held back).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The session (e.g. to reuse its cache after the generation).
    pub fn session(&self) -> &S {
        &self.session
    }

    /// What was produced, as [`generate`] reports it.
    pub fn into_generation(self) -> Generation {
        Generation {
            finish: self.finish_reason().unwrap_or(FinishReason::Cancelled),
            prompt_tokens: self.prompt.len(),
            tokens: self.tokens,
            text: self.text,
        }
    }
}

/// Generates a continuation of `prompt` in `session`.
///
/// `on_event` sees progress as it happens; returning `false` cancels.
pub fn generate(
    session: &mut impl Session,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event<'_>) -> bool,
) -> Result<Generation> {
    let mut g = Generator::new(session, prompt, opts)?;
    loop {
        let go_on = match g.step(tokenizer)? {
            Step::Prefilled => on_event(Event::PrefillDone),
            Step::Token { id, text } => on_event(Event::Token { id, text: &text }),
            Step::Finished { text, .. } => {
                if !text.is_empty() {
                    let id = g.tokens().last().copied().unwrap_or(0);
                    on_event(Event::Token { id, text: &text });
                }
                return Ok(g.into_generation());
            }
        };
        if !go_on {
            g.cancel();
            return Ok(g.into_generation());
        }
    }
}

/// Streams text while holding back any suffix that could still become a stop string.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    done: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            done: false,
        }
    }

    /// Adds `piece`; returns the text that is now final and whether a stop string was hit
    /// (the returned text then ends just before it, and later input is ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.done = true;
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Releases whatever is held back (generation ended without a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut text = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            text.push_str(&t);
            if hit {
                return (text, true);
            }
        }
        text.push_str(&m.flush());
        (text, false)
    }

    #[test]
    fn stop_strings_split_across_pieces() {
        assert_eq!(
            run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run(&["\nUser:"], &["Hello", "\nUs", "ual"]),
            ("Hello\nUsual".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["b", "abc"], &["xab", "c"]), ("xa".into(), true));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    #[test]
    fn held_back_text_is_only_a_possible_prefix() {
        let stops = vec!["END".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("the EN"), ("the ".into(), false));
        assert_eq!(m.push("D"), (String::new(), true));
        assert_eq!(m.push("more"), (String::new(), true));
    }
}
