//! Test helpers shared by the integration tests: where the default model is, and the
//! llama.cpp reference generations.
//!
//! The model is found through `KWAAINET_MODEL` or the default cache path. When it is
//! absent, tests print a skip line and pass, unless `KWAAINET_REQUIRE_MODEL=1` (as
//! `npm test` sets), which turns the absence into a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use kwaainet_core::gguf::{Gguf, Value};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model, if it is on this machine.
pub fn model_path() -> Option<PathBuf> {
    let p = match std::env::var_os("KWAAINET_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("KWAAINET_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kwaainet"))
                })?;
            cache.join("models").join(MODEL_FILE)
        }
    };
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("KWAAINET_REQUIRE_MODEL").as_deref() != Ok("1"),
        "model not found at {} and KWAAINET_REQUIRE_MODEL=1",
        p.display()
    );
    eprintln!(
        "skipping: model not found at {} (run `kwaainet fetch-model`)",
        p.display()
    );
    None
}

/// The reference generations of llama.cpp (a copy of the project's shared reference data).
pub fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("../data/smollm2-135m-q4_1.llamacpp.json")).unwrap()
}

/// Reads the header and metadata of a GGUF file.
pub fn read_metadata(path: &Path) -> kwaainet_core::Result<Gguf> {
    let mut r = BufReader::new(File::open(path)?);
    Ok(Gguf::read(&mut r)?)
}

/// A `Gguf` holding only `metadata` (for tokenizer and template tests).
pub fn gguf(metadata: Vec<(&str, Value)>) -> Gguf {
    Gguf {
        version: 3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        tensors: vec![],
    }
}

/// `Value::Array` of strings.
pub fn strs(items: &[&str]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|s| Value::String((*s).to_owned()))
            .collect(),
    )
}
