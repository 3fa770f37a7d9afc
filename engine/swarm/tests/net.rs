//! `/kwaainet/inference/1.0.0` between real libp2p nodes over loopback TCP (noise, yamux):
//! span servers of the default model and a client generating through them, a server killed
//! mid-generation, outputs pushed from server to server, and a server that never answers (the step timeout). Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;

use support::{MODEL_ID, client_model, greedy, load, prompts, span, whole};

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kwaainet_core::Llama;
use kwaainet_core::codec::Codec;
use kwaainet_core::generate::CpuSession;
use kwaainet_swarm::net::{self, NetConfig, NetConnector, ServerSlot};
use kwaainet_swarm::protocol::PROTOCOL;
use kwaainet_swarm::{
    ClientConfig, CodecChoice, ServerConfig, ServerEntry, SpanServer, SwarmSession,
};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use tokio::task::JoinHandle;

type Swarm = libp2p::Swarm<libp2p_stream::Behaviour>;

/// A node with the stream behaviour listening on 127.0.0.1 (not yet driven).
async fn node() -> (Swarm, Multiaddr) {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap();
    (swarm, addr)
}

fn drive(mut swarm: Swarm) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

struct Server {
    peer: PeerId,
    addr: Multiaddr,
    blocks: Range<usize>,
    /// The node's driver and its serving task.
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// The node dies: its swarm (connections, streams) and its serving task end.
    fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A span server node for `blocks`, pushing outputs to the servers `next` (whose addresses
/// it is given: a bare libp2p swarm has no DHT to find them).
async fn span_server(blocks: Range<usize>, next: &[&Server]) -> Server {
    let model = load(span(blocks.clone())).unwrap();
    let span = Arc::new(SpanServer::new(
        model,
        ServerConfig {
            cache_tokens: 4096,
            max_length: 512,
            max_sessions: 16,
            ..ServerConfig::new(MODEL_ID)
        },
    ));
    let (mut swarm, addr) = node().await;
    dial_all(&mut swarm, next).await;
    let peer = *swarm.local_peer_id();
    let control = swarm.behaviour().new_control();
    span.set_pusher(Arc::new(NetConnector::new(
        control.clone(),
        tokio::runtime::Handle::current(),
        NetConfig::default(),
    )));
    let node = drive(swarm);
    let serving = tokio::spawn(async move {
        let _ = net::serve(
            control,
            Arc::new(ServerSlot::new(span)),
            NetConfig::default(),
        )
        .await;
    });
    Server {
        peer,
        addr,
        blocks,
        tasks: vec![node, serving],
    }
}

/// A node that accepts inference streams and never answers.
async fn black_hole(blocks: Range<usize>) -> Server {
    let (swarm, addr) = node().await;
    let peer = *swarm.local_peer_id();
    let mut control = swarm.behaviour().new_control();
    let mut incoming = control.accept(StreamProtocol::new(PROTOCOL)).unwrap();
    let node = drive(swarm);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((_, stream)) = incoming.next().await {
            held.push(stream);
        }
    });
    Server {
        peer,
        addr,
        blocks,
        tasks: vec![node, holder],
    }
}

/// Connects `swarm` to `servers` up front: a bare libp2p swarm keeps no peer addresses of
/// its own (the node's Kademlia does).
async fn dial_all(swarm: &mut Swarm, servers: &[&Server]) {
    for s in servers {
        swarm.dial(s.addr.clone()).unwrap();
    }
    let mut connected = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while connected.len() < servers.len() {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
            {
                connected.insert(peer_id);
            }
        }
    })
    .await
    .unwrap();
}

/// A client node that knows the servers' addresses; its connector and the directory.
async fn client(
    servers: &[&Server],
    step: Duration,
) -> (NetConnector, Vec<ServerEntry>, JoinHandle<()>) {
    let (mut swarm, _) = node().await;
    dial_all(&mut swarm, servers).await;
    let control = swarm.behaviour().new_control();
    let task = drive(swarm);
    let config = NetConfig {
        step,
        ..NetConfig::default()
    };
    let connector = NetConnector::new(control, tokio::runtime::Handle::current(), config);
    let entries = servers
        .iter()
        .map(|s| ServerEntry::new(s.peer.to_string(), s.blocks.clone()))
        .collect();
    (connector, entries, task)
}

fn session(
    local: &Arc<Llama>,
    entries: Vec<ServerEntry>,
    connector: NetConnector,
    codec: Codec,
) -> SwarmSession {
    let config = ClientConfig {
        codec: CodecChoice::Fixed(codec),
        max_length: 256,
        ..ClientConfig::new(MODEL_ID)
    };
    SwarmSession::new(
        Arc::clone(local),
        entries,
        Arc::new(connector),
        config,
        "net",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_crosses_libp2p_nodes_and_survives_a_killed_server() {
    let Some(full) = whole() else {
        return;
    };
    let local = client_model().unwrap();
    let c = span_server(20..30, &[]).await;
    let b1 = span_server(10..20, &[&c]).await;
    let b2 = span_server(10..20, &[&c]).await;
    let a = span_server(0..10, &[&b1, &b2]).await;
    let (connector, entries, client_task) =
        client(&[&a, &b1, &b2, &c], Duration::from_secs(20)).await;
    let prompt = prompts().remove(0);

    let want = {
        let mut alone = CpuSession::new(&*full, 256).unwrap();
        greedy(&mut alone, &prompt, 20, |_| {})
    };
    // The engine's Session is synchronous: run it off the runtime's workers.
    let b1 = Arc::new(b1);
    let (calm, killed) = tokio::time::timeout(Duration::from_secs(240), {
        let (local, entries, connector) = (Arc::clone(&local), entries.clone(), connector.clone());
        let prompt = prompt.clone();
        let b1 = Arc::clone(&b1);
        let b1_peer = b1.peer.to_string();
        tokio::task::spawn_blocking(move || {
            // Uninterrupted.
            let mut s = session(&local, entries.clone(), connector.clone(), Codec::F32);
            let calm = greedy(&mut s, &prompt, 20, |_| {});
            assert_eq!(s.route()[1].0, b1_peer, "b1 is listed first");
            // Every hop after the first got its input from the server before it.
            let st = s.stats().clone();
            assert_eq!((st.pushed, st.client_pushes), (2 * 20, 0), "{st:?}");
            drop(s);
            // Again, with b1 killed after 8 tokens.
            let mut s = session(&local, entries, connector, Codec::F32);
            let got = greedy(&mut s, &prompt, 20, |i| {
                if i == 7 {
                    b1.kill();
                }
            });
            let st = s.stats().clone();
            assert_eq!((st.failovers, st.replays), (1, 1), "{st:?}");
            assert_ne!(s.route()[1].0, b1_peer);
            (calm, got)
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(calm, want, "through the swarm");
    assert_eq!(killed, want, "through the swarm, a server killed");
    client_task.abort();
    for s in [&a, &b2, &c] {
        s.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_left_after_the_step_timeout() {
    let Some(local) = client_model() else {
        return;
    };
    let hole = black_hole(0..30).await;
    let good = span_server(0..30, &[]).await;
    let (connector, entries, client_task) = client(&[&hole, &good], Duration::from_secs(2)).await;
    let hole_peer = hole.peer.to_string();
    let started = std::time::Instant::now();
    let route = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut s = session(&local, entries, connector, Codec::F16);
            s.forward_tokens(&[1, 4093, 198]).unwrap();
            assert!(s.banned().iter().any(|(id, _)| *id == hole_peer));
            s.route()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(route, vec![(good.peer.to_string(), 0..30)]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    client_task.abort();
    hole.kill();
    good.kill();
}
