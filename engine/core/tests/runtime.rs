//! The one-generation runtime (`kwaainet_core::runtime`) on the default model: llama.cpp's
//! tokens through chunked steps on the CPU and (async, taken out and put back) on burn's
//! CPU backend, the life cycle of generations (a new start ends the old one, a generation
//! that is out is busy), and the requests it refuses.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::BufReader;
use std::rc::Rc;

use kwaainet_core::chat::{ChatMessage, Prompt};
use kwaainet_core::generate::{FinishReason, GenerateOptions};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::runtime::{GenerationId, Runtime};
use kwaainet_core::{Error, Llama, LlamaConfig, LoadSpec, SamplerConfig};

/// The model's GGUF header and its `capital-raw` reference case (prompt, llama.cpp's
/// greedy output, end of turn included).
struct Reference {
    gguf: Gguf,
    path: std::path::PathBuf,
    prompt: Vec<u32>,
    output: Vec<u32>,
}

/// A reference case of llama.cpp's greedy generations: (prompt ids, output ids, chat
/// messages if it has them). `avx2`: llama.cpp's run on an x86-64 AVX2 CPU, whose
/// arithmetic this engine's AVX2 kernels reproduce (the shared reference, from another
/// CPU, parts from it at near-ties: see `reference.rs`).
fn case(name: &str, avx2: bool) -> (Vec<u32>, Vec<u32>, Vec<ChatMessage>) {
    let json: serde_json::Value = if avx2 {
        serde_json::from_str(include_str!("data/smollm2-135m-q4_1.llamacpp-avx2.json")).unwrap()
    } else {
        common::reference()
    };
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect()
    };
    let messages = case["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    (ids(&case["prompt_ids"]), ids(&case["output_ids"]), messages)
}

fn reference() -> Option<Reference> {
    let path = common::model_path()?;
    let gguf = common::read_metadata(&path).unwrap();
    let (prompt, output, _) = case("capital-raw", false);
    Some(Reference {
        gguf,
        prompt,
        output,
        path,
    })
}

fn load(r: &Reference, spec: impl FnOnce(&LlamaConfig) -> LoadSpec) -> Rc<Llama> {
    let mut file = BufReader::new(File::open(&r.path).unwrap());
    let config = LlamaConfig::from_gguf(&r.gguf).unwrap();
    Rc::new(Llama::load(&r.gguf, &mut file, spec(&config)).unwrap())
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        ..GenerateOptions::default()
    }
}

/// Steps `id` three tokens at a time until it ends: (tokens, text, finish).
fn drain(
    rt: &mut Runtime<Rc<Llama>>,
    id: GenerationId,
) -> (Vec<u32>, String, Option<FinishReason>) {
    let (mut tokens, mut text) = (Vec::new(), String::new());
    for _ in 0..64 {
        let b = rt.step(id, 3).unwrap();
        assert!(b.tokens.len() <= 3);
        tokens.extend(&b.tokens);
        text.push_str(&b.text);
        if b.finish.is_some() {
            return (tokens, text, b.finish);
        }
    }
    panic!("never finished");
}

#[test]
fn cpu_runtime_gives_llama_cpp_tokens_in_chunks() {
    let Some(r) = reference() else { return };
    let mut rt = Runtime::new(&r.gguf, load(&r, LoadSpec::full), 256, 1).unwrap();
    let id = rt.start(Prompt::Tokens(&r.prompt), &greedy(64)).unwrap();
    let prefill = rt.step(id, 0).unwrap();
    assert_eq!(prefill.prompt_tokens, r.prompt.len());
    assert!(prefill.tokens.is_empty() && prefill.finish.is_none());
    let (tokens, text, finish) = drain(&mut rt, id);
    assert_eq!(tokens, r.output);
    assert_eq!(finish, Some(FinishReason::Stop));
    assert!(text.contains("Paris"), "{text:?}");

    // Chat turns through the model's template: llama.cpp's prompt and tokens (all of them
    // on AVX2, else up to the near-tie at token 7).
    let avx2 = kwaainet_core::kernels::bit_exact_with_avx2();
    let (prompt, output, turns) = case("capital-chat", avx2);
    assert_eq!(rt.prompt_ids(Prompt::Chat(&turns)).unwrap(), prompt);
    let id = rt
        .start(Prompt::Chat(&turns), &greedy(output.len()))
        .unwrap();
    let (tokens, _, finish) = drain(&mut rt, id);
    assert_eq!(finish, Some(FinishReason::Length));
    let exact = if avx2 { output.len() } else { 7 };
    assert_eq!(tokens[..exact], output[..exact]);
}

#[test]
fn a_new_start_ends_the_running_generation() {
    let Some(r) = reference() else { return };
    let mut rt = Runtime::new(&r.gguf, load(&r, LoadSpec::full), 64, 1).unwrap();
    let prompt = Prompt::Tokens(&r.prompt);
    let first = rt.start(prompt, &greedy(8)).unwrap();
    rt.step(first, 2).unwrap();
    let second = rt.start(prompt, &greedy(8)).unwrap();
    assert_ne!(first, second);
    assert!(matches!(rt.step(first, 1), Err(Error::Ended)));
    assert!(!rt.is_running(first) && rt.is_running(second));

    // Taken out (as a host does while it awaits the device): busy until put back.
    let g = rt.take(second).unwrap();
    assert!(matches!(rt.take(second), Err(Error::Busy)));
    assert!(matches!(rt.step(second, 1), Err(Error::Busy)));
    rt.restore(second, g).unwrap();
    assert_eq!(rt.step(second, 2).unwrap().tokens, r.output[..2]);

    // Replaced while out: putting it back fails and the newer one runs on.
    let g = rt.take(second).unwrap();
    let third = rt.start(prompt, &greedy(8)).unwrap();
    assert!(matches!(rt.restore(second, g), Err(Error::Ended)));
    assert_eq!(rt.step(third, 1).unwrap().tokens, r.output[..1]);

    // Bad sampler settings are refused, and a refused request still ends the one before it.
    let bad: [fn(&mut SamplerConfig); 5] = [
        |c| c.temperature = -0.5,
        |c| c.temperature = f32::NAN,
        |c| c.top_p = 0.0,
        |c| c.top_p = 1.5,
        |c| c.repetition_penalty = 0.0,
    ];
    for set in bad {
        let mut opts = greedy(8);
        set(&mut opts.sampler);
        let e = rt.start(prompt, &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    assert!(matches!(rt.step(third, 1), Err(Error::Ended)));
    rt.end();
    assert!(!rt.is_running(third));
}

#[test]
fn requests_the_runtime_cannot_serve_are_refused() {
    let Some(r) = reference() else { return };
    let model = load(&r, LoadSpec::full);
    let train = model.config().context_length;
    for bad in [0, train + 1] {
        let e = Runtime::new(&r.gguf, Rc::clone(&model), bad, 1).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    // A span without the head cannot generate.
    let part = load(&r, |c| LoadSpec {
        blocks: 0..c.n_layers,
        embed: true,
        head: false,
    });
    let e = Runtime::new(&r.gguf, part, 64, 1).unwrap_err();
    assert!(e.to_string().contains("whole model"), "{e}");

    let mut rt = Runtime::new(&r.gguf, model, 8, 1).unwrap();
    let e = rt.start(Prompt::Tokens(&r.prompt), &greedy(4)).unwrap_err();
    assert!(
        matches!(e, Error::ContextFull { needed, max: 8 } if needed == r.prompt.len()),
        "{e}"
    );
    let vocab = rt.config().vocab_size as u32;
    for prompt in [
        Prompt::Tokens(&[]),
        Prompt::Tokens(&[vocab]),
        Prompt::Text(""),
    ] {
        let e = rt.start(prompt, &greedy(4)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    assert!(matches!(
        rt.detokenize(&[1, vocab]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        rt.detokenize(&rt.tokenize("Hello, world", false).unwrap())
            .unwrap(),
        "Hello, world"
    );
}

/// burn's CPU backend through the async path the WebGPU engine uses: take the generation
/// out, await its steps, put it back.
#[cfg(feature = "burn")]
#[test]
fn burn_runtime_steps_async_to_llama_cpp_tokens() {
    use burn::tensor::Device;
    use kwaainet_core::models::llama::burn::BurnLlama;

    let Some(r) = reference() else { return };
    let mut file = BufReader::new(File::open(&r.path).unwrap());
    let spec = LoadSpec::full(&LlamaConfig::from_gguf(&r.gguf).unwrap());
    let model = BurnLlama::load(&r.gguf, &mut file, &Device::flex(), spec).unwrap();
    let mut rt = Runtime::new(&r.gguf, Rc::new(model), 64, 1).unwrap();
    let id = rt.start(Prompt::Tokens(&r.prompt), &greedy(64)).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..64 {
        let mut g = rt.take(id).unwrap();
        let tokenizer = std::sync::Arc::clone(rt.tokenizer());
        let b = pollster::block_on(g.run_steps_async(&tokenizer, 4)).unwrap();
        rt.restore(id, g).unwrap();
        tokens.extend(b.tokens);
        if b.finish.is_some() {
            break;
        }
    }
    assert_eq!(tokens, r.output);
}
