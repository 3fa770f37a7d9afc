//! Continuous batching on the default model: sequences decoded together (joining at
//! different steps, prompts run in chunks) give the tokens each gives alone, and the
//! llama.cpp reference tokens.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use kwaainet_core::batch::{BatchConfig, BatchEvent, BatchRequest, Batcher};
use kwaainet_core::generate::{CpuSession, FinishReason, GenerateOptions, generate};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LlamaConfig, LoadSpec, Tokenizer};

fn load() -> Option<(Arc<Llama>, Tokenizer)> {
    let path = common::model_path()?;
    let mut r = BufReader::new(File::open(path).unwrap());
    let g = Gguf::read(&mut r).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let config = LlamaConfig::from_gguf(&g).unwrap();
    let model = Llama::load(&g, &mut r, LoadSpec::full(&config)).unwrap();
    Some((Arc::new(model), tok))
}

struct Case {
    prompt: Vec<u32>,
    max_tokens: usize,
    stop_at_eos: bool,
    reference: Vec<u32>,
}

fn cases() -> Vec<Case> {
    // llama.cpp's greedy tokens on an x86-64 AVX2 CPU (see tests/reference.rs).
    let r: serde_json::Value =
        serde_json::from_str(include_str!("data/smollm2-135m-q4_1.llamacpp-avx2.json")).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: ids(&c["prompt_ids"]),
            max_tokens: c["max_tokens"].as_u64().unwrap() as usize,
            stop_at_eos: c["stop_at_eos"].as_bool().unwrap(),
            reference: ids(&c["output_ids"]),
        })
        .collect()
}

fn opts(c: &Case) -> GenerateOptions {
    GenerateOptions {
        max_tokens: c.max_tokens,
        ignore_eos: !c.stop_at_eos,
        ..GenerateOptions::default()
    }
}

/// Runs `requests` through a batch, adding request `i` at step `join[i]`; returns each
/// one's tokens and text, and the most sequences that ran in one step.
fn run_batch(
    model: &Arc<Llama>,
    tok: &Tokenizer,
    cfg: BatchConfig,
    requests: Vec<BatchRequest>,
    join: &[usize],
) -> (Vec<(Vec<u32>, String, FinishReason)>, usize) {
    let mut b = Batcher::new(Arc::clone(model), cfg).unwrap();
    let n = requests.len();
    let mut out: HashMap<u64, (Vec<u32>, String, Option<FinishReason>)> = HashMap::new();
    let mut pending: Vec<Option<BatchRequest>> = requests.into_iter().map(Some).collect();
    let mut most = 0;
    for step in 0..10_000 {
        for (i, r) in pending.iter_mut().enumerate() {
            if join[i] <= step
                && let Some(req) = r.take()
            {
                b.add(i as u64, req).unwrap();
                out.insert(i as u64, (Vec::new(), String::new(), None));
            }
        }
        most = most.max(b.active());
        for ev in b.step(tok) {
            match ev {
                BatchEvent::Token {
                    id, token, text, ..
                } => {
                    let e = out.get_mut(&id).unwrap();
                    e.0.push(token);
                    e.1.push_str(&text);
                }
                BatchEvent::Finished {
                    id,
                    text,
                    reason,
                    eog,
                    completion_tokens,
                    ..
                } => {
                    let e = out.get_mut(&id).unwrap();
                    e.0.extend(eog);
                    assert_eq!(e.0.len(), completion_tokens);
                    e.1.push_str(&text);
                    e.2 = Some(reason);
                }
                BatchEvent::Failed { id, error } => panic!("sequence {id} failed: {error}"),
                BatchEvent::Prefilled { .. } => {}
            }
        }
        if pending.iter().all(Option::is_none) && b.active() == 0 {
            break;
        }
    }
    assert_eq!(b.reserved(), 0, "every reservation is released");
    let results = (0..n as u64)
        .map(|i| {
            let (t, s, r) = out.remove(&i).unwrap();
            (t, s, r.expect("finished"))
        })
        .collect();
    (results, most)
}

fn avx2() -> bool {
    kwaainet_core::kernels::bit_exact_with_avx2()
}

#[test]
fn batched_greedy_tokens_are_the_single_sequence_and_llama_cpp_ones() {
    let Some((model, tok)) = load() else { return };
    let cases = cases();
    // Each case twice, joining at different steps; 24 rows per step, so the 128-token
    // prompt runs in chunks while others decode.
    let mut requests = Vec::new();
    let mut join = Vec::new();
    for (k, c) in cases.iter().chain(&cases).enumerate() {
        requests.push(BatchRequest {
            prompt: c.prompt.clone(),
            opts: opts(c),
            top_logprobs: None,
            prompt_logprobs: false,
        });
        join.push(k * 3);
    }
    let cfg = BatchConfig {
        max_seqs: 8,
        step_tokens: 24,
        max_ctx: 512,
        kv_budget: 4096,
    };
    let (got, most) = run_batch(&model, &tok, cfg, requests, &join);
    assert!(most >= 4, "sequences overlapped ({most} at most)");
    for (k, (tokens, text, _)) in got.iter().enumerate() {
        let c = &cases[k % cases.len()];
        // Alone, through the ordinary session.
        let mut session = CpuSession::new(&*model, 512).unwrap();
        let alone = generate(&mut session, &tok, &c.prompt, &opts(c), |_| true).unwrap();
        assert_eq!(tokens, &alone.tokens, "case {k}: batched vs alone");
        assert_eq!(text, &alone.text, "case {k}: text");
        // Our AVX2 kernels reproduce llama.cpp's arithmetic; other kernels round
        // differently, so elsewhere only the first 16 tokens must agree.
        let n = if avx2() { c.reference.len() } else { 16 };
        assert_eq!(
            tokens[..n],
            c.reference[..n],
            "case {k}: batched vs llama.cpp"
        );
    }
}

#[test]
fn logprobs_budgets_and_cancellation() {
    let Some((model, tok)) = load() else { return };
    let c = &cases()[0];
    let cfg = BatchConfig {
        max_seqs: 2,
        step_tokens: 16,
        max_ctx: 64,
        kv_budget: 100,
    };
    let mut b = Batcher::new(Arc::clone(&model), cfg).unwrap();
    let req = BatchRequest {
        prompt: c.prompt.clone(),
        opts: GenerateOptions {
            max_tokens: 40,
            ..GenerateOptions::default()
        },
        top_logprobs: Some(3),
        prompt_logprobs: true,
    };
    // 16 + 40 = 56 positions: a second one does not fit the budget of 100.
    assert_eq!(req.positions(64), 56);
    b.add(1, req.clone()).unwrap();
    assert!(!b.can_admit(56));
    assert!(b.add(2, req.clone()).is_err());
    // A prompt beyond the context is refused as a context overflow.
    let long = BatchRequest {
        prompt: vec![1; 65],
        ..req.clone()
    };
    assert!(matches!(
        b.add(3, long),
        Err(kwaainet_core::Error::ContextFull {
            needed: 65,
            max: 64
        })
    ));

    let mut prompt_lp = None;
    let mut tokens = Vec::new();
    let mut finished = None;
    for _ in 0..200 {
        for ev in b.step(&tok) {
            match ev {
                BatchEvent::Prefilled { logprobs, .. } => prompt_lp = logprobs,
                BatchEvent::Token { token, logprob, .. } => tokens.push((token, logprob.unwrap())),
                BatchEvent::Finished { reason, eog, .. } => {
                    assert_eq!(eog, c.reference.last().copied());
                    finished = Some(reason);
                }
                BatchEvent::Failed { error, .. } => panic!("{error}"),
            }
        }
        if finished.is_some() {
            break;
        }
    }
    assert_eq!(finished, Some(FinishReason::Stop));
    // Greedy: every token is the best of its position.
    let ids: Vec<u32> = tokens.iter().map(|t| t.0).collect();
    assert_eq!(ids, c.reference[..c.reference.len() - 1]);
    for (t, lp) in &tokens {
        assert_eq!(lp.token, *t);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, *t);
        assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].1).abs() < 1e-6);
    }
    // One entry per prompt token, the first without a log-probability.
    let lp = prompt_lp.unwrap();
    assert_eq!(lp.len(), c.prompt.len());
    assert!(lp[0].is_none());
    for (j, e) in lp.iter().enumerate().skip(1) {
        let e = e.as_ref().unwrap();
        assert_eq!(e.token, c.prompt[j]);
        assert!(e.logprob.is_finite() && e.logprob <= 0.0);
        assert_eq!(e.top.len(), 3);
    }
    assert_eq!(b.reserved(), 0);

    // A cancelled sequence leaves at once and frees its reservation.
    b.add(7, req.clone()).unwrap();
    b.step(&tok);
    assert!(b.cancel(7));
    assert_eq!((b.active(), b.reserved()), (0, 0));
    assert!(!b.cancel(7));
}
