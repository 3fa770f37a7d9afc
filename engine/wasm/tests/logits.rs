//! The engine's logits on this machine against the checksums in `data/logits-avx2.json`,
//! which `engine.test.mjs` checks the wasm build against too: on x86-64 with AVX2 both
//! must be the same bits.
//!
//! `KWAAINET_PRINT_LOGITS=1 cargo test -p kwaainet-wasm --release --test logits -- --nocapture`
//! prints the checksums (to refresh the file after an intended numerical change).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;

use kwaainet_wasm::engine::Engine;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    tokens: Vec<u32>,
    fnv1a32: String,
}

/// FNV-1a (32-bit) over the little-endian bytes of each value.
fn fnv1a32(v: &[f32]) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for x in v {
        for b in x.to_le_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

fn model_path() -> Option<PathBuf> {
    let p = match std::env::var_os("KWAAINET_MODEL") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("KWAAINET_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kwaainet")))?
            .join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("KWAAINET_REQUIRE_MODEL").as_deref() != Ok("1"),
        "model not found at {} and KWAAINET_REQUIRE_MODEL=1",
        p.display()
    );
    eprintln!("skipping: model not found at {}", p.display());
    None
}

#[test]
fn logits_match_the_avx2_checksums() {
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    let Some(path) = model_path() else { return };
    let engine = Engine::load(&std::fs::read(path).unwrap(), 256.0).unwrap();
    let cases: Vec<Case> = serde_json::from_str(include_str!("data/logits-avx2.json")).unwrap();
    let print = std::env::var("KWAAINET_PRINT_LOGITS").as_deref() == Ok("1");
    for c in cases {
        let got = format!(
            "{:#010x}",
            fnv1a32(&engine.prompt_logits(&c.tokens).unwrap())
        );
        if print {
            eprintln!("{}: {got}", c.name);
        } else if avx2 {
            assert_eq!(
                got, c.fnv1a32,
                "{}: logits differ from the AVX2 checksum",
                c.name
            );
        }
    }
}

#[test]
fn a_streamed_load_gives_the_same_logits() {
    let Some(path) = model_path() else { return };
    let bytes = std::fs::read(path).unwrap();
    let whole = Engine::load(&bytes, 64.0).unwrap();
    // Chunks that split the header, tensors and padding alike.
    let streamed = kwaainet_core::gguf_stream::load_in_chunks(&bytes, 999_983).unwrap();
    let streamed = Engine::load_streamed(streamed, 64.0).unwrap();
    let tokens = [1, 504, 3458, 282, 4649, 314];
    let a = whole.prompt_logits(&tokens).unwrap();
    let b = streamed.prompt_logits(&tokens).unwrap();
    assert_eq!(fnv1a32(&a), fnv1a32(&b));
    assert_eq!(
        streamed.info().unwrap().limits.model_bytes,
        bytes.len() as f64
    );
}
