//! Butterfly all-reduce between real libp2p nodes on loopback (TCP, noise, yamux): the same
//! bits as in process, an outsider's frames never counted, a node killed mid-round.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kwaainet_core::codec::Codec;
use kwaainet_hivemind::frame::{self, Header, Kind};
use kwaainet_hivemind::net::NetError;
use kwaainet_hivemind::{Group, Options, Report, Transport, all_reduce, local};
use libp2p::PeerId;
use tokio::task::JoinHandle;

mod common;
use common::{DiesBeforeAveraging, Node, nodes};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn sleep(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(d)
}

/// Every node runs the round of `key` with its input; results in member order.
async fn round_on(
    nodes: &[Node],
    key: [u8; 16],
    opts: &Options,
    inputs: &[Vec<f32>],
) -> Vec<(Vec<f32>, Report)> {
    let members: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
    let tasks: Vec<JoinHandle<(Vec<f32>, Report)>> = nodes
        .iter()
        .enumerate()
        .map(|(me, node)| {
            let mut t = node.averager.round(key, members.clone(), me).unwrap();
            let (opts, mut x) = (opts.clone(), inputs[me].clone());
            let group = Group {
                key,
                shares: vec![1; members.len()],
                me,
            };
            tokio::spawn(async move {
                let r = all_reduce(&group, &opts, &mut x, &mut t, sleep)
                    .await
                    .unwrap();
                (x, r)
            })
        })
        .collect();
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_average_to_the_same_bits_as_in_process() {
    let nodes = nodes(4).await;
    let inputs: Vec<Vec<f32>> = (0..4).map(|k| values(100_003, k)).collect();
    for codec in [Codec::F32, Codec::Blockwise8] {
        let opts = Options::new(codec);
        let key = [codec as u8 + 1; 16];
        let over_net = round_on(&nodes, key, &opts, &inputs).await;

        let mut links = local::group(4);
        let mut outs = inputs.clone();
        let runs = outs
            .iter_mut()
            .zip(links.iter_mut())
            .enumerate()
            .map(|(me, (x, t))| {
                let group = Group {
                    key,
                    shares: vec![1; 4],
                    me,
                };
                let opts = opts.clone();
                async move { all_reduce(&group, &opts, x, t, sleep).await.unwrap() }
            });
        join_all(runs).await;
        for (me, (x, report)) in over_net.iter().enumerate() {
            assert!(report.complete(4), "{codec:?} node {me}: {report:?}");
            assert_eq!(
                x, &outs[me],
                "{codec:?} node {me}: other bits than in process"
            );
            assert_eq!(x, &over_net[0].0);
        }
    }
    // A second round under an open key is refused; a member that is not this node too.
    let members: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
    let _open = nodes[0]
        .averager
        .round([9; 16], members.clone(), 0)
        .unwrap();
    assert_eq!(
        nodes[0]
            .averager
            .round([9; 16], members.clone(), 0)
            .unwrap_err(),
        NetError::Duplicate
    );
    // A peer outside an open round is refused from its frame's header: its send fails.
    let _pair = nodes[0]
        .averager
        .round([7; 16], vec![members[0], members[1]], 0)
        .unwrap();
    let outsider = nodes[2]
        .averager
        .round([7; 16], vec![members[2], members[0]], 0)
        .unwrap();
    let h = Header {
        kind: Kind::Part,
        group: [7; 16],
        from: 0,
        part: 1,
        codec: Codec::F32,
        weight: 1.0,
        values: 1,
    };
    let refused = outsider
        .send(1, frame::encode(&h, &Codec::F32.encode(&[1.0])))
        .await;
    assert!(refused.unwrap_err().contains("did not take the frame"));
    assert!(matches!(
        nodes[0].averager.round([8; 16], members, 1),
        Err(NetError::NotMe { me: 1, size: 4 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_frames_never_count_and_a_node_killed_mid_round_corrupts_nothing() {
    let mut all = nodes(5).await;
    let outsider = all.pop().unwrap();
    let members: Vec<PeerId> = all.iter().map(|n| n.peer).collect();
    let len = 40_000;
    let inputs: Vec<Vec<f32>> = (0..4).map(|k| values(len, 10 + k)).collect();
    let key = [42; 16];

    // The outsider knows the key and claims to be member 0, with absurd values, before the
    // members open the round (the frame waits in member 1's early buffer).
    let pretender = outsider
        .averager
        .round(key, vec![outsider.peer, members[1]], 0)
        .unwrap();
    let h = Header {
        kind: Kind::Part,
        group: key,
        from: 0,
        part: 1,
        codec: Codec::F32,
        weight: 1e9,
        values: 10_000,
    };
    pretender
        .send(1, frame::encode(&h, &Codec::F32.encode(&[1e6; 10_000])))
        .await
        .unwrap();

    let opts = Options {
        timeout: Duration::from_millis(1_500),
        ..Options::new(Codec::F32)
    };
    let started = Instant::now();
    let mut tasks: Vec<JoinHandle<(Vec<f32>, Report)>> = Vec::new();
    for (me, node) in all.iter().enumerate() {
        let t = node.averager.round(key, members.clone(), me).unwrap();
        // Node 3 dies mid-round: once its parts are sent and the others' have reached it,
        // the node goes down as it is about to send its average back.
        let die = (me == 3).then(|| node.driver.abort_handle());
        let mut t = DiesBeforeAveraging {
            inner: t,
            parts: 3,
            sent: AtomicUsize::new(0),
            die,
        };
        let (opts, mut x) = (opts.clone(), inputs[me].clone());
        let group = Group {
            key,
            shares: vec![1; 4],
            me,
        };
        tasks.push(tokio::spawn(async move {
            let r = all_reduce(&group, &opts, &mut x, &mut t, sleep)
                .await
                .unwrap();
            (x, r)
        }));
    }
    let dead = tasks.pop().unwrap();
    let outs: Vec<(Vec<f32>, Report)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    dead.abort();
    // The live members waited once for the dead member's average, and no longer.
    let took = started.elapsed();
    assert!(took >= opts.timeout && took < 3 * opts.timeout, "{took:?}");

    let parts = kwaainet_hivemind::partition::partition(len, &[1; 4]).unwrap();
    let all4 = [0, 1, 2, 3];
    for (m, (x, report)) in outs.iter().enumerate() {
        // Its parts reached every reducer before it died, and the pretender's never counted.
        assert_eq!(report.reduced_from, all4, "member {m}: {report:?}");
        assert_eq!(report.averaged, [0, 1, 2], "member {m}");
        assert_eq!(report.kept_local, [3], "member {m}");
        assert!(
            report.refused.is_empty(),
            "member {m}: {:?}",
            report.refused
        );
        for i in 0..len {
            let want = if parts[3].contains(&i) {
                inputs[m][i]
            } else {
                let acc: f64 = all4.iter().map(|&k| inputs[k][i] as f64).sum();
                (acc / 4.0) as f32
            };
            assert_eq!(x[i], want, "member {m} value {i}");
        }
    }
    for n in &all {
        n.driver.abort();
    }
    outsider.driver.abort();
}
