//! The generation loop: prefill, sample, stream text, stop on end-of-generation tokens,
//! stop strings or the token budget.

use crate::model::{KvCache, Llama};
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

/// A [`Session`] of the CPU model over all of its blocks.
#[derive(Debug)]
pub struct CpuSession<'a> {
    model: &'a Llama,
    cache: KvCache,
}

impl<'a> CpuSession<'a> {
    /// A fresh session holding up to `max_ctx` positions.
    pub fn new(model: &'a Llama, max_ctx: usize) -> Result<Self> {
        Ok(Self {
            model,
            cache: model.new_cache(0..model.config().n_layers, max_ctx)?,
        })
    }
    /// The KV cache (e.g. to truncate it for re-use of a shared prefix).
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }
}

impl Session for CpuSession<'_> {
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
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    if session.len() + prompt.len() > session.max_ctx() {
        return Err(Error::InvalidArgument(format!(
            "prompt of {} tokens does not fit the context of {} ({} already used)",
            prompt.len(),
            session.max_ctx(),
            session.len()
        )));
    }
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let mut history: Vec<u32> = prompt.to_vec();
    let mut logits = session.forward(prompt)?;
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        prompt_tokens: prompt.len(),
    };
    if !on_event(Event::PrefillDone) {
        out.finish = FinishReason::Cancelled;
        return Ok(out);
    }
    let mut decoder = StreamDecoder::new(true);
    let mut stops = StopMatcher::new(&opts.stop);
    for step in 0..opts.max_tokens {
        let id = sampler.sample(&logits, &history)?;
        out.tokens.push(id);
        history.push(id);
        if !opts.ignore_eos && tokenizer.is_eog(id) {
            out.finish = FinishReason::Stop;
            break;
        }
        let piece = decoder.push(tokenizer, id);
        let (ready, hit) = stops.push(&piece);
        out.text.push_str(&ready);
        if !on_event(Event::Token { id, text: &ready }) {
            out.finish = FinishReason::Cancelled;
            return Ok(out);
        }
        if hit {
            out.finish = FinishReason::Stop;
            return Ok(out);
        }
        if step + 1 == opts.max_tokens || session.len() >= session.max_ctx() {
            break;
        }
        logits = session.forward(&[id])?;
    }
    // Flush text held back for a possible stop string or an incomplete character.
    let tail = decoder.finish();
    let (mut rest, hit) = stops.push(&tail);
    if !hit {
        rest.push_str(&stops.flush());
    } else {
        out.finish = FinishReason::Stop;
    }
    if !rest.is_empty() {
        out.text.push_str(&rest);
        on_event(Event::Token {
            id: *out.tokens.last().unwrap_or(&0),
            text: &rest,
        });
    }
    Ok(out)
}

/// Streams text while holding back any suffix that could still become a stop string.
#[derive(Debug)]
pub struct StopMatcher<'a> {
    stops: Vec<&'a str>,
    pending: String,
    done: bool,
}

impl<'a> StopMatcher<'a> {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &'a [String]) -> Self {
        Self {
            stops: stops
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
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
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s)).min() {
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
