//! What the swarm's test files share: the model (found as the core tests find it), the
//! parts a server or a client loads, the reference prompts and a greedy loop.
#![allow(dead_code, clippy::unwrap_used)]

#[path = "../../../core/tests/common/mod.rs"]
pub mod common;

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::sync::Arc;

use kwaainet_core::generate::Session;
use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LoadSpec};

/// The model id the test servers announce and the clients ask for.
pub const MODEL_ID: &str = "smollm2-135m-q4_1";

/// The default model's `spec` part, or `None` (the test skips) when the model is absent.
pub fn load(spec: LoadSpec) -> Option<Arc<Llama>> {
    let path = common::model_path()?;
    let mut r = BufReader::new(File::open(path).unwrap());
    let g = Gguf::read(&mut r).unwrap();
    Some(Arc::new(Llama::load(&g, &mut r, spec).unwrap()))
}

/// What a span server holds: its blocks only.
pub fn span(blocks: Range<usize>) -> LoadSpec {
    LoadSpec {
        blocks,
        embed: false,
        head: false,
    }
}

/// The whole model (the reference a swarm must match).
pub fn whole() -> Option<Arc<Llama>> {
    load(LoadSpec {
        blocks: 0..30,
        embed: true,
        head: true,
    })
}

/// What a swarm client holds: the embedding and the head.
pub fn client_model() -> Option<Arc<Llama>> {
    load(LoadSpec {
        blocks: 0..0,
        embed: true,
        head: true,
    })
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` greedy ids after `prompt` (no stop) through `session`; `each(i)` runs after token
/// `i` (to kill a server mid-generation).
pub fn greedy(
    session: &mut dyn Session,
    prompt: &[u32],
    n: usize,
    mut each: impl FnMut(usize),
) -> Vec<u32> {
    let mut logits = session.forward(prompt).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let t = argmax(&logits);
        out.push(t);
        each(i);
        if i + 1 < n {
            logits = session.forward(&[t]).unwrap();
        }
    }
    out
}

/// The prompts of llama.cpp's reference cases, as token ids.
pub fn prompts() -> Vec<Vec<u32>> {
    common::reference()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect()
        })
        .collect()
}
