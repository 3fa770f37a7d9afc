//! What a chain of span servers costs over the whole model in one process, per codec:
//! prefill and decode tokens/s locally and through 1, 2 and 3 hops, and hidden-state bytes
//! per token. The servers run in this process (`LocalServers`), so this measures the
//! protocol's own overhead (framing, codecs, copies), not a network: the ceiling a real
//! chain can reach on loopback.
//!
//!   KWAAINET_MODEL=path/to/model.gguf cargo bench -p kwaainet-swarm --bench chain
//!   (--runs N, default 3; --tokens N decode tokens, default 32)
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use kwaainet_core::codec::Codec;
use kwaainet_core::generate::{CpuSession, Session};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LoadSpec};
use kwaainet_swarm::{
    ClientConfig, CodecChoice, LocalServers, ServerConfig, ServerEntry, SpanServer, SwarmSession,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load(path: &str, spec: LoadSpec) -> Arc<Llama> {
    let mut r = BufReader::new(File::open(path).unwrap());
    let g = Gguf::read(&mut r).unwrap();
    Arc::new(Llama::load(&g, &mut r, spec).unwrap())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (prefill tok/s, decode tok/s) of `make()`'s session over `runs` runs.
fn measure(
    runs: usize,
    prompt: &[u32],
    tokens: usize,
    mut make: impl FnMut() -> Box<dyn Session>,
) -> (f64, f64) {
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut s = make();
        let t = Instant::now();
        let mut logits = s.forward(prompt).unwrap();
        pre.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..tokens {
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32);
            logits = s.forward(&[next]).unwrap();
        }
        dec.push(tokens as f64 / t.elapsed().as_secs_f64());
    }
    (median(pre), median(dec))
}

fn main() {
    let Ok(path) = std::env::var("KWAAINET_MODEL") else {
        eprintln!("set KWAAINET_MODEL to the model file (kwaainet fetch-model prints it)");
        return;
    };
    let (runs, tokens) = (arg("--runs", 3), arg("--tokens", 32));
    let full = load(
        &path,
        LoadSpec {
            blocks: 0..30,
            embed: true,
            head: true,
        },
    );
    let local = load(
        &path,
        LoadSpec {
            blocks: 0..0,
            embed: true,
            head: true,
        },
    );
    let n_layers = full.config().n_layers;
    // A 64-token prompt.
    let prompt: Vec<u32> = (0..64).map(|i| 1 + (i * 37) % 4000).collect();

    println!(
        "in-process chain, {} blocks, prompt {} tokens, {tokens} decoded, median of {runs}",
        n_layers,
        prompt.len()
    );
    let (p, d) = measure(runs, &prompt, tokens, || {
        Box::new(CpuSession::new(Arc::clone(&full), 512).unwrap())
    });
    println!(
        "{:<22} prefill {p:7.1} tok/s  decode {d:6.1} tok/s",
        "local (whole model)"
    );

    for hops in [1usize, 2, 3] {
        let servers = LocalServers::new();
        let mut entries = Vec::new();
        let cut = |k: usize| k * n_layers / hops;
        for h in 0..hops {
            let blocks: Range<usize> = cut(h)..cut(h + 1);
            let model = load(
                &path,
                LoadSpec {
                    blocks: blocks.clone(),
                    embed: false,
                    head: false,
                },
            );
            let config = ServerConfig {
                cache_tokens: 1 << 16,
                max_length: 512,
                max_sessions: 64,
                ..ServerConfig::new("m")
            };
            servers.add(&format!("s{h}"), Arc::new(SpanServer::new(model, config)));
            entries.push(ServerEntry::new(format!("s{h}"), blocks));
        }
        let connector = Arc::new(servers);
        for codec in Codec::ALL {
            let (p, d) = measure(runs, &prompt, tokens, || {
                let config = ClientConfig {
                    codec: CodecChoice::Fixed(codec),
                    max_length: 512,
                    ..ClientConfig::new("m")
                };
                Box::new(SwarmSession::new(
                    Arc::clone(&local),
                    entries.clone(),
                    connector.clone(),
                    config,
                    "bench",
                ))
            });
            // Bytes per decoded token, one way, every hop.
            let bytes = codec.encoded_len(full.config().dim) * hops;
            println!(
                "{:<22} prefill {p:7.1} tok/s  decode {d:6.1} tok/s  {bytes} B/token sent",
                format!("{hops} hop(s), {codec}")
            );
        }
    }
}
