//! The page-side node (`cfg(wasm_browser)`): a browser joins the network by dialing a
//! native node over WebRTC-direct (`/webrtc-direct/certhash/...`), with WebSocket (`/ws`)
//! as the fallback, runs Kademlia in client mode through it, keeps a circuit relay v2
//! reservation on it so other browsers can reach it (`<node>/p2p-circuit/p2p/<us>`),
//! exchanges [`crate::msg`] messages with them, and reconnects with a bounded back-off when
//! the node goes away.
//!
//! The logic lives here and uses no JavaScript bindings: [`start`] returns a
//! [`BrowserHandle`] (commands over a bounded channel), a stream of [`BrowserEvent`]s and
//! the node's future, which the caller spawns on the page's event loop (engine/wasm does
//! it with `wasm-bindgen-futures`). Every request is bounded in size and time.
//!
//! | File | Concern |
//! |---|---|
//! | `mod.rs` | [`BrowserConfig`], [`BrowserEvent`], [`BrowserState`], [`start`] |
//! | `handle.rs` | [`BrowserHandle`] and the commands it sends |
//! | `swarm.rs` | [`BrowserBehaviour`] and [`build_swarm`]: transports and protocols |
//! | `runtime.rs` | the event loop: commands, swarm events, lookups, messages |
//! | `link.rs` | the link to the bootstrap node: dials, reconnect back-off, relay reservation |

mod handle;
mod link;
mod runtime;
mod swarm;

use std::time::Duration;

use futures::channel::mpsc;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

pub use self::handle::{BrowserHandle, MAX_CONNECT_ADDRS};
pub use self::swarm::{BrowserBehaviour, BrowserBehaviourEvent, build_swarm};

use self::runtime::Runtime;
use crate::error::{Error, Result};

/// Commands waiting in the node's queue at most.
const COMMAND_QUEUE: usize = 32;
/// Events buffered for the page at most; beyond that, messages are refused (the sender
/// sees `Refused`) and state events dropped.
const EVENT_QUEUE: usize = 256;
/// Requests (lookups, messages) in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Default [`BrowserConfig::dial_timeout`].
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`BrowserConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Default [`BrowserConfig::reconnect_attempts`].
pub const DEFAULT_RECONNECT_ATTEMPTS: u32 = 20;

/// How the page-side node connects.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The node to join through, as one or more multiaddrs of the same peer, each ending
    /// in `/p2p/<peer id>`, tried in this order (put WebRTC-direct first, WebSocket after).
    pub bootstrap: Vec<Multiaddr>,
    /// Give up on one address after this long and try the next.
    pub dial_timeout: Duration,
    /// Hold a relay reservation on the node so other browsers can dial us.
    pub relay_listen: bool,
    /// Reconnect attempts after the connection is lost (0: none) before going offline.
    pub reconnect_attempts: u32,
    /// Longest wait between two reconnect attempts.
    pub max_backoff: Duration,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            relay_listen: true,
            reconnect_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// What the page-side node reports.
#[derive(Debug, Clone, PartialEq)]
pub enum BrowserEvent {
    /// A connection to `peer` is up (the node, or another browser through the relay).
    Connected {
        /// The peer.
        peer: PeerId,
        /// The address it was reached at.
        addr: Multiaddr,
        /// `webrtc-direct`, `websocket` or `relay`.
        transport: &'static str,
        /// Whether `peer` is the node we joined through.
        bootstrap: bool,
        /// Time from dialing to the established connection (dials we started).
        setup_ms: Option<f64>,
    },
    /// The last connection to `peer` closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
        /// Whether `peer` is the node we joined through.
        bootstrap: bool,
    },
    /// The node is gone; the next attempt to reach it starts after `delay_ms`.
    Reconnecting {
        /// 1 for the first attempt.
        attempt: u32,
        /// Wait before it.
        delay_ms: u64,
    },
    /// Gave up reaching the node (initial dial failed or reconnect attempts exhausted).
    Offline {
        /// Why.
        reason: String,
    },
    /// Other peers can reach us at this relayed address.
    RelayReady {
        /// `<node addr>/p2p-circuit/p2p/<us>`.
        addr: Multiaddr,
    },
    /// A message from another peer.
    Message {
        /// The sender.
        from: PeerId,
        /// Its payload (at most [`msg::MAX_MESSAGE_BYTES`]).
        data: Vec<u8>,
    },
}

/// A snapshot of the page-side node.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserState {
    /// Our peer id.
    pub peer_id: PeerId,
    /// The node we joined through, while connected, with the address used.
    pub bootstrap: Option<(PeerId, Multiaddr)>,
    /// Our relayed address, once the reservation is accepted.
    pub relay_addr: Option<Multiaddr>,
    /// Connected peers.
    pub peers: Vec<PeerId>,
}

/// Starts a page-side node: returns its handle, its events, and the future that runs it
/// (spawn it on the page's event loop; it ends when every handle is dropped).
pub fn start(
    key: Keypair,
    config: BrowserConfig,
) -> Result<(
    BrowserHandle,
    mpsc::Receiver<BrowserEvent>,
    impl Future<Output = ()>,
)> {
    let bootstrap = config
        .bootstrap
        .iter()
        .find_map(|a| match a.iter().last() {
            Some(Protocol::P2p(id)) => Some(id),
            _ => None,
        })
        .ok_or_else(|| Error::Config("no bootstrap address ends in /p2p/<peer id>".into()))?;
    let addrs: Vec<Multiaddr> = config
        .bootstrap
        .iter()
        .filter(|a| a.iter().last() == Some(Protocol::P2p(bootstrap)))
        .cloned()
        .collect();
    let mut swarm = build_swarm(key.clone(), config.dial_timeout)?;
    let peer_id = *swarm.local_peer_id();
    for a in &addrs {
        let mut transport_addr = a.clone();
        transport_addr.pop();
        swarm
            .behaviour_mut()
            .node
            .kad
            .add_address(&bootstrap, transport_addr);
    }
    let streams = swarm.behaviour().node.streams.new_control();
    let (commands, rx) = crate::command::channel(COMMAND_QUEUE);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let mut rt = Runtime::new(swarm, key, config, bootstrap, addrs, events_tx);
    rt.dial_bootstrap();
    let handle = BrowserHandle {
        peer_id,
        commands,
        streams,
    };
    Ok((handle, events, rt.run(rx)))
}
