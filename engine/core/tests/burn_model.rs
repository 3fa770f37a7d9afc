//! The burn model against llama.cpp's greedy outputs, on burn's CPU backend (flex) and on wgpu.
//!
//! Needs the default model (see `common`; skipped with a note when absent unless
//! `KWAAINET_REQUIRE_MODEL=1`). The wgpu tests need an adapter; without a GPU use
//! lavapipe: `apt-get install -y mesa-vulkan-drivers` and
//! `VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json`. With
//! `KWAAINET_REQUIRE_WGPU=1` a missing adapter fails the test instead of skipping it.
//! Run in release: `cargo test --release -p kwaainet-core --features burn --test burn_model`.
#![cfg(feature = "burn")]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::fs::File;
use std::io::BufReader;
use std::sync::OnceLock;
use std::time::Instant;

use burn::tensor::Device;
use kwaainet_core::gguf::Gguf;
use kwaainet_core::models::llama::burn::{BurnKvCache, BurnLlama, read_f32};
use kwaainet_core::{Error, LlamaConfig, LoadSpec, SpanCache, SpanModel};

struct Case {
    name: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    stop_at_eos: bool,
}

fn reference_cases() -> Vec<Case> {
    let json = common::reference();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_owned(),
            prompt_ids: ids(&c["prompt_ids"]),
            output_ids: ids(&c["output_ids"]),
            stop_at_eos: c["stop_at_eos"].as_bool().unwrap(),
        })
        .collect()
}

/// The model on `device`, plus its EOS id; `None` (with a note) when the file is absent.
fn load(device: &Device) -> Option<(BurnLlama, u32)> {
    let t = Instant::now();
    let (model, eos) = load_spec(device, LoadSpec::full)?;
    println!("loaded on {device:?} in {:.1?}", t.elapsed());
    Some((model, eos))
}

/// The part of the model `spec` names, on `device`, plus its EOS id.
fn load_spec(
    device: &Device,
    spec: impl FnOnce(&LlamaConfig) -> LoadSpec,
) -> Option<(BurnLlama, u32)> {
    let path = common::model_path()?;
    let mut r = BufReader::new(File::open(&path).unwrap());
    let gguf = Gguf::read(&mut r).unwrap();
    let eos = gguf.get_u32("tokenizer.ggml.eos_token_id").unwrap();
    let spec = spec(&LlamaConfig::from_gguf(&gguf).unwrap());
    Some((BurnLlama::load(&gguf, &mut r, device, spec).unwrap(), eos))
}

/// Three peers' parts of the model on `device`: embedding and blocks 0..10, blocks 10..20,
/// blocks 20..30 and the head.
fn load_peers(device: &Device) -> Vec<BurnLlama> {
    [
        (0..10, true, false),
        (10..20, false, false),
        (20..30, false, true),
    ]
    .into_iter()
    .map(|(blocks, embed, head)| {
        let spec = |_: &LlamaConfig| LoadSpec {
            blocks,
            embed,
            head,
        };
        load_spec(device, spec).unwrap().0
    })
    .collect()
}

/// burn's wgpu runtime can be initialized once per process: share it between tests.
fn wgpu_device() -> Option<Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(
            || match pollster::block_on(Device::wgpu_options().init_async()) {
                Ok(d) => Some(d),
                Err(e) => {
                    if std::env::var("KWAAINET_REQUIRE_WGPU").as_deref() == Ok("1") {
                        panic!("KWAAINET_REQUIRE_WGPU=1 but no wgpu adapter: {e:?}");
                    }
                    println!("SKIP: no wgpu adapter ({e:?}); set VK_ICD_FILENAMES for lavapipe");
                    None
                }
            },
        )
        .clone()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding of up to `max_tokens` tokens, stopping after `eos` when given.
async fn greedy(
    model: &BurnLlama,
    prompt: &[u32],
    max_tokens: usize,
    eos: Option<u32>,
) -> Vec<u32> {
    let n = model.config().n_layers;
    let mut cache = BurnKvCache::new(
        model.config(),
        0..n,
        prompt.len() + max_tokens,
        model.device(),
    )
    .unwrap();
    let h = model.embed(prompt).unwrap();
    let h = model.forward_span(h, &mut cache).unwrap();
    let mut logits = model.last_logits(h).await.unwrap();
    let mut out = Vec::new();
    loop {
        let t = argmax(&logits);
        out.push(t);
        if Some(t) == eos || out.len() == max_tokens {
            return out;
        }
        let h = model.embed(&[t]).unwrap();
        let h = model.forward_span(h, &mut cache).unwrap();
        logits = model.last_logits(h).await.unwrap();
    }
}

/// Fraction of output positions whose argmax, given the reference prefix, is the reference id.
async fn teacher_forced_agreement(model: &BurnLlama, case: &Case) -> f64 {
    let n = model.config().n_layers;
    let out = &case.output_ids;
    let mut ids = case.prompt_ids.clone();
    ids.extend_from_slice(&out[..out.len() - 1]);
    let mut cache = BurnKvCache::new(model.config(), 0..n, ids.len(), model.device()).unwrap();
    let h = model.embed(&ids).unwrap();
    let h = model.forward_span(h, &mut cache).unwrap();
    let logits = read_f32(model.head(h).unwrap()).await.unwrap();
    let vocab = model.config().vocab_size;
    let first = case.prompt_ids.len() - 1;
    let hits = out
        .iter()
        .enumerate()
        .filter(|&(j, &want)| {
            let row = &logits[(first + j) * vocab..(first + j + 1) * vocab];
            argmax(row) == want
        })
        .count();
    hits as f64 / out.len() as f64
}

/// `capital-raw`: the greedy output equals llama.cpp's exactly.
async fn check_capital_raw(model: &BurnLlama, eos: u32, backend: &str) {
    let cases = reference_cases();
    let case = cases.iter().find(|c| c.name == "capital-raw").unwrap();
    let t = Instant::now();
    let eos = case.stop_at_eos.then_some(eos);
    let got = greedy(model, &case.prompt_ids, case.output_ids.len(), eos).await;
    assert_eq!(got, case.output_ids, "{backend}: capital-raw");
    println!(
        "{backend}: capital-raw matches llama.cpp ({:.1?})",
        t.elapsed()
    );
}

/// The longer cases: first 16 greedy ids exact and teacher-forced top-1 agreement >= 97%.
/// Reports every failure at once.
async fn check_long_cases(model: &BurnLlama, backend: &str) {
    let mut failures = Vec::new();
    for case in reference_cases().iter().filter(|c| c.name != "capital-raw") {
        let k = 16.min(case.output_ids.len());
        let got = greedy(model, &case.prompt_ids, k, None).await;
        if got != case.output_ids[..k] {
            failures.push(format!(
                "{} (first {k}): {got:?} != {:?}",
                case.name,
                &case.output_ids[..k]
            ));
        }
        let agree = teacher_forced_agreement(model, case).await;
        println!(
            "{backend}: {} teacher-forced top-1 agreement {agree:.4}",
            case.name
        );
        if agree < 0.97 {
            failures.push(format!("{}: agreement {agree:.4} < 0.97", case.name));
        }
    }
    assert!(failures.is_empty(), "{backend}: {failures:#?}");
}

/// Three peers holding only their parts of the model (embedding and blocks [0,10), blocks
/// [10,20), blocks [20,30) and the head), each with its own cache, give the logits of the
/// whole model, through a prefill and a few decode steps, with hidden states crossing between
/// them as host rows (as they cross the network): bit-identical when `rel_tol` is 0, else
/// within `rel_tol` of the largest logit.
async fn check_spans(model: &BurnLlama, peers: &[BurnLlama], backend: &str, rel_tol: f32) {
    let n = model.config().n_layers;
    assert_eq!(n, 30, "span test is written for the 30-block default model");
    let cases = reference_cases();
    let prompt = &cases[0].prompt_ids;
    let steps = [prompt.clone(), vec![504], vec![3575], vec![282]];
    let cap = 32;
    let mut whole = model.new_cache(0..n, cap).unwrap();
    let mut parts: Vec<_> = peers
        .iter()
        .map(|p| p.new_cache(p.spec().blocks.clone(), cap).unwrap())
        .collect();
    for ids in &steps {
        let pos = whole.len();
        let a = model.embed(ids).unwrap();
        let a = model.forward_span(a, &mut whole).unwrap();
        let la = model.last_logits(a).await.unwrap();
        let mut rows = None;
        let mut lb = None;
        for (i, (peer, cache)) in peers.iter().zip(&mut parts).enumerate() {
            let h = match rows.take() {
                None => peer.embed(ids).unwrap(),
                Some(r) => peer.hidden_from_rows(r).unwrap(),
            };
            let h = peer.forward_span(h, cache).unwrap();
            if i + 1 == peers.len() {
                lb = Some(peer.last_logits(h).await.unwrap());
            } else {
                rows = Some(peer.hidden_into_rows(h).await.unwrap());
            }
        }
        let lb = lb.unwrap();
        if rel_tol == 0.0 {
            assert!(
                la == lb,
                "{backend}: span-wise logits differ at position {pos}"
            );
        } else {
            let scale = la.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = la
                .iter()
                .zip(&lb)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            println!(
                "{backend}: span-wise logits at position {pos}: max diff {diff:e} (scale {scale})"
            );
            assert!(
                diff <= rel_tol * scale,
                "{backend}: span-wise logits differ at position {pos}: {diff} > {rel_tol} * {scale}"
            );
        }
    }
    assert!(parts.iter().all(|c| c.len() == whole.len()));

    // Misuse is an error, not a panic or a silent wrong answer.
    let (first, middle) = (&peers[0], &peers[1]);
    assert!(
        middle.embed(&[1]).is_err(),
        "the middle peer has no embedding"
    );
    let h = first.embed(&[1]).unwrap();
    assert!(
        first.last_logits(h.clone()).await.is_err(),
        "nor the first a head"
    );
    assert!(
        first.new_cache(10..20, cap).is_err(),
        "blocks it does not hold"
    );
    let mut foreign = BurnKvCache::new(model.config(), 10..20, cap, model.device()).unwrap();
    assert!(first.forward_span(h, &mut foreign).is_err());
    let pos = whole.len();
    let h_long = model.embed(&vec![1; cap - pos + 1]).unwrap();
    match model.forward_span(h_long, &mut whole) {
        Err(Error::ContextFull { needed, max }) => assert_eq!((needed, max), (cap + 1, cap)),
        other => panic!("context overflow gave {other:?}"),
    }
    assert_eq!(whole.len(), pos, "a refused call changes nothing");
    assert!(model.hidden_from_rows(vec![0.0; 7]).is_err());
    assert!(model.embed(&[u32::MAX]).is_err());
    whole.truncate(3);
    assert_eq!(whole.len(), 3);
    whole.clear();
    assert!(whole.is_empty());
    println!("{backend}: three peers' partial models match the whole model (tolerance {rel_tol})");
}

#[test]
fn flex_matches_llama_cpp_and_spans() {
    let device = Device::flex();
    let Some((model, eos)) = load(&device) else {
        return;
    };
    pollster::block_on(async {
        check_capital_raw(&model, eos, "flex").await;
        // Same backend, same kernels, same shapes, same order of operations: bit-identical.
        check_spans(&model, &load_peers(&device), "flex", 0.0).await;
    });
}

#[test]
fn wgpu_matches_llama_cpp_and_spans() {
    let Some(device) = wgpu_device() else {
        return;
    };
    let Some((mut model, eos)) = load(&device) else {
        return;
    };
    // Quantized weights stay quantized on the device: 112 MB for this model (538 MB in f32).
    assert!(model.is_quantized());
    assert!(
        model.weight_bytes() < 120_000_000,
        "{}",
        model.weight_bytes()
    );
    // Every step of a block runs in this crate's CubeCL kernels, each output formed by one
    // thread in a fixed order: results are reproducible, so the spans must give the same bits.
    model.set_exact_fma(true);
    let mut peers = load_peers(&device);
    // Each peer holds its part only: the middle one a third of the blocks, the first and
    // the last that plus the embedding (the head is tied to it), so together they hold the
    // model and one more embedding.
    let whole = model.weight_bytes();
    let bytes: Vec<usize> = peers.iter().map(BurnLlama::weight_bytes).collect();
    println!("peers' weights: {bytes:?} bytes, whole model {whole}");
    assert!(bytes[1] < whole / 3, "{bytes:?}");
    assert!(bytes.iter().all(|&b| b < whole), "{bytes:?}");
    assert!(bytes.iter().sum::<usize>() > whole, "{bytes:?}");
    for p in &mut peers {
        assert!(p.is_quantized());
        p.set_exact_fma(true);
    }
    pollster::block_on(async {
        check_capital_raw(&model, eos, "wgpu").await;
        check_spans(&model, &peers, "wgpu", 0.0).await;
    });
}

/// Whether the CPU engine runs llama.cpp's AVX2 arithmetic here (then the wgpu kernels, in
/// exact-FMA mode, must give the same bits).
fn cpu_is_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The wgpu model with its CubeCL kernels against the native CPU engine, logits of every step
/// of a prefill and four decode steps (then a second prefill into a partly filled cache): the
/// same bits where the CPU engine runs llama.cpp's AVX2 arithmetic.
#[test]
fn wgpu_logits_equal_the_cpu_engine() {
    let Some(device) = wgpu_device() else {
        return;
    };
    let Some((mut gpu, _)) = load(&device) else {
        return;
    };
    gpu.set_exact_fma(true);
    let path = common::model_path().unwrap();
    let mut r = BufReader::new(File::open(&path).unwrap());
    let gguf = Gguf::read(&mut r).unwrap();
    let config = kwaainet_core::LlamaConfig::from_gguf(&gguf).unwrap();
    let cpu =
        kwaainet_core::Llama::load(&gguf, &mut r, kwaainet_core::LoadSpec::full(&config)).unwrap();
    let n = config.n_layers;
    let cases = reference_cases();
    let chat = cases.iter().find(|c| c.name == "capital-chat").unwrap();
    // Past 32 positions, so attention crosses a padding boundary.
    let mut steps = vec![chat.prompt_ids.clone()];
    steps.extend(chat.output_ids[..4].iter().map(|&t| vec![t]));
    steps.push(chat.output_ids[4..9].to_vec());
    let cap = 64;
    let mut cc = cpu.new_cache(0..n, cap).unwrap();
    let mut gc = BurnKvCache::new(&config, 0..n, cap, &device).unwrap();
    let exact = cpu_is_avx2();
    pollster::block_on(async {
        for ids in &steps {
            let want = cpu.forward(ids, &mut cc).unwrap();
            let pos = gc.len();
            let h = gpu.forward_span(gpu.embed(ids).unwrap(), &mut gc).unwrap();
            let got = gpu.last_logits(h).await.unwrap();
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g.to_bits() != w.to_bits())
                .count();
            let max = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
            println!(
                "wgpu vs cpu at position {pos} (+{}): {differ} of {} logits differ, max {max:e}",
                ids.len(),
                want.len()
            );
            if exact {
                assert_eq!(
                    differ, 0,
                    "position {pos}: wgpu logits differ from the CPU engine"
                );
            } else {
                assert!(max < 1e-2, "position {pos}: max difference {max}");
            }
        }
    });
}

// KNOWN FAILING on flex (measured): llama.cpp rounds activations to 8 bits and K/V/attention
// weights to f16; the burn tensor-op path emulates that rounding, but the rounding is
// discontinuous and amplifies the last-bit differences of a different summation order: flex —
// capital-chat first 7/16 ids, agreement 31/32; long-prompt-chat first 16/16, agreement 61/64.
// On wgpu every step runs in CubeCL kernels in llama.cpp's order and the logits equal the CPU
// engine's bit for bit (`wgpu_logits_equal_the_cpu_engine`); the long cases are ignored there
// only because lavapipe takes several seconds per token.
#[test]
#[ignore = "known gap to llama.cpp on near-ties; run with --ignored"]
fn flex_long_cases() {
    let device = Device::flex();
    if let Some((model, _)) = load(&device) {
        pollster::block_on(check_long_cases(&model, "flex"));
    }
}

/// The longer cases on wgpu against llama.cpp's AVX2 outputs (which the CPU engine equals):
/// every greedy token.
#[test]
#[ignore = "minutes on lavapipe (software Vulkan); run with --ignored"]
fn wgpu_long_cases() {
    if let Some((mut model, _)) = wgpu_device().as_ref().and_then(load) {
        model.set_exact_fma(true);
        pollster::block_on(check_avx2_reference(&model, "wgpu"));
    }
}

/// Every greedy token of every case of llama.cpp's AVX2 reference (`tests/data`).
async fn check_avx2_reference(model: &BurnLlama, backend: &str) {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/smollm2-135m-q4_1.llamacpp-avx2.json")).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("output_ids"));
        let t = Instant::now();
        let got = greedy(model, &prompt, want.len(), None).await;
        println!(
            "{backend}: {name}: {} tokens in {:.1?}",
            got.len(),
            t.elapsed()
        );
        assert_eq!(got, want, "{backend}: {name} differs from llama.cpp (AVX2)");
    }
}

async fn speed(model: &mut BurnLlama, backend: &str) {
    for rounding in [true, false] {
        model.set_llama_cpp_rounding(rounding);
        speed_once(model, &format!("{backend} (llama.cpp rounding {rounding})")).await;
    }
}

async fn speed_once(model: &BurnLlama, backend: &str) {
    let n = model.config().n_layers;
    let prompt = &reference_cases()[2].prompt_ids;
    let decode = 16;
    let mut cache = BurnKvCache::new(
        model.config(),
        0..n,
        prompt.len() + decode + 1,
        model.device(),
    )
    .unwrap();
    // Warm-up: shader compilation and allocation happen on the first calls.
    let _ = greedy(model, &prompt[..8], 2, None).await;
    let t = Instant::now();
    let h = model.embed(prompt).unwrap();
    let h = model.forward_span(h, &mut cache).unwrap();
    let mut logits = model.last_logits(h).await.unwrap();
    let prefill = t.elapsed();
    let t = Instant::now();
    for _ in 0..decode {
        let h = model.embed(&[argmax(&logits)]).unwrap();
        let h = model.forward_span(h, &mut cache).unwrap();
        logits = model.last_logits(h).await.unwrap();
    }
    let dec = t.elapsed();
    println!(
        "{backend}: prefill {} tokens: {:.1} tok/s; decode {decode} tokens: {:.2} tok/s",
        prompt.len(),
        prompt.len() as f64 / prefill.as_secs_f64(),
        decode as f64 / dec.as_secs_f64()
    );
}

/// Prints tokens/s (not an assertion): `cargo test --release ... -- --ignored --nocapture speed`.
#[test]
#[ignore]
fn speed_flex() {
    let device = Device::flex();
    if let Some((mut model, _)) = load(&device) {
        pollster::block_on(speed(&mut model, "flex"));
    }
}

#[test]
#[ignore]
fn speed_wgpu() {
    if let Some((mut model, _)) = wgpu_device().as_ref().and_then(load) {
        pollster::block_on(speed(&mut model, "wgpu"));
    }
}
