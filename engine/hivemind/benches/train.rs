//! The training curve of collaborative training next to one trainer: test loss and accuracy
//! on the digits after each averaging round, for one trainer on all the data and for `n`
//! trainers on their shards averaging every 10 steps (f32 and blockwise8), the same number
//! of images seen in total at every row.
//!
//!   cargo bench -p kwaainet-hivemind --bench train [-- --trainers N --rounds R]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/collab.rs"]
mod collab;

use kwaainet_core::codec::Codec;
use kwaainet_hivemind::train::Trainer;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap())
}

fn main() {
    let (n, rounds, every) = (arg("--trainers", 4), arg("--rounds", 20), 10);
    let (train, test) = collab::digits().split();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut curves: Vec<Vec<(f32, f32)>> = Vec::new();
    for codec in [Codec::F32, Codec::Blockwise8] {
        let mut curve = Vec::new();
        rt.block_on(collab::collaborative(
            n,
            every,
            rounds,
            codec,
            |_, ts: &[Trainer]| {
                curve.push(ts[0].evaluate(&test));
            },
        ));
        curves.push(curve);
    }
    let mut alone = Trainer::new(train, collab::HIDDEN, collab::SEED, 1);
    println!(
        "digits: {n} trainers averaging every {every} steps of 32 images vs one trainer; test set of {}",
        test.len()
    );
    println!(
        "{:>6} {:>8} {:>22} {:>22} {:>22}",
        "round", "images", "alone loss / acc", "f32 loss / acc", "blockwise8 loss / acc"
    );
    for (r, (&(l1, a1), &(l2, a2))) in curves[0].iter().zip(&curves[1]).enumerate() {
        for _ in 0..n * every {
            alone.step();
        }
        let (l, a) = alone.evaluate(&test);
        println!(
            "{:>6} {:>8} {:>13.4} / {:.3} {:>13.4} / {:.3} {:>13.4} / {:.3}",
            r + 1,
            (r + 1) * n * every * 32,
            l,
            a,
            l1,
            a1,
            l2,
            a2
        );
    }
}
