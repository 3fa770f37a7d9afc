//! Training on burn with autodiff (CPU), alone and collaboratively: four trainers on their own
//! shards of the digits, averaging their parameters with butterfly all-reduce, reach the
//! quality of one trainer on all the data.
#![cfg(feature = "train")]
#![allow(clippy::unwrap_used)]

use kwaainet_core::codec::Codec;
use kwaainet_hivemind::train::Trainer;
use kwaainet_hivemind::train::digits::{Digits, DigitsError};

#[path = "common/collab.rs"]
mod collab;
use collab::{HIDDEN, SEED, collaborative, digits};

#[test]
fn the_digits_parse_and_bad_bytes_are_refused() {
    let d = digits();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.pixels.len(), 1797 * 64);
    let (train, test) = d.split();
    assert_eq!((train.len(), test.len()), (1438, 359));
    // Every class is in both halves.
    for c in 0..10u8 {
        assert!(train.labels.contains(&c) && test.labels.contains(&c));
    }
    assert_eq!(
        Digits::parse(&[0; 64]).unwrap_err(),
        DigitsError::Length(64)
    );
    let mut bad = vec![0u8; 130];
    bad[64 + 65] = 10;
    assert_eq!(
        Digits::parse(&bad).unwrap_err(),
        DigitsError::Range {
            row: 1,
            what: "label"
        }
    );
    bad[64 + 65] = 0;
    bad[3] = 17;
    assert_eq!(
        Digits::parse(&bad).unwrap_err(),
        DigitsError::Range {
            row: 0,
            what: "pixel"
        }
    );
}

#[test]
fn one_trainer_learns_the_digits_and_its_parameters_round_trip() {
    let (train, test) = digits().split();
    let mut t = Trainer::new(train, HIDDEN, SEED, 1);
    let (loss0, acc0) = t.evaluate(&test);
    for _ in 0..400 {
        assert!(t.step().is_finite());
    }
    let (loss, acc) = t.evaluate(&test);
    assert!(loss < loss0 / 4.0, "loss {loss0} -> {loss}");
    assert!(acc >= 0.93 && acc > acc0, "accuracy {acc0} -> {acc}");

    // The parameters as one vector, and back.
    let p = t.params();
    assert_eq!(p.len(), 64 * HIDDEN + HIDDEN + HIDDEN * 10 + 10);
    t.set_params(&p).unwrap();
    assert_eq!(t.params(), p);
    assert_eq!(t.evaluate(&test), (loss, acc));
    let err = t.set_params(&p[1..]).unwrap_err();
    assert_eq!((err.got, err.expected), (p.len() - 1, p.len()));
    t.set_params(&vec![0.0; p.len()]).unwrap();
    let (_, chance) = t.evaluate(&test);
    assert!(chance < 0.2, "a zeroed model scores {chance}");
    // Equal seeds start from equal models.
    let again = Trainer::new(digits(), HIDDEN, SEED, 99);
    let fresh = Trainer::new(digits(), HIDDEN, SEED, 1);
    assert!(
        again.params() == fresh.params(),
        "equal seeds, other models"
    );
    let other = Trainer::new(digits(), HIDDEN, SEED + 1, 1);
    assert!(other.params() != fresh.params());
}

#[tokio::test]
async fn four_trainers_averaging_their_parameters_match_one_trainer_on_all_the_data() {
    let (train, test) = digits().split();
    // One trainer: 400 steps of 32 images. Four trainers: 100 steps each on a quarter of the
    // data, averaged every 10 steps: the same number of images seen.
    let mut alone = Trainer::new(train, HIDDEN, SEED, 1);
    for _ in 0..400 {
        alone.step();
    }
    let (_, single) = alone.evaluate(&test);
    for codec in [Codec::F32, Codec::Blockwise8] {
        let trainers = collaborative(4, 10, 10, codec, |_, _| {}).await;
        let same = trainers.windows(2).all(|w| w[0].params() == w[1].params());
        let accs: Vec<f32> = trainers.iter().map(|t| t.evaluate(&test).1).collect();
        assert!(
            same,
            "{codec:?}: the trainers hold different parameters after averaging"
        );
        for (k, acc) in accs.iter().enumerate() {
            assert!(
                *acc >= single - 0.03,
                "{codec:?} trainer {k}: {acc} vs {single} alone"
            );
        }
    }
}
