//! The CPU engine against llama.cpp's greedy outputs for the default model
//! (`tests/data/smollm2-135m-q4_1.llamacpp.json`), plus span-wise execution.
//!
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::fs::File;
use std::io::BufReader;

use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LoadSpec, SpanCache};
use serde_json::Value;

fn load(spec: Option<LoadSpec>) -> Option<Llama> {
    let path = common::model_path()?;
    let mut r = BufReader::new(File::open(path).unwrap());
    let g = Gguf::read(&mut r).unwrap();
    let spec =
        spec.unwrap_or_else(|| LoadSpec::full(&kwaainet_core::LlamaConfig::from_gguf(&g).unwrap()));
    Some(Llama::load(&g, &mut r, spec).unwrap())
}

fn cases() -> Vec<Value> {
    common::reference()["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy ids for `prompt` (stopping at EOS when asked) and the teacher-forced top-1
/// agreement with `want` (our argmax at every position given the reference prefix).
fn greedy_and_agreement(
    model: &Llama,
    prompt: &[u32],
    want: &[u32],
    max: usize,
    stop_at_eos: bool,
) -> (Vec<u32>, usize) {
    let mut cache = model.new_cache(0..30, 512).unwrap();
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut got = Vec::new();
    for _ in 0..max {
        let t = argmax(&logits);
        got.push(t);
        if stop_at_eos && t == 2 {
            break;
        }
        logits = model.forward(&[t], &mut cache).unwrap();
    }
    let mut cache = model.new_cache(0..30, 512).unwrap();
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut agree = 0;
    for &t in want {
        agree += usize::from(argmax(&logits) == t);
        logits = model.forward(&[t], &mut cache).unwrap();
    }
    (got, agree)
}

/// The shared reference was produced by llama.cpp on another CPU; llama.cpp itself, built
/// for this machine (AVX2), leaves it at `capital-chat` token 7 and `long-prompt-chat`
/// token 28 (near-ties; see `scripts/dev/llamacpp-reference.py`). So here: `capital-raw`
/// exactly, and teacher-forced top-1 agreement of at least 97% over all reference tokens.
#[test]
fn greedy_matches_the_shared_llama_cpp_reference() {
    let Some(model) = load(None) else { return };
    let (mut agree, mut total) = (0, 0);
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let max = case["max_tokens"].as_u64().unwrap() as usize;
        let (got, a) = greedy_and_agreement(
            &model,
            &prompt,
            &want,
            max,
            case["stop_at_eos"].as_bool().unwrap(),
        );
        if name == "capital-raw" {
            assert_eq!(got, want, "{name}: greedy tokens differ from llama.cpp");
        }
        eprintln!("{name}: teacher-forced top-1 agreement {a}/{}", want.len());
        agree += a;
        total += want.len();
    }
    let rate = agree as f64 / total as f64;
    assert!(
        rate >= 0.97,
        "teacher-forced top-1 agreement {agree}/{total} = {rate:.3} < 0.97"
    );
}

/// llama.cpp's own greedy outputs on an x86-64 AVX2 CPU, whose arithmetic this engine's
/// AVX2 kernels (and its NEON and simd128 ones) reproduce: every greedy token of every case
/// must be equal, and teacher-forced agreement at least 97% per case. With the portable
/// kernels (other rounding) the reference README's weaker checks apply: the first 16 ids
/// exact. The short cases, `capital-raw` and `capital-chat` (40 tokens), are a test of
/// their own, which npm test's `arm` step runs under emulation.
#[test]
fn greedy_matches_llama_cpp_on_avx2() {
    check_avx2_cases(|name| name != "long-prompt-chat");
}

/// [`greedy_matches_llama_cpp_on_avx2`] for `long-prompt-chat` (128 prompt tokens, 64 out).
#[test]
fn greedy_matches_llama_cpp_on_avx2_long_prompt() {
    check_avx2_cases(|name| name == "long-prompt-chat");
}

fn check_avx2_cases(which: impl Fn(&str) -> bool) {
    let Some(model) = load(None) else { return };
    let exact = kwaainet_core::kernels::bit_exact_with_avx2();
    let reference: Value =
        serde_json::from_str(include_str!("data/smollm2-135m-q4_1.llamacpp-avx2.json")).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(
        cases.len(),
        3,
        "a case was added: give it to one of the tests"
    );
    for case in cases.iter().filter(|c| which(c["name"].as_str().unwrap())) {
        let name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let max = case["max_tokens"].as_u64().unwrap() as usize;
        let (got, agree) = greedy_and_agreement(
            &model,
            &prompt,
            &want,
            max,
            case["stop_at_eos"].as_bool().unwrap(),
        );
        let n = if exact || name == "capital-raw" {
            want.len()
        } else {
            16
        };
        assert_eq!(
            got[..n],
            want[..n],
            "{name}: greedy tokens differ from llama.cpp (AVX2)"
        );
        let rate = agree as f64 / want.len() as f64;
        eprintln!(
            "{name} (AVX2 reference): teacher-forced top-1 agreement {agree}/{} = {rate:.3}",
            want.len()
        );
        assert!(rate >= 0.97, "{name}: top-1 agreement {rate:.3} < 0.97");
    }
}

#[test]
fn spans_compose_to_the_whole_model() {
    let Some(model) = load(None) else { return };
    let prompt = ids(&cases()[1]["prompt_ids"]);
    let mut whole = model.new_cache(0..30, 64).unwrap();
    let mut spans: Vec<_> = [0..10, 10..20, 20..30]
        .into_iter()
        .map(|r| model.new_cache(r, 64).unwrap())
        .collect();
    // Prefill, then three decode steps, through both paths.
    let mut steps: Vec<Vec<u32>> = vec![prompt];
    steps.extend([[504u32], [3575], [282]].map(|t| t.to_vec()));
    for step in steps {
        let expect = model.forward(&step, &mut whole).unwrap();
        let mut h = model.embed(&step).unwrap();
        for c in &mut spans {
            model.forward_span_in_place(&mut h, c).unwrap();
        }
        assert_eq!(model.logits(&h).unwrap(), expect, "span-wise logits differ");
    }
    assert!(spans.iter().all(|c| c.len() == whole.len()));
}

#[test]
fn a_peer_can_load_only_its_span() {
    let Some(full) = load(None) else { return };
    let Some(middle) = load(Some(LoadSpec {
        blocks: 10..20,
        embed: false,
        head: false,
    })) else {
        return;
    };
    assert!(middle.weight_bytes() * 2 < full.weight_bytes() / 2);
    assert!(middle.embed(&[1]).is_err());
    assert!(middle.logits(&[0.0; 576]).is_err());
    assert!(middle.new_cache(0..10, 8).is_err());
    let prompt = [1u32, 4093, 198];
    let mut c_full = [
        full.new_cache(0..10, 8).unwrap(),
        full.new_cache(10..20, 8).unwrap(),
    ];
    let mut c_mid = middle.new_cache(10..20, 8).unwrap();
    let mut h = full.embed(&prompt).unwrap();
    full.forward_span_in_place(&mut h, &mut c_full[0]).unwrap();
    let mut h2 = h.clone();
    full.forward_span_in_place(&mut h, &mut c_full[1]).unwrap();
    middle.forward_span_in_place(&mut h2, &mut c_mid).unwrap();
    assert_eq!(h, h2);
}

#[test]
fn context_limit_and_bad_tokens_are_errors() {
    let Some(model) = load(None) else { return };
    let mut cache = model.new_cache(0..30, 4).unwrap();
    assert!(model.forward(&[1, 2, 3, 4, 5], &mut cache).is_err());
    assert_eq!(cache.len(), 0, "a rejected call must not change the cache");
    assert!(model.forward(&[49_152], &mut cache).is_err());
    assert!(model.forward(&[], &mut cache).is_err());
    model.forward(&[1, 2, 3], &mut cache).unwrap();
    cache.truncate(1);
    model.forward(&[2, 3, 4], &mut cache).unwrap();
    assert_eq!(cache.len(), 4);
}

/// Text neither engine was tuned on (the first 1,024 tokens of a public-domain novel's chapter)
/// and four new chat prompts, against llama.cpp built for plain AVX2 (`scripts/dev/llamacpp/`):
/// on x86-64 with AVX2 the log-probability of every next token and every greedy token are
/// llama.cpp's (the prompt run as one batch, as llama.cpp runs it, then one token at a time).
/// Other kernels round differently: 95% top-1 agreement, perplexity within 1% and the first
/// 3 greedy tokens there.
#[test]
fn unseen_text_and_chats_match_llama_cpp() {
    let Some(model) = load(None) else { return };
    let exact = kwaainet_core::kernels::bit_exact_with_avx2();
    let r: Value =
        serde_json::from_str(include_str!("data/persuasion.llamacpp-avx2.json")).unwrap();
    let tf = &r["teacher_forced"];
    let tokens = ids(&tf["tokens"]);
    let want_argmax = ids(&tf["argmax"]);
    let want_lp: Vec<f64> = tf["logprob"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // The whole text as one prompt, its logits in chunks of rows (a vocabulary per row).
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache(0..30, tokens.len()).unwrap();
    let mut hidden = model.embed(&tokens).unwrap();
    model
        .forward_span_in_place(&mut hidden, &mut cache)
        .unwrap();
    let (mut agree, mut worst, mut nll, mut want_nll) = (0, 0f64, 0f64, 0f64);
    let n = tokens.len() - 1;
    for start in (0..n).step_by(128) {
        let rows: Vec<usize> = (start..(start + 128).min(n)).collect();
        let logits = model.logits_rows(&hidden, &rows).unwrap();
        for (row, l) in rows.iter().zip(logits.chunks_exact(vocab)) {
            let lp = kwaainet_core::batch::token_logprob(l, tokens[row + 1], 1);
            agree += usize::from(lp.top[0].0 == want_argmax[*row]);
            worst = worst.max((f64::from(lp.logprob) - want_lp[*row]).abs());
            nll -= f64::from(lp.logprob);
            want_nll -= want_lp[*row];
        }
    }
    let (ppl, want_ppl) = ((nll / n as f64).exp(), (want_nll / n as f64).exp());
    eprintln!(
        "unseen text: top-1 agreement {agree}/{n}, max |Δ logprob| {worst:.2e}, perplexity {ppl:.4} (llama.cpp {want_ppl:.4})"
    );
    if exact {
        assert_eq!(agree, n, "top-1 agreement with llama.cpp");
        assert!(
            worst < 1e-4,
            "log-probabilities differ from llama.cpp's by {worst}"
        );
    } else {
        assert!(agree * 1000 >= n * 950, "top-1 agreement {agree}/{n}");
        assert!(
            (ppl / want_ppl - 1.0).abs() < 0.01,
            "perplexity {ppl} vs llama.cpp's {want_ppl}"
        );
    }
    for case in r["chat"]["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["output_ids"]);
        let (got, _) = greedy_and_agreement(&model, &prompt, &want, want.len(), false);
        let k = if exact { want.len() } else { 3 };
        assert_eq!(got[..k], want[..k], "{}", case["prompt"]);
    }
}
