//! The node runtime (native): builds the swarm, listens, bootstraps, keeps its DHT record
//! fresh, answers `/kwaainet/info/1.0.0`, enforces the misbehaviour policy, and serves
//! commands from [`NodeHandle`] over a bounded channel.
//!
//! | File | Concern |
//! |---|---|
//! | `mod.rs` | [`spawn`], [`spawn_memory`]: build the swarm, listen, start the loop |
//! | `handle.rs` | [`NodeHandle`] and the commands it sends |
//! | `state.rs` | [`NodeState`], [`PeerState`], [`KadMode`], [`NatStatus`] (`/api/v1/state`) |
//! | `runtime.rs` | the event loop: commands, swarm events, timers |
//! | `announce.rs` | our roles and addresses, publication of our signed record |
//! | `lookup.rs` | DHT queries in flight: records, providers, publications |
//! | `store.rs` | what others may store with us |
//! | `routing.rs` | which identified peers enter the routing table |
//! | `relays.rs` | relay-reservation policy (reachable behind a NAT) |
//! | `hosted.rs` | records a relay stores for its clients (`/kwaainet/host/1.0.0`) |
//! | `dials.rs` | [`NodeHandle::dial`]s by connection id, with their timeout |
//! | `metrics.rs` | our Prometheus metrics |

mod announce;
mod dials;
mod handle;
mod hosted;
mod lookup;
mod metrics;
mod relays;
mod routing;
mod runtime;
mod state;
mod store;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::metrics::Metrics;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;

pub use self::handle::NodeHandle;
pub use self::state::{KadMode, NatStatus, NodeState, PeerState};
pub use crate::lookup::Lookup;

use self::metrics::NodeMetrics;
use self::runtime::Runtime;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::transport::{self, TransportKind};

/// Commands waiting in the node's queue at most.
const COMMAND_QUEUE: usize = 64;
/// How long `spawn` waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Starts a node with the network transports (TCP, QUIC, WebSocket, WebRTC-direct) on the
/// current tokio runtime.
pub async fn spawn(
    config: NodeConfig,
    key: Keypair,
    webrtc_pem: Option<String>,
) -> Result<NodeHandle> {
    spawn_with(config, key, TransportKind::Network { webrtc_pem }).await
}

/// Starts a node on the in-process memory transport (tests, simulations).
pub async fn spawn_memory(config: NodeConfig, key: Keypair) -> Result<NodeHandle> {
    spawn_with(config, key, TransportKind::Memory).await
}

async fn spawn_with(config: NodeConfig, key: Keypair, kind: TransportKind) -> Result<NodeHandle> {
    let mut registry = Registry::default();
    let mut swarm = transport::build_swarm(key.clone(), &config, kind, &mut registry).await?;
    let metrics = Metrics::new(&mut registry);
    let ours = NodeMetrics::register(&mut registry);
    let peer_id = *swarm.local_peer_id();

    // Listen, and wait (bounded) until every listener reported its first address, so the
    // caller can print real ports and the WebRTC certhash.
    let mut waiting = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|source| Error::Listen {
                addr: addr.clone(),
                source,
            })?;
        waiting.insert(id);
    }
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while !waiting.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
        match ev {
            Ok(SwarmEvent::NewListenAddr {
                listener_id,
                address,
            }) => {
                tracing::debug!(%address, "listening");
                waiting.remove(&listener_id);
            }
            Ok(SwarmEvent::ListenerError { listener_id, error })
            | Ok(SwarmEvent::ListenerClosed {
                listener_id,
                reason: Err(error),
                ..
            }) => {
                tracing::warn!(?listener_id, %error, "listener failed");
                waiting.remove(&listener_id);
            }
            Ok(other) => tracing::trace!(?other, "event before start"),
            Err(_) => {
                tracing::warn!("listeners did not all report an address within {LISTEN_WAIT:?}");
                break;
            }
        }
    }
    let listen_addrs: Vec<Multiaddr> = swarm
        .listeners()
        .map(|a| a.clone().with(Protocol::P2p(peer_id)))
        .collect();

    let streams = handle::Streams(swarm.behaviour().streams.new_control());
    let (commands, rx) = crate::command::channel(COMMAND_QUEUE);
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let mut rt = Runtime::new(swarm, key, config, metrics, ours);
    rt.start();
    let join = tokio::spawn(rt.run(rx, shutdown.clone()));
    Ok(NodeHandle {
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        commands,
        shutdown,
        done: Arc::new(tokio::sync::Mutex::new(Some(join))),
        registry: Arc::new(registry),
        streams,
    })
}

/// Splits `/.../p2p/<id>` into the transport address and the peer id.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(id)) => (a, Some(id)),
        Some(p) => {
            a.push(p);
            (a, None)
        }
        None => (a, None),
    }
}
