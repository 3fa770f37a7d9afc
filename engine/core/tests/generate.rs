//! The generation loop on the default model: streaming, EOS, stop strings, budgets,
//! cancellation and seeded sampling.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::BufReader;

use kwaainet_core::generate::{
    CpuSession, Event, FinishReason, GenerateOptions, Session, generate,
};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LlamaConfig, LoadSpec, SamplerConfig, Tokenizer};

struct Fixture {
    model: Llama,
    tok: Tokenizer,
    prompt: Vec<u32>,
}

fn fixture() -> Option<Fixture> {
    let path = common::model_path()?;
    let mut r = BufReader::new(File::open(path).unwrap());
    let g = Gguf::read(&mut r).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let model = Llama::load(
        &g,
        &mut r,
        LoadSpec::full(&LlamaConfig::from_gguf(&g).unwrap()),
    )
    .unwrap();
    // The reference `capital-raw` prompt: a user turn without the template's default
    // system message.
    let text =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let prompt = tok.encode(text, true).unwrap();
    Some(Fixture { model, tok, prompt })
}

fn run(
    f: &Fixture,
    opts: &GenerateOptions,
    cancel_after: Option<usize>,
) -> (kwaainet_core::generate::Generation, String) {
    let mut session = CpuSession::new(&f.model, 256).unwrap();
    let mut streamed = String::new();
    let mut tokens_seen = 0;
    let out = generate(&mut session, &f.tok, &f.prompt, opts, |ev| {
        if let Event::Token { text, .. } = ev {
            streamed.push_str(text);
            tokens_seen += 1;
            return cancel_after.is_none_or(|n| tokens_seen < n);
        }
        true
    })
    .unwrap();
    (out, streamed)
}

#[test]
fn greedy_chat_answer_streams_and_stops_at_end_of_turn() {
    let Some(f) = fixture() else { return };
    let (out, streamed) = run(
        &f,
        &GenerateOptions {
            max_tokens: 64,
            ..Default::default()
        },
        None,
    );
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(
        streamed, out.text,
        "streamed pieces must add up to the final text"
    );
    assert_eq!(out.finish, FinishReason::Stop);
    assert!(
        f.tok.is_eog(*out.tokens.last().unwrap()),
        "ends on an end-of-turn token"
    );
    assert_eq!(out.prompt_tokens, f.prompt.len());
}

#[test]
fn stop_strings_cut_the_text_before_them() {
    let Some(f) = fixture() else { return };
    let opts = GenerateOptions {
        max_tokens: 64,
        stop: vec![" Paris".into()],
        ..Default::default()
    };
    let (out, streamed) = run(&f, &opts, None);
    assert_eq!(out.text, "The capital of France is");
    assert_eq!(streamed, out.text);
    assert_eq!(out.finish, FinishReason::Stop);
}

#[test]
fn token_budget_and_cancellation() {
    let Some(f) = fixture() else { return };
    let (out, _) = run(
        &f,
        &GenerateOptions {
            max_tokens: 3,
            ..Default::default()
        },
        None,
    );
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.text, "The capital of");

    let (out, streamed) = run(
        &f,
        &GenerateOptions {
            max_tokens: 64,
            ..Default::default()
        },
        Some(2),
    );
    assert_eq!(out.finish, FinishReason::Cancelled);
    assert_eq!(out.tokens.len(), 2);
    assert_eq!(streamed, "The capital");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(f) = fixture() else { return };
    let opts = |seed| GenerateOptions {
        max_tokens: 24,
        ignore_eos: true,
        sampler: SamplerConfig {
            temperature: 1.2,
            top_k: 50,
            top_p: 0.95,
            seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = run(&f, &opts(1), None).0;
    assert_eq!(a.tokens, run(&f, &opts(1), None).0.tokens);
    assert_eq!(a.tokens.len(), 24);
    let others: Vec<_> = (2..6).map(|s| run(&f, &opts(s), None).0.tokens).collect();
    assert!(
        others.iter().any(|t| *t != a.tokens),
        "different seeds should not all agree"
    );
}

#[test]
fn prompts_that_do_not_fit_are_rejected() {
    let Some(f) = fixture() else { return };
    let mut session = CpuSession::new(&f.model, 8).unwrap();
    let opts = GenerateOptions::default();
    assert!(generate(&mut session, &f.tok, &f.prompt, &opts, |_| true).is_err());
    assert!(generate(&mut session, &f.tok, &[], &opts, |_| true).is_err());
    assert!(session.is_empty());
}

/// `run_steps` in chunks (prefill alone, then a few tokens per call) gives what `generate`
/// gives, and reports the end in the call that reaches it.
#[test]
fn run_steps_in_chunks_equals_the_whole_loop() {
    use kwaainet_core::generate::Generator;
    let Some(f) = fixture() else { return };
    let opts = GenerateOptions {
        max_tokens: 64,
        ..Default::default()
    };
    let (whole, _) = run(&f, &opts, None);
    let session = CpuSession::new(&f.model, 256).unwrap();
    let mut g = Generator::new(session, &f.prompt, &opts).unwrap();
    let first = g.run_steps(&f.tok, 0).unwrap();
    assert!(first.tokens.is_empty() && first.text.is_empty() && first.finish.is_none());
    assert_eq!(first.prompt_tokens, f.prompt.len());
    let (mut text, mut tokens, mut calls) = (String::new(), Vec::new(), 0);
    loop {
        let b = g.run_steps(&f.tok, 3).unwrap();
        calls += 1;
        assert!(b.tokens.len() <= 3);
        text.push_str(&b.text);
        tokens.extend(&b.tokens);
        assert_eq!(b.completion_tokens, tokens.len());
        if let Some(reason) = b.finish {
            assert_eq!(reason, whole.finish);
            break;
        }
        assert!(calls < 64, "never finished");
    }
    assert_eq!((text, tokens), (whole.text, whole.tokens));
    // Over: later calls produce nothing.
    let after = g.run_steps(&f.tok, 3).unwrap();
    assert!(after.tokens.is_empty() && after.text.is_empty() && after.finish.is_some());
}
