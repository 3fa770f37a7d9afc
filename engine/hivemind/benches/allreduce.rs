//! All-reduce of a 10 M-parameter vector between 2, 4 and 8 real libp2p nodes on loopback
//! (TCP, noise, yamux), per codec: wall time of a round (median of `KWAAINET_BENCH_ROUNDS`,
//! default 3) and the bytes each member sends, next to the fp32 payload it averages.
//!
//!   cargo bench -p kwaainet-hivemind --bench allreduce [-- --params N]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use futures::future::join_all;
use kwaainet_core::codec::Codec;
use kwaainet_hivemind::{Group, Options, all_reduce};
use libp2p::PeerId;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let params: usize = args
        .iter()
        .position(|a| a == "--params")
        .and_then(|i| args.get(i + 1))
        .map_or(10_000_000, |v| v.parse().unwrap());
    let rounds: usize = std::env::var("KWAAINET_BENCH_ROUNDS").map_or(3, |v| v.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "all-reduce of {params} f32 parameters ({:.1} MB) on loopback libp2p, median of {rounds} rounds",
        params as f64 * 4e-6
    );
    println!(
        "{:>6} {:>11} {:>10} {:>16} {:>12} {:>10}",
        "peers", "codec", "round s", "sent/member MB", "vs f32 sent", "max |err|"
    );
    let mut key = 0u8;
    for n in [2usize, 4, 8] {
        rt.block_on(async {
            let nodes = common::nodes(n).await;
            let members: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|k| {
                    (0..params)
                        .map(|i| ((i * 7 + k * 13) % 1000) as f32 / 500.0 - 1.0)
                        .collect()
                })
                .collect();
            let exact: Vec<f32> = (0..params)
                .map(|i| (inputs.iter().map(|x| x[i] as f64).sum::<f64>() / n as f64) as f32)
                .collect();
            let mut f32_sent = 0f64;
            for codec in [Codec::F32, Codec::F16, Codec::Blockwise8] {
                let mut times = Vec::new();
                let (mut sent, mut err) = (0u64, 0f32);
                for _ in 0..rounds {
                    key = key.wrapping_add(1);
                    let opts = Options {
                        timeout: Duration::from_secs(60),
                        max_payload: 256 << 20,
                        ..Options::new(codec)
                    };
                    let started = Instant::now();
                    let tasks = nodes.iter().enumerate().map(|(me, node)| {
                        let mut t = node.averager.round([key; 16], members.clone(), me).unwrap();
                        let (opts, mut x) = (opts.clone(), inputs[me].clone());
                        let group = Group {
                            key: [key; 16],
                            shares: vec![1; n],
                            me,
                        };
                        tokio::spawn(async move {
                            let r = all_reduce(&group, &opts, &mut x, &mut t, tokio::time::sleep)
                                .await
                                .unwrap();
                            (x, r)
                        })
                    });
                    let outs: Vec<_> = join_all(tasks)
                        .await
                        .into_iter()
                        .map(|r| r.unwrap())
                        .collect();
                    times.push(started.elapsed().as_secs_f64());
                    assert!(outs.iter().all(|(_, r)| r.complete(n)));
                    sent = outs.iter().map(|(_, r)| r.bytes_sent).sum::<u64>() / n as u64;
                    err = outs[0]
                        .0
                        .iter()
                        .zip(&exact)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                }
                times.sort_by(f64::total_cmp);
                if codec == Codec::F32 {
                    f32_sent = sent as f64;
                }
                println!(
                    "{n:>6} {:>11} {:>10.3} {:>16.1} {:>11.2}x {:>10.2e}",
                    codec.name(),
                    times[times.len() / 2],
                    sent as f64 / 1e6,
                    f32_sent / sent as f64,
                    err
                );
            }
            for node in &nodes {
                node.driver.abort();
            }
        });
    }
}
