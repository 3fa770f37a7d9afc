//! Token sampling: greedy, temperature, top-k, top-p, and repetition, presence and
//! frequency penalties, with a seeded RNG so a given seed reproduces a generation.

use crate::{Error, Result};

/// Sampling settings. The default is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (`1` = all).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (`1` = off).
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token among the recent ones (OpenAI's
    /// `presence_penalty`, -2..=2; `0` = off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence among the recent ones (OpenAI's
    /// `frequency_penalty`, -2..=2; `0` = off).
    pub frequency_penalty: f32,
    /// How many recent tokens (prompt included) the penalties look at.
    pub repeat_last_n: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Rejects values that make no sense (negative temperature, top_p outside (0, 1], ...).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "temperature {} must be >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "repetition penalty {} must be > 0",
                self.repetition_penalty
            )));
        }
        for (name, v) in [
            ("presence penalty", self.presence_penalty),
            ("frequency penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::InvalidArgument(format!(
                    "{name} {v} must be in [-2, 2]"
                )));
            }
        }
        Ok(())
    }

    fn penalises(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// A sampler with its own RNG state.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `cfg` (validated).
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = SplitMix64(cfg.seed);
        Ok(Self {
            cfg,
            rng,
            candidates: Vec::new(),
        })
    }

    /// Settings in use.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` given the tokens seen so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidArgument("no logits to sample from".into()));
        }
        // (token, occurrences) among the recent tokens, sorted by token.
        let mut recent: Vec<(u32, u32)> = Vec::new();
        if self.cfg.penalises() {
            let from = history.len().saturating_sub(self.cfg.repeat_last_n);
            let mut r = history[from..].to_vec();
            r.sort_unstable();
            for id in r {
                match recent.last_mut() {
                    Some((last, count)) if *last == id => *count += 1,
                    _ => recent.push((id, 1)),
                }
            }
        }
        let cfg = &self.cfg;
        let penalty = |id: u32, l: f32| -> f32 {
            let Ok(i) = recent.binary_search_by_key(&id, |e| e.0) else {
                return l;
            };
            let l = if l > 0.0 {
                l / cfg.repetition_penalty
            } else {
                l * cfg.repetition_penalty
            };
            l - cfg.presence_penalty - cfg.frequency_penalty * recent[i].1 as f32
        };
        if self.cfg.temperature == 0.0 {
            // Ties go to the lowest id, like a stable argmax.
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                let l = penalty(i as u32, l);
                if l > best.1 {
                    best = (i as u32, l);
                }
            }
            return Ok(best.0);
        }
        let temperature = self.cfg.temperature;
        let top_p = self.cfg.top_p;
        let top_k = self.cfg.top_k;
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, penalty(i as u32, l))),
        );
        c.retain(|(_, l)| !l.is_nan());
        if c.is_empty() {
            return Err(Error::InvalidArgument("all logits are NaN".into()));
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if top_k > 0 && top_k < c.len() {
            c.select_nth_unstable_by(top_k - 1, by_logit);
            c.truncate(top_k);
        }
        c.sort_unstable_by(by_logit);
        // Softmax at temperature, then the top-p cut on the sorted probabilities.
        let max = c[0].1;
        let mut total = 0f64;
        for e in c.iter_mut() {
            e.1 = ((e.1 - max) / temperature).exp();
            total += f64::from(e.1);
        }
        if top_p < 1.0 {
            let mut mass = 0f64;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                mass += f64::from(e.1) / total;
                if mass >= f64::from(top_p) {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            total = c.iter().map(|e| f64::from(e.1)).sum();
        }
        let mut r = self.rng.next_f64() * total;
        for e in c.iter() {
            r -= f64::from(e.1);
            if r <= 0.0 {
                return Ok(e.0);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}

/// A small, fast, well-distributed PRNG (SplitMix64); enough for sampling, not for keys.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplerConfig)) -> Sampler {
        let mut c = SamplerConfig::default();
        f(&mut c);
        Sampler::new(c).unwrap()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = sampler(|_| {});
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = sampler(|c| c.repetition_penalty = 2.0);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]).unwrap(), 2);
        // Negative logits are pushed further down, not up.
        assert_eq!(s.sample(&[-1.0, -0.6, -5.0], &[1]).unwrap(), 0);
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai() {
        // Token 1 seen twice: 3.0 - 0.5 (presence) - 2 × 0.4 (frequency) = 1.7 < 2.0.
        let mut s = sampler(|c| {
            c.presence_penalty = 0.5;
            c.frequency_penalty = 0.4;
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1, 1]).unwrap(), 2);
        // Seen once: 3.0 - 0.9 = 2.1 > 2.0.
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]).unwrap(), 1);
        // Negative penalties favour seen tokens.
        let mut s = sampler(|c| c.presence_penalty = -1.5);
        assert_eq!(s.sample(&[0.1, 2.0, 3.0], &[1]).unwrap(), 1);
        // Only the last `repeat_last_n` tokens count.
        let mut s = sampler(|c| {
            c.presence_penalty = 2.0;
            c.repeat_last_n = 1;
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1, 2]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = sampler(|c| {
            c.temperature = 5.0;
            c.top_k = 1;
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p(token 0) ≈ 0.9999: with top_p 0.5 nothing else may ever be drawn.
        let mut s = sampler(|c| {
            c.temperature = 1.0;
            c.top_p = 0.5;
        });
        for _ in 0..200 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0, 0.0], &[]).unwrap(), 0);
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln(), 0.0, 0.0];
        let draw = |seed| {
            let mut s = sampler(|c| {
                c.temperature = 1.0;
                c.seed = seed;
            });
            (0..6000)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        // Token 1 has probability 3/6 = 0.5.
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.5).abs() < 0.03, "{ones}");
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for f in [
            (|c: &mut SamplerConfig| c.temperature = -1.0) as fn(&mut SamplerConfig),
            |c| c.top_p = 0.0,
            |c| c.top_p = 1.5,
            |c| c.repetition_penalty = 0.0,
            |c| c.temperature = f32::NAN,
            |c| c.presence_penalty = 2.5,
            |c| c.frequency_penalty = -3.0,
            |c| c.frequency_penalty = f32::NAN,
        ] {
            let mut c = SamplerConfig::default();
            f(&mut c);
            assert!(Sampler::new(c).is_err());
        }
        assert!(sampler(|_| {}).sample(&[], &[]).is_err());
    }
}
