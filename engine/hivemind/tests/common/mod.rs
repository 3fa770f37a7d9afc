//! Real libp2p nodes on loopback for the averaging tests and benchmark.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use kwaainet_hivemind::net::{Averager, NetConfig};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, SwarmBuilder, noise, tcp, yamux};
use std::sync::atomic::{AtomicUsize, Ordering};

use kwaainet_hivemind::Transport;
use tokio::task::{AbortHandle, JoinHandle};

type Swarm = libp2p::Swarm<libp2p_stream::Behaviour>;

/// A node: its peer id, its averaging, the task that drives its swarm.
pub struct Node {
    pub peer: PeerId,
    pub averager: Averager,
    pub driver: JoinHandle<()>,
}

/// `n` nodes on 127.0.0.1 that know each other's addresses, driven in the background.
pub async fn nodes(n: usize) -> Vec<Node> {
    let mut swarms: Vec<(Swarm, Multiaddr)> = Vec::new();
    for _ in 0..n {
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
        swarms.push((swarm, addr));
    }
    let book: Vec<(PeerId, Multiaddr)> = swarms
        .iter()
        .map(|(s, a)| (*s.local_peer_id(), a.clone()))
        .collect();
    let mut connected = Vec::new();
    let nodes: Vec<Node> = swarms
        .into_iter()
        .enumerate()
        .map(|(i, (mut swarm, _))| {
            let peer = *swarm.local_peer_id();
            for (_, a) in &book[i + 1..] {
                swarm.dial(a.clone()).unwrap();
            }
            let control = swarm.behaviour().new_control();
            let averager = Averager::start(control, peer, NetConfig::default()).unwrap();
            let (tx, rx) = tokio::sync::watch::channel(0usize);
            connected.push(rx);
            let driver = tokio::spawn(async move {
                loop {
                    if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await
                    {
                        tx.send_replace(swarm.connected_peers().count());
                    }
                }
            });
            Node {
                peer,
                averager,
                driver,
            }
        })
        .collect();
    for mut rx in connected {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&c| c + 1 >= n))
            .await
            .unwrap()
            .unwrap();
    }
    nodes
}

/// A member's transport that, when `die` is set, takes its node down at its first send
/// after its `parts` parts (its average), and then never answers.
pub struct DiesBeforeAveraging<T> {
    pub inner: T,
    pub parts: usize,
    pub sent: AtomicUsize,
    pub die: Option<AbortHandle>,
}

impl<T: Transport> Transport for DiesBeforeAveraging<T> {
    async fn send(&self, to: usize, frame: Vec<u8>) -> Result<(), String> {
        let sent = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(die) = &self.die
            && sent > self.parts
        {
            die.abort();
            return futures::future::pending().await;
        }
        self.inner.send(to, frame).await
    }

    async fn recv(&mut self) -> Option<(usize, Vec<u8>)> {
        self.inner.recv().await
    }
}
