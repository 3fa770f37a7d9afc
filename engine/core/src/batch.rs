//! Continuous batching: many generations share each pass over the weights.
//!
//! Every [`Batcher::step`] runs one batched forward pass ([`Llama::forward_batch`]): one
//! row for each sequence that is decoding, then prompt chunks of sequences still in their
//! prefill, up to [`BatchConfig::step_tokens`] rows in all, so a long prompt is spread over
//! several steps instead of stalling the others. Sequences join between steps
//! ([`Batcher::add`]) and leave when they finish or are cancelled, freeing their cache.
//! Each sequence is an ordinary [`Generator`] whose model calls the batch makes: sampling,
//! stop strings and text streaming are the single-sequence ones, and so are the tokens.
//!
//! Memory is budgeted in cache positions: a sequence reserves its prompt plus its token
//! budget when it joins (its cache never grows past that), and [`Batcher::can_admit`]
//! says whether a new one fits.

use std::sync::Arc;

use crate::generate::{FinishReason, GenerateOptions, Generator, Needs, Step};
use crate::models::llama::cpu::{BatchSeq, KvCache, Llama};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Most alternatives a token's log-probabilities may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Rows of a prompt chunk whose every row needs logits (prompt log-probabilities):
/// bounds the logits held at once to this many vocabulary-sized rows.
const PROMPT_LOGPROB_ROWS: usize = 64;

/// Limits of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most sequences at once.
    pub max_seqs: usize,
    /// Most rows (tokens) one pass runs; at least `max_seqs`, so every decoding sequence
    /// gets its token each step.
    pub step_tokens: usize,
    /// Most positions (prompt + generated) one sequence may hold.
    pub max_ctx: usize,
    /// Cache positions all sequences together may reserve.
    pub kv_budget: usize,
}

impl BatchConfig {
    /// Rejects limits that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.max_seqs == 0 || self.max_ctx == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one sequence and one position".into(),
            ));
        }
        if self.step_tokens < self.max_seqs {
            return Err(Error::InvalidArgument(format!(
                "{} tokens per step cannot serve {} sequences",
                self.step_tokens, self.max_seqs
            )));
        }
        if self.kv_budget < self.max_ctx {
            return Err(Error::InvalidArgument(format!(
                "a cache budget of {} positions cannot hold one context of {}",
                self.kv_budget, self.max_ctx
            )));
        }
        Ok(())
    }
}

/// One generation to run in the batch.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// Prompt token ids (not empty).
    pub prompt: Vec<u32>,
    /// Token budget, sampling, stop strings.
    pub opts: GenerateOptions,
    /// Report each new token's log-probability and this many alternatives (≤ 20).
    pub top_logprobs: Option<usize>,
    /// Report every prompt token's log-probability (the first has none), with
    /// `top_logprobs` alternatives.
    pub prompt_logprobs: bool,
}

impl BatchRequest {
    /// Cache positions the request reserves: its prompt and its token budget.
    pub fn positions(&self, max_ctx: usize) -> usize {
        self.prompt
            .len()
            .saturating_add(self.opts.max_tokens)
            .min(max_ctx)
    }
}

/// A token's log-probability under the model (log-softmax of the raw logits, before
/// penalties and temperature), with the most likely alternatives at that position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced for one sequence.
#[derive(Debug)]
pub enum BatchEvent {
    /// The prompt has run (`logprobs` when asked: one per prompt token, the first `None`).
    Prefilled {
        /// The sequence.
        id: u64,
        /// Prompt log-probabilities, if asked for.
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    },
    /// A new token.
    Token {
        /// The sequence.
        id: u64,
        /// Token id.
        token: u32,
        /// Text that became final with it (may be empty).
        text: String,
        /// Its log-probability, if asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The sequence ended and left the batch.
    Finished {
        /// The sequence.
        id: u64,
        /// Text released at the end.
        text: String,
        /// Why.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (an end-of-generation token included).
        completion_tokens: usize,
        /// The end-of-generation token that ended it, if one did (never sent as a
        /// [`BatchEvent::Token`]).
        eog: Option<u32>,
    },
    /// The sequence failed and left the batch.
    Failed {
        /// The sequence.
        id: u64,
        /// Why.
        error: Error,
    },
}

#[derive(Debug)]
struct Seq {
    id: u64,
    generator: Generator<()>,
    cache: KvCache,
    /// Prompt tokens already run.
    fed: usize,
    reserved: usize,
    /// Tokens reported as [`BatchEvent::Token`].
    streamed: usize,
    top_logprobs: Option<usize>,
    /// Prompt log-probabilities gathered so far, when asked for.
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
}

impl Seq {
    /// Whether the last token is an end-of-generation one that was never streamed.
    fn eog_ended(&self) -> bool {
        self.streamed < self.generator.tokens().len()
    }
}

/// Sequences decoding together over one model.
#[derive(Debug)]
pub struct Batcher {
    model: Arc<Llama>,
    cfg: BatchConfig,
    seqs: Vec<Seq>,
    reserved: usize,
}

/// One sequence's part of a planned pass.
struct Part {
    seq: usize,
    tokens: Vec<u32>,
    /// Rows of a prompt longer than one token (however it is chunked: see
    /// [`BatchSeq::prompt`]).
    prompt: bool,
    /// Logits wanted: every row (prompt log-probabilities) or the last (decode, or the
    /// chunk that completes a prompt), or none (an early prompt chunk).
    logits: Rows,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    None,
    Last,
    All,
}

impl Batcher {
    /// An empty batch over `model`, which must be loaded whole.
    pub fn new(model: Arc<Llama>, cfg: BatchConfig) -> Result<Self> {
        cfg.validate()?;
        let spec = model.spec();
        if !(spec.embed && spec.head && spec.blocks == (0..model.config().n_layers)) {
            return Err(Error::InvalidArgument(
                "a batch runs a whole model (embedding, every block, head)".into(),
            ));
        }
        Ok(Self {
            model,
            cfg,
            seqs: Vec::new(),
            reserved: 0,
        })
    }

    /// The limits.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Sequences in the batch.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    /// Cache positions reserved by the sequences in the batch.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Bytes the caches hold now.
    pub fn cache_bytes(&self) -> usize {
        self.seqs.iter().map(|s| s.cache.n_bytes()).sum()
    }

    /// Whether a sequence reserving `positions` fits now (a free slot and cache budget).
    pub fn can_admit(&self, positions: usize) -> bool {
        self.seqs.len() < self.cfg.max_seqs && self.reserved + positions <= self.cfg.kv_budget
    }

    /// Adds a sequence; it takes part from the next step. Fails for a request that can
    /// never run (empty prompt, prompt beyond the context, bad sampling settings) or when
    /// [`Self::can_admit`] says no.
    pub fn add(&mut self, id: u64, req: BatchRequest) -> Result<()> {
        if req.top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_TOP_LOGPROBS} alternatives per token"
            )));
        }
        if req.prompt.len() > self.cfg.max_ctx {
            return Err(Error::ContextFull {
                needed: req.prompt.len(),
                max: self.cfg.max_ctx,
            });
        }
        let positions = req.positions(self.cfg.max_ctx);
        if !self.can_admit(positions) {
            return Err(Error::InvalidArgument(format!(
                "the batch is full ({} sequences, {} of {} cache positions reserved)",
                self.seqs.len(),
                self.reserved,
                self.cfg.kv_budget
            )));
        }
        if self.seqs.iter().any(|s| s.id == id) {
            return Err(Error::InvalidArgument(format!(
                "sequence {id} already runs"
            )));
        }
        let generator = Generator::detached(&req.prompt, &req.opts, positions)?;
        let cache = self
            .model
            .new_cache(0..self.model.config().n_layers, positions)?;
        self.seqs.push(Seq {
            id,
            generator,
            cache,
            fed: 0,
            reserved: positions,
            streamed: 0,
            top_logprobs: req.top_logprobs,
            prompt_logprobs: req.prompt_logprobs.then(|| vec![None]),
        });
        self.reserved += positions;
        Ok(())
    }

    /// Drops a sequence (its client went away); false if it is not in the batch.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.seqs.iter().position(|s| s.id == id) {
            Some(i) => {
                self.remove(i);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, i: usize) -> Seq {
        let s = self.seqs.remove(i);
        self.reserved -= s.reserved;
        s
    }

    /// Runs one batched pass (when any sequence needs model work) and reports what each
    /// sequence did. Sequences that finish or fail leave the batch.
    pub fn step(&mut self, tokenizer: &Tokenizer) -> Vec<BatchEvent> {
        let mut events = Vec::new();
        self.settle(tokenizer, &mut events);
        let parts = self.plan();
        if parts.is_empty() {
            return events;
        }
        match self.run(&parts) {
            Ok(logits) => self.deliver(tokenizer, &parts, &logits, &mut events),
            Err(e) => {
                // The pass failed for all: every sequence in it leaves with the error.
                let mut ids: Vec<u64> = parts.iter().map(|p| self.seqs[p.seq].id).collect();
                ids.sort_unstable();
                self.seqs.retain(|s| ids.binary_search(&s.id).is_err());
                self.reserved = self.seqs.iter().map(|s| s.reserved).sum();
                for id in ids {
                    events.push(BatchEvent::Failed {
                        id,
                        error: Error::Backend(e.to_string()),
                    });
                }
            }
        }
        self.settle(tokenizer, &mut events);
        events
    }

    /// Steps every sequence that needs no model work (the first token after its prompt,
    /// the end) until it does, removing those that finish.
    fn settle(&mut self, tokenizer: &Tokenizer, events: &mut Vec<BatchEvent>) {
        let mut i = 0;
        while i < self.seqs.len() {
            let mut left = false;
            while self.seqs[i].generator.needs() == Needs::Nothing {
                let step = self.seqs[i].generator.step_with(tokenizer, None);
                if self.report(i, step, events) {
                    left = true;
                    break;
                }
            }
            if !left {
                i += 1;
            }
        }
    }

    /// Turns a generator step into events; true when the sequence left the batch.
    fn report(&mut self, i: usize, step: Result<Step>, events: &mut Vec<BatchEvent>) -> bool {
        let id = self.seqs[i].id;
        match step {
            Ok(Step::Prefilled) => {
                let logprobs = self.seqs[i].prompt_logprobs.take();
                events.push(BatchEvent::Prefilled { id, logprobs });
                false
            }
            Ok(Step::Token { id: token, text }) => {
                let s = &mut self.seqs[i];
                s.streamed += 1;
                let logprob = s
                    .top_logprobs
                    .map(|k| token_logprob(s.generator.logits(), token, k));
                events.push(BatchEvent::Token {
                    id,
                    token,
                    text,
                    logprob,
                });
                false
            }
            Ok(Step::Finished { text, reason }) => {
                let s = self.remove(i);
                let tokens = s.generator.tokens();
                events.push(BatchEvent::Finished {
                    id,
                    text,
                    reason,
                    prompt_tokens: s.generator.prompt_tokens(),
                    completion_tokens: tokens.len(),
                    eog: tokens.last().copied().filter(|_| s.eog_ended()),
                });
                true
            }
            Err(error) => {
                self.remove(i);
                events.push(BatchEvent::Failed { id, error });
                true
            }
        }
    }

    /// This step's rows: a token for every decoding sequence, then prompt chunks (oldest
    /// sequence first) while rows are left.
    fn plan(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut left = self.cfg.step_tokens;
        for (i, s) in self.seqs.iter().enumerate() {
            if let Needs::Token(t) = s.generator.needs() {
                parts.push(Part {
                    seq: i,
                    tokens: vec![t],
                    prompt: false,
                    logits: Rows::Last,
                });
                left = left.saturating_sub(1);
            }
        }
        for (i, s) in self.seqs.iter().enumerate() {
            if left == 0 {
                break;
            }
            if let Needs::Prompt(p) = s.generator.needs() {
                let mut n = (p.len() - s.fed).min(left);
                if s.prompt_logprobs.is_some() {
                    n = n.min(PROMPT_LOGPROB_ROWS);
                }
                let end = s.fed + n;
                parts.push(Part {
                    seq: i,
                    tokens: p[s.fed..end].to_vec(),
                    prompt: p.len() > 1,
                    logits: if s.prompt_logprobs.is_some() {
                        Rows::All
                    } else if end == p.len() {
                        Rows::Last
                    } else {
                        Rows::None
                    },
                });
                left -= n;
            }
        }
        parts
    }

    /// Runs the planned rows; returns the logits asked for, part by part, row by row.
    fn run(&mut self, parts: &[Part]) -> Result<Vec<f32>> {
        let tokens: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.tokens.iter().copied())
            .collect();
        let mut hidden = self.model.embed(&tokens)?;
        let mut rows = Vec::new();
        let mut at = 0;
        for p in parts {
            match p.logits {
                Rows::None => {}
                Rows::Last => rows.push(at + p.tokens.len() - 1),
                Rows::All => rows.extend(at..at + p.tokens.len()),
            }
            at += p.tokens.len();
        }
        {
            // Parts name distinct sequences in increasing order within each phase; take
            // each cache once, in the order of the parts.
            let mut caches: Vec<Option<&mut KvCache>> =
                self.seqs.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut seqs = Vec::with_capacity(parts.len());
            for p in parts {
                let cache = caches[p.seq]
                    .take()
                    .ok_or_else(|| Error::Backend("a sequence planned twice".into()))?;
                seqs.push(BatchSeq {
                    cache,
                    n: p.tokens.len(),
                    prompt: p.prompt,
                });
            }
            self.model.forward_batch(&mut hidden, &mut seqs)?;
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.model.logits_rows(&hidden, &rows)
    }

    fn deliver(
        &mut self,
        tokenizer: &Tokenizer,
        parts: &[Part],
        logits: &[f32],
        events: &mut Vec<BatchEvent>,
    ) {
        let vocab = self.model.config().vocab_size;
        let mut rows = logits.chunks_exact(vocab);
        // Sequences leave while results are handed out: find each by id.
        let ids: Vec<u64> = parts.iter().map(|p| self.seqs[p.seq].id).collect();
        for (p, id) in parts.iter().zip(ids) {
            let n_rows = match p.logits {
                Rows::None => 0,
                Rows::Last => 1,
                Rows::All => p.tokens.len(),
            };
            let mine: Vec<&[f32]> = rows.by_ref().take(n_rows).collect();
            let Some(i) = self.seqs.iter().position(|s| s.id == id) else {
                continue;
            };
            let s = &mut self.seqs[i];
            let last = match s.generator.needs() {
                Needs::Prompt(prompt) => {
                    let end = s.fed + p.tokens.len();
                    if let Some(lp) = &mut s.prompt_logprobs {
                        // Row j predicts prompt token fed + j + 1.
                        let k = s.top_logprobs.unwrap_or(0);
                        for (j, row) in mine.iter().enumerate() {
                            if let Some(&next) = prompt.get(s.fed + j + 1) {
                                lp.push(Some(token_logprob(row, next, k)));
                            }
                        }
                    }
                    s.fed = end;
                    end == prompt.len()
                }
                _ => true,
            };
            if last {
                let row = mine.last().map(|r| r.to_vec());
                let step = s.generator.step_with(tokenizer, row);
                self.report(i, step, events);
            }
        }
    }
}

/// `token`'s log-probability in `logits` and the `k` most likely tokens.
pub fn token_logprob(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let norm = max + sum.ln() as f32;
    let lp = |l: f32| l - norm;
    let logprob = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = k.min(idx.len());
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by);
        top = idx.into_iter().map(|(t, l)| (t, lp(l))).collect();
    }
    TokenLogprob {
        token,
        logprob,
        top,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let t = token_logprob(&l, 2, 3);
        let z: f64 = l.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((f64::from(t.logprob) - (2.0 - z.ln())).abs() < 1e-5);
        // Ties go to the lower id.
        assert_eq!(t.top.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f64 = (0..4)
            .map(|t| f64::from(token_logprob(&l, t, 0).logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(token_logprob(&l, 0, 0).top.is_empty());
    }

    #[test]
    fn configs_that_cannot_work_are_refused() {
        let ok = BatchConfig {
            max_seqs: 4,
            step_tokens: 64,
            max_ctx: 512,
            kv_budget: 2048,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            BatchConfig {
                max_seqs: 0,
                ..ok.clone()
            },
            BatchConfig {
                step_tokens: 3,
                ..ok.clone()
            },
            BatchConfig {
                kv_budget: 100,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
