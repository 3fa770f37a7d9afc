//! Collaborative training in one process, for the training test and benchmark.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::future::join_all;
use kwaainet_core::codec::Codec;
use kwaainet_hivemind::train::Trainer;
use kwaainet_hivemind::train::digits::Digits;
use kwaainet_hivemind::{Group, Options, all_reduce, local};

/// Hidden units of the classifier.
pub const HIDDEN: usize = 32;
/// The initial model's seed.
pub const SEED: u64 = 7;

/// The digits.
pub fn digits() -> Digits {
    Digits::parse(include_bytes!("../../data/digits.bin")).unwrap()
}

/// `n` trainers on their shards of the training half, averaging their parameters (weighted
/// by the images each saw) every `every` steps for `rounds` rounds, with `codec`.
pub async fn collaborative(
    n: usize,
    every: usize,
    rounds: usize,
    codec: Codec,
    mut after_round: impl FnMut(usize, &[Trainer]),
) -> Vec<Trainer> {
    let (train, _) = digits().split();
    let mut trainers: Vec<Trainer> = (0..n)
        .map(|k| Trainer::new(train.shard(k, n), HIDDEN, SEED, k as u64 + 1))
        .collect();
    let mut links = local::group(n);
    for round in 0..rounds {
        for t in &mut trainers {
            for _ in 0..every {
                t.step();
            }
        }
        let mut params: Vec<Vec<f32>> = trainers.iter().map(|t| t.params()).collect();
        let weights: Vec<f32> = trainers
            .iter_mut()
            .map(|t| t.take_samples() as f32)
            .collect();
        let groups: Vec<Group> = (0..n)
            .map(|me| Group {
                key: [round as u8; 16],
                shares: vec![1; n],
                me,
            })
            .collect();
        let opts: Vec<Options> = weights
            .iter()
            .map(|&w| Options {
                weight: w,
                timeout: Duration::from_secs(5),
                ..Options::new(codec)
            })
            .collect();
        let runs = groups
            .iter()
            .zip(&opts)
            .zip(params.iter_mut())
            .zip(links.iter_mut())
            .map(|(((g, o), x), l)| all_reduce(g, o, x, l, tokio::time::sleep));
        for r in join_all(runs).await {
            assert!(r.unwrap().complete(n));
        }
        for (t, p) in trainers.iter_mut().zip(&params) {
            t.set_params(p).unwrap();
        }
        after_round(round, &trainers);
    }
    trainers
}
