//! Butterfly all-reduce between members in this process: exact means, the codecs' bounds, a
//! member that dies mid-round, a straggler, hostile frames.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::future::join_all;
use kwaainet_core::codec::Codec;
use kwaainet_hivemind::frame::{self, Header, Kind};
use kwaainet_hivemind::local::{self, LocalTransport};
use kwaainet_hivemind::{AvgError, Group, Options, Report, all_reduce};

const KEY: [u8; 16] = *b"test-group-key-1";

/// Deterministic values in about [-scale, scale].
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The weighted mean of `inputs[k]` over `members`, in member order with f64 sums.
fn mean(inputs: &[Vec<f32>], weights: &[f32], members: &[usize], i: usize) -> f32 {
    let (mut acc, mut total) = (0f64, 0f64);
    for &k in members {
        acc += weights[k] as f64 * inputs[k][i] as f64;
        total += weights[k] as f64;
    }
    (acc / total) as f32
}

fn group(shares: &[u32], me: usize) -> Group {
    Group {
        key: KEY,
        shares: shares.to_vec(),
        me,
    }
}

fn sleep(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(d)
}

/// Runs a round for every member in `honest` (the others do what the test makes them do).
async fn round(
    shares: &[u32],
    opts: &[Options],
    inputs: &[Vec<f32>],
    links: &mut [LocalTransport],
    honest: &[usize],
) -> Vec<(Vec<f32>, Report)> {
    let groups: Vec<Group> = honest.iter().map(|&m| group(shares, m)).collect();
    let mut outs: Vec<Vec<f32>> = honest.iter().map(|&m| inputs[m].clone()).collect();
    let mut mine: Vec<&mut LocalTransport> = links
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| honest.contains(i))
        .map(|(_, l)| l)
        .collect();
    let runs = groups
        .iter()
        .zip(outs.iter_mut())
        .zip(mine.iter_mut())
        .map(|((g, x), t)| all_reduce(g, &opts[g.me], x, &mut **t, sleep));
    let reports = join_all(runs).await;
    outs.into_iter()
        .zip(reports)
        .map(|(x, r)| (x, r.unwrap()))
        .collect()
}

#[tokio::test]
async fn lossless_rounds_equal_the_exact_weighted_mean_on_every_member() {
    for n in [2usize, 3, 4, 8] {
        let len = 10_007;
        let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, k as u64, 3.0)).collect();
        let shares: Vec<u32> = (0..n).map(|k| 1 + (k as u32 % 3) * 100).collect();
        let weights: Vec<f32> = (0..n).map(|k| (k + 1) as f32 * 8.0).collect();
        let opts: Vec<Options> = weights
            .iter()
            .map(|&w| Options {
                weight: w,
                ..Options::new(Codec::F32)
            })
            .collect();
        let mut links = local::group(n);
        let all: Vec<usize> = (0..n).collect();
        let outs = round(&shares, &opts, &inputs, &mut links, &all).await;
        let expected: Vec<f32> = (0..len).map(|i| mean(&inputs, &weights, &all, i)).collect();
        for (m, (x, report)) in outs.iter().enumerate() {
            assert!(report.complete(n), "n={n} member {m}: {report:?}");
            assert_eq!(report.averaged, all);
            assert_eq!(x, &expected, "n={n} member {m}");
            let total: f64 = weights.iter().map(|&w| w as f64).sum();
            assert_eq!(report.reduced_weight, total);
        }
    }
}

#[tokio::test]
async fn compressed_rounds_stay_within_the_codecs_bound_and_agree_to_the_bit() {
    let (n, len) = (4, 50_000);
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, 10 + k as u64, 2.0)).collect();
    let amax = inputs.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let all: Vec<usize> = (0..n).collect();
    let exact: Vec<f32> = (0..len)
        .map(|i| mean(&inputs, &[1.0; 4], &all, i))
        .collect();
    let mut sent = Vec::new();
    // Each value is quantized twice: the part on its way in, the average on its way out.
    for (codec, eps) in [
        (Codec::F32, 0.0),
        (Codec::F16, 2.0 / 2048.0),
        (Codec::Blockwise8, 0.08),
    ] {
        let mut links = local::group(n);
        let opts = vec![Options::new(codec); n];
        let outs = round(&[1; 4], &opts, &inputs, &mut links, &all).await;
        for (m, (x, report)) in outs.iter().enumerate() {
            assert!(report.complete(n), "{codec:?} member {m}: {report:?}");
            assert_eq!(x, &outs[0].0, "{codec:?}: member {m} holds other bits");
            let worst = x
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= eps * amax,
                "{codec:?}: error {worst} > {}",
                eps * amax
            );
        }
        sent.push(outs.iter().map(|(_, r)| r.bytes_sent).sum::<u64>());
    }
    // Hivemind's 8-bit: about 4x fewer bytes than f32 (here a bit more: each 12,500-value
    // part carries its own 1 KiB code table and one scale per 4,096 values).
    let ratio = sent[2] as f64 / sent[0] as f64;
    assert!(
        (0.25..0.28).contains(&ratio),
        "blockwise8 sends {ratio} of f32's bytes"
    );
    assert!((sent[1] as f64 / sent[0] as f64 - 0.5).abs() < 0.01);
}

/// Member `who`'s frames for every other reducer, as an honest member would send them.
fn parts_of(who: usize, shares: &[u32], x: &[f32], codec: Codec) -> Vec<(usize, Vec<u8>)> {
    let parts = kwaainet_hivemind::partition::partition(x.len(), shares).unwrap();
    (0..parts.len())
        .filter(|&j| j != who)
        .map(|j| {
            let r = parts[j].clone();
            let h = Header {
                kind: Kind::Part,
                group: KEY,
                from: who as u16,
                part: j as u16,
                codec,
                weight: 1.0,
                values: r.len() as u32,
            };
            (j, frame::encode(&h, &codec.encode(&x[r])))
        })
        .collect()
}

#[tokio::test]
async fn a_member_that_dies_mid_round_leaves_its_part_unaveraged_and_corrupts_nothing() {
    let (n, len) = (4, 9_999);
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, 20 + k as u64, 1.0)).collect();
    let mut links = local::group(n);
    // Member 3 sends its parts to the reducers, then dies before reducing its own.
    for (j, f) in parts_of(3, &[1; 4], &inputs[3], Codec::F32) {
        links[3].send_raw(j, f).unwrap();
    }
    links[3].leave();
    let opts = vec![
        Options {
            timeout: Duration::from_millis(500),
            ..Options::new(Codec::F32)
        };
        n
    ];
    let started = Instant::now();
    let outs = round(&[1; 4], &opts, &inputs, &mut links, &[0, 1, 2]).await;
    // Nobody waited for the dead member's average: sending to it failed at once.
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    let parts = kwaainet_hivemind::partition::partition(len, &[1; 4]).unwrap();
    let all: Vec<usize> = (0..n).collect();
    for (m, (x, report)) in outs.iter().enumerate() {
        assert_eq!(report.kept_local, vec![3], "member {m}");
        assert_eq!(
            report.reduced_from, all,
            "the dead member's parts still count"
        );
        assert!(report.unreachable.iter().all(|(to, _)| *to == 3));
        for i in 0..len {
            let want = if parts[3].contains(&i) {
                inputs[m][i]
            } else {
                mean(&inputs, &[1.0; 4], &all, i)
            };
            assert_eq!(x[i], want, "member {m} value {i}");
        }
    }
}

#[tokio::test]
async fn a_straggler_is_left_out_after_the_timeout() {
    let (n, len) = (4, 4_000);
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, 30 + k as u64, 1.0)).collect();
    let mut links = local::group(n);
    let timeout = Duration::from_millis(300);
    let opts = vec![
        Options {
            timeout,
            ..Options::new(Codec::F32)
        };
        n
    ];
    let started = Instant::now();
    // Member 3 is alive (its inbox takes frames) but never takes part.
    let outs = round(&[1; 4], &opts, &inputs, &mut links, &[0, 1, 2]).await;
    let took = started.elapsed();
    assert!(took >= 2 * timeout && took < 4 * timeout, "{took:?}");
    let parts = kwaainet_hivemind::partition::partition(len, &[1; 4]).unwrap();
    let honest = [0, 1, 2];
    for (m, (x, report)) in outs.iter().enumerate() {
        assert_eq!(report.reduced_from, honest);
        assert_eq!(report.kept_local, vec![3]);
        assert!(!report.complete(n));
        for i in 0..len {
            let want = if parts[3].contains(&i) {
                inputs[m][i]
            } else {
                mean(&inputs, &[1.0; 4], &honest, i)
            };
            assert_eq!(x[i], want, "member {m} value {i}");
        }
    }
}

#[tokio::test]
async fn hostile_frames_are_refused_with_their_reason_and_the_round_goes_on() {
    let (n, len) = (4, 1_000);
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, 40 + k as u64, 1.0)).collect();
    let mut links = local::group(n);
    let parts = kwaainet_hivemind::partition::partition(len, &[1; 4]).unwrap();
    let max_payload = 4 * 250;
    for j in 0..3usize {
        let part = parts[j].len();
        let ok = Header {
            kind: Kind::Part,
            group: KEY,
            from: 3,
            part: j as u16,
            codec: Codec::F32,
            weight: 1.0,
            values: part as u32,
        };
        let good = Codec::F32.encode(&inputs[3][parts[j].clone()]);
        let mut nan = inputs[3][parts[j].clone()].to_vec();
        nan[7] = f32::NAN;
        let hostile: Vec<Vec<u8>> = vec![
            b"not a frame at all, but long enough to hold a header".to_vec(),
            frame::encode(
                &Header {
                    group: [0; 16],
                    ..ok
                },
                &good,
            ),
            frame::encode(&Header { from: 1, ..ok }, &good),
            frame::encode(
                &Header {
                    part: ((j + 1) % 3) as u16,
                    ..ok
                },
                &good,
            ),
            frame::encode(
                &Header {
                    values: part as u32 - 1,
                    ..ok
                },
                &good[4..],
            ),
            frame::encode(&ok, &vec![0u8; max_payload + 4]),
            frame::encode(&ok, &Codec::F32.encode(&nan)),
            frame::encode(
                &Header {
                    weight: f32::INFINITY,
                    ..ok
                },
                &good,
            ),
            frame::encode(
                &Header {
                    codec: Codec::F16,
                    ..ok
                },
                &Codec::F16.encode(&inputs[3][parts[j].clone()]),
            ),
            frame::encode(
                &Header {
                    kind: Kind::Reduced,
                    part: 0,
                    ..ok
                },
                &good,
            ),
            frame::encode(
                &Header {
                    kind: Kind::State,
                    ..ok
                },
                &good,
            ),
            {
                let mut cut = frame::encode(&ok, &good);
                cut.truncate(cut.len() - 4);
                cut
            },
        ];
        for f in hostile {
            links[3].send_raw(j, f).unwrap();
        }
    }
    let opts = vec![
        Options {
            timeout: Duration::from_millis(300),
            max_payload,
            ..Options::new(Codec::F32)
        };
        n
    ];
    let outs = round(&[1; 4], &opts, &inputs, &mut links, &[0, 1, 2]).await;
    let honest = [0, 1, 2];
    for (m, (x, report)) in outs.iter().enumerate() {
        let why: Vec<&str> = report
            .refused
            .iter()
            .map(|(from, w)| {
                assert_eq!(*from, 3);
                w.as_str()
            })
            .collect();
        assert_eq!(why.len(), 12, "member {m}: {why:#?}");
        for (i, needle) in [
            "bad magic",
            "another group",
            "signed a frame as member 1",
            "sent to the reducer of part",
            "values for a part of",
            "over the limit",
            "not finite",
            "weight inf",
            "codec f16",
            "sent an average of part 0, not its own",
            "a state frame inside a round",
            "truncated",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                why[i].contains(needle),
                "member {m} frame {i}: {:?} lacks {needle:?}",
                why[i]
            );
        }
        assert_eq!(report.reduced_from, honest);
        for i in (0..len).filter(|i| !parts[3].contains(i)) {
            assert_eq!(
                x[i],
                mean(&inputs, &[1.0; 4], &honest, i),
                "member {m} value {i}"
            );
        }
    }
}

async fn refused(opts: Options, g: Group, x: &mut [f32], t: &mut LocalTransport) -> AvgError {
    all_reduce(&g, &opts, x, t, sleep).await.unwrap_err()
}

#[tokio::test]
async fn rounds_that_cannot_start_say_why_and_send_nothing() {
    let mut links = local::group(2);
    let mut x = vec![1.0f32; 1_000];
    let e = refused(
        Options::new(Codec::F32),
        group(&[1, 1], 2),
        &mut x,
        &mut links[0],
    )
    .await;
    assert_eq!(e, AvgError::NotMember { me: 2, size: 2 });
    let e = refused(
        Options {
            weight: -1.0,
            ..Options::new(Codec::F32)
        },
        group(&[1, 1], 0),
        &mut x,
        &mut links[0],
    )
    .await;
    assert_eq!(e, AvgError::Weight(-1.0));
    let e = refused(
        Options {
            max_payload: 100,
            ..Options::new(Codec::F32)
        },
        group(&[1, 1], 0),
        &mut x,
        &mut links[0],
    )
    .await;
    assert!(
        matches!(
            e,
            AvgError::PartTooLarge {
                values: 500,
                bytes: 2000,
                limit: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let e = refused(
        Options::new(Codec::F32),
        group(&[0, 0], 0),
        &mut x,
        &mut links[0],
    )
    .await;
    assert!(
        e.to_string().contains("every member's share is zero"),
        "{e}"
    );
    // Nothing reached the other member.
    links[0].leave();
    assert_eq!(
        links[1].send_raw(0, vec![1]).unwrap_err(),
        "member 0 has left"
    );
}

#[tokio::test]
async fn a_round_where_no_member_brings_weight_changes_nothing_and_says_so() {
    let (n, len) = (3, 300);
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| values(len, 50 + k as u64, 1.0)).collect();
    let mut links = local::group(n);
    let opts = vec![
        Options {
            weight: 0.0,
            timeout: Duration::from_millis(100),
            ..Options::new(Codec::F32)
        };
        n
    ];
    let outs = round(&[1; 3], &opts, &inputs, &mut links, &[0, 1, 2]).await;
    for (m, (x, report)) in outs.iter().enumerate() {
        assert_eq!(x, &inputs[m], "member {m}: values moved without weight");
        assert!(report.averaged.is_empty(), "member {m}: {report:?}");
        assert_eq!(report.reduced_weight, 0.0);
        assert_eq!(report.kept_local.len(), n - 1);
    }
}
