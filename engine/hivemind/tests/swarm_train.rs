//! Collaborative training across real libp2p nodes on loopback: three trainers average their
//! parameters every 10 steps; one dies in the middle of a round (the others go on, waiting
//! no longer than the timeout, nothing corrupted); a new trainer joins by downloading the
//! current state from a member and takes its place; they end on the same, good model.
#![cfg(feature = "train")]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kwaainet_core::codec::Codec;
use kwaainet_hivemind::net::StateError;
use kwaainet_hivemind::train::Trainer;
use kwaainet_hivemind::{Group, Options, Report, all_reduce};
use libp2p::PeerId;

#[path = "common/collab.rs"]
mod collab;
mod common;
use common::{DiesBeforeAveraging, Node, nodes};

const STATE: [u8; 16] = *b"digits-classifer";
const EVERY: usize = 10;

/// One member: its node, its trainer, the state it serves to joining peers.
struct Member {
    node: Node,
    trainer: Trainer,
    served: Arc<Mutex<(f32, Vec<f32>)>>,
    progress: f32,
}

impl Member {
    fn new(node: Node, trainer: Trainer) -> Self {
        let served = Arc::new(Mutex::new((0.0, trainer.params())));
        let s = served.clone();
        node.averager
            .serve_state(STATE, Arc::new(move || s.lock().ok().map(|g| g.clone())));
        Self {
            node,
            trainer,
            served,
            progress: 0.0,
        }
    }
}

/// A round among `members` (in that order) with group key `round`; `dies` names the member
/// whose node goes down mid-round (after its parts are sent, before its average).
async fn round(members: &mut [Member], round: u8, dies: Option<usize>) -> Vec<Option<Report>> {
    let peers: Vec<PeerId> = members.iter().map(|m| m.node.peer).collect();
    let n = members.len();
    let mut params: Vec<Vec<f32>> = Vec::new();
    let mut opts = Vec::new();
    for m in members.iter_mut() {
        for _ in 0..EVERY {
            m.trainer.step();
        }
        let samples = m.trainer.take_samples() as f32;
        m.progress += samples;
        params.push(m.trainer.params());
        opts.push(Options {
            weight: samples,
            timeout: Duration::from_millis(1_500),
            ..Options::new(Codec::F32)
        });
    }
    let runs = members
        .iter()
        .zip(params.iter_mut())
        .zip(&opts)
        .enumerate()
        .map(|(me, ((m, x), o))| {
            let t = m
                .node
                .averager
                .round([round; 16], peers.clone(), me)
                .unwrap();
            let die = (dies == Some(me)).then(|| m.node.driver.abort_handle());
            let mut t = DiesBeforeAveraging {
                inner: t,
                parts: n - 1,
                sent: AtomicUsize::new(0),
                die,
            };
            let group = Group {
                key: [round; 16],
                shares: vec![1; n],
                me,
            };
            async move {
                all_reduce(&group, o, x, &mut t, tokio::time::sleep)
                    .await
                    .unwrap()
            }
        });
    let reports = join_all(runs).await;
    let mut out = Vec::new();
    for (k, ((m, p), r)) in members.iter_mut().zip(&params).zip(reports).enumerate() {
        // The member that died has no say in what the round did.
        if dies == Some(k) {
            out.push(None);
            continue;
        }
        m.trainer.set_params(p).unwrap();
        *m.served.lock().unwrap() = (m.progress, p.clone());
        out.push(Some(r));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainers_leave_and_join_mid_training_over_libp2p_and_end_on_one_good_model() {
    let (train, test) = collab::digits().split();
    let mut all = nodes(4).await;
    let joiner = all.pop().unwrap();
    let mut members: Vec<Member> = all
        .into_iter()
        .enumerate()
        .map(|(k, node)| {
            Member::new(
                node,
                Trainer::new(
                    train.shard(k, 3),
                    collab::HIDDEN,
                    collab::SEED,
                    k as u64 + 1,
                ),
            )
        })
        .collect();

    for r in 0..4 {
        let reports = round(&mut members, r, None).await;
        assert!(
            reports.iter().all(|r| r.as_ref().unwrap().complete(3)),
            "round {r}: {reports:?}"
        );
    }
    let same = |ms: &[Member]| {
        ms.windows(2)
            .all(|w| w[0].trainer.params() == w[1].trainer.params())
    };
    assert!(same(&members));

    // Member 2 dies in the middle of round 4: the others keep their own values for its part,
    // take the average of theirs and its, and wait no longer than the timeout.
    let before: Vec<Vec<f32>> = members.iter().map(|m| m.trainer.params()).collect();
    let started = Instant::now();
    let reports = round(&mut members, 4, Some(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for (m, r) in reports[..2].iter().enumerate() {
        let r = r.as_ref().unwrap();
        assert_eq!(r.kept_local, [2], "member {m}: {r:?}");
        assert_eq!(
            r.reduced_from,
            [0, 1, 2],
            "member {m}: its parts reached both before it died"
        );
        assert!(members[m].trainer.params().iter().all(|v| v.is_finite()));
    }
    assert_ne!(members[0].trainer.params(), before[0]);
    let dead = members.pop().unwrap();

    // A new trainer joins: it takes the current state from a member, not from scratch.
    let mut fresh = Trainer::new(train.shard(2, 3), collab::HIDDEN, collab::SEED + 100, 3);
    let (progress, state) = joiner
        .averager
        .download_state(members[0].node.peer, STATE)
        .await
        .unwrap();
    assert_eq!(state, members[0].trainer.params());
    assert_eq!(progress, members[0].progress);
    fresh.set_params(&state).unwrap();
    // Asking the dead member fails fast; a key nobody serves is a clear "no state".
    let t = Instant::now();
    let gone = joiner
        .averager
        .download_state(dead.node.peer, STATE)
        .await
        .unwrap_err();
    assert!(matches!(gone, StateError::Unreachable { .. }), "{gone}");
    assert!(t.elapsed() < Duration::from_secs(11));
    let none = joiner
        .averager
        .download_state(members[1].node.peer, [0; 16])
        .await
        .unwrap_err();
    assert_eq!(none, StateError::NoState(members[1].node.peer));
    members.push(Member::new(joiner, fresh));

    for r in 5..12 {
        let reports = round(&mut members, r, None).await;
        assert!(
            reports.iter().all(|r| r.as_ref().unwrap().complete(3)),
            "round {r}: {reports:?}"
        );
    }
    assert!(same(&members), "the members end on different models");
    let (_, acc) = members[0].trainer.evaluate(&test);
    assert!(acc >= 0.9, "accuracy {acc}");
    for m in &members {
        m.node.driver.abort();
    }
}
