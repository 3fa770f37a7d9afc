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

use std::collections::HashMap;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{Fuse, FusedFuture};
use futures::{FutureExt, SinkExt, StreamExt};
use futures_timer::Delay;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetRecordOk, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, Transport, noise, webrtc_websys, websocket_websys,
    yamux,
};
use web_time::Instant;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::info::{INFO_REQUEST_VERSION, InfoRequest, InfoResponse};
use crate::msg;
use crate::record::{NodeRecord, decode_node_record, node_key};
use crate::webrtc_chunks::ChunkedMuxer;

/// Commands waiting in the node's queue at most.
const COMMAND_QUEUE: usize = 32;
/// Events buffered for the page at most; beyond that, messages are refused (the sender
/// sees `Refused`) and state events dropped.
const EVENT_QUEUE: usize = 256;
/// Requests (lookups, messages) in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// First reconnect delay; doubles per failed attempt up to [`BrowserConfig::max_backoff`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Default [`BrowserConfig::dial_timeout`].
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`BrowserConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Default [`BrowserConfig::reconnect_attempts`].
pub const DEFAULT_RECONNECT_ATTEMPTS: u32 = 20;
/// The swarm's connection timeout is the dial timeout plus this (its own default, 10 s,
/// would cut a longer per-address dial timeout).
const CONNECTION_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

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

/// Where the node stands with its bootstrap peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// First dial round in flight.
    Joining,
    Connected,
    /// Reconnect attempt `n` is dialing or scheduled.
    Reconnecting(u32),
    Offline,
}

/// Someone waiting for the bootstrap connection.
type Waiter = oneshot::Sender<Result<(PeerId, Multiaddr)>>;
/// A DHT lookup in flight: the peer whose record it seeks, and who waits for it.
type RecordQuery = (PeerId, oneshot::Sender<Result<Option<NodeRecord>>>);

enum Command {
    Connected(Waiter),
    State(oneshot::Sender<BrowserState>),
    GetRecord(PeerId, oneshot::Sender<Result<Option<NodeRecord>>>),
    AskInfo(PeerId, oneshot::Sender<Result<NodeRecord>>),
    Send(PeerId, Vec<u8>, oneshot::Sender<Result<Duration>>),
}

/// The page-side node's behaviour: a KwaaiNet node's protocols plus `/kwaainet/msg/1.0.0`.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derive's generated types have no Debug
pub struct BrowserBehaviour {
    node: Behaviour,
    msg: request_response::Behaviour<msg::Codec>,
}

/// Builds a browser swarm for `key`: WebRTC-direct and WebSocket (noise + yamux), each
/// outgoing dial bounded by `dial_timeout`, the relay client on top, Kademlia in client mode.
pub fn build_swarm(key: Keypair, dial_timeout: Duration) -> Result<Swarm<BrowserBehaviour>> {
    let err = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let config = NodeConfig {
        full: false,
        relay: false,
        autonat: false,
        // The node's relay reservation keeps the connection to it busy; other connections
        // (circuits to browsers) close a minute after their last message.
        idle_timeout_secs: 60,
        ..NodeConfig::default()
    };
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            // Small data-channel messages: see `webrtc_chunks`.
            let webrtc = webrtc_websys::Transport::new(webrtc_websys::Config::new(key))
                .map(|(peer, conn), _| (peer, ChunkedMuxer::new(conn)));
            TransportTimeout::with_outgoing_timeout(webrtc, dial_timeout)
        })
        .map_err(|e| err(&e))?
        .with_other_transport(|key| {
            let ws = websocket_websys::Transport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                TransportTimeout::with_outgoing_timeout(ws, dial_timeout),
            )
        })
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay| BrowserBehaviour {
            node: Behaviour::new(key, relay, &config),
            msg: request_response::Behaviour::with_codec(
                msg::Codec,
                [(msg::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(msg::TIMEOUT)
                    .with_max_concurrent_streams(MAX_IN_FLIGHT),
            ),
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(config.idle_timeout_secs))
        })
        .with_connection_timeout(dial_timeout.saturating_add(CONNECTION_TIMEOUT_SLACK))
        .build();
    Ok(swarm)
}

/// The handle to a running page-side node. Dropping every clone stops the node.
#[derive(Debug, Clone)]
pub struct BrowserHandle {
    peer_id: PeerId,
    tx: mpsc::Sender<Command>,
}

impl BrowserHandle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .clone()
            .send(make(tx))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// Waits until we are connected to the bootstrap node (at once if we are); fails if
    /// the node is offline. Returns its peer id and the address used.
    pub async fn connected(&self) -> Result<(PeerId, Multiaddr)> {
        self.ask(Command::Connected).await?
    }

    /// A snapshot of the node.
    pub async fn state(&self) -> Result<BrowserState> {
        self.ask(Command::State).await
    }

    /// Looks up `peer`'s signed node record in the DHT (verified; `None` if nobody has it).
    pub async fn get_node_record(&self, peer: PeerId) -> Result<Option<NodeRecord>> {
        self.ask(|tx| Command::GetRecord(peer, tx)).await?
    }

    /// Asks a peer for its record directly (`/kwaainet/info/1.0.0`, one round trip).
    pub async fn ask_info(&self, peer: PeerId) -> Result<NodeRecord> {
        self.ask(|tx| Command::AskInfo(peer, tx)).await?
    }

    /// Sends `data` to `peer` (another browser holding a reservation on our bootstrap node,
    /// reached through its relay circuit) and waits for its acknowledgement; returns the
    /// round-trip time.
    pub async fn send(&self, peer: PeerId, data: Vec<u8>) -> Result<Duration> {
        if data.len() > msg::MAX_MESSAGE_BYTES {
            return Err(Error::Config(format!(
                "message of {} bytes exceeds {}",
                data.len(),
                msg::MAX_MESSAGE_BYTES
            )));
        }
        self.ask(|tx| Command::Send(peer, data, tx)).await?
    }
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
    let mut swarm = build_swarm(key, config.dial_timeout)?;
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
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let mut rt = Runtime {
        swarm,
        config,
        bootstrap,
        addrs,
        link: Link::Joining,
        conn_addr: None,
        last_transport: None,
        dial_started: None,
        dial_queue: Vec::new(),
        dial_errors: Vec::new(),
        dialing: None,
        relay_listener: None,
        relay_addr: None,
        relay_failures: 0,
        timer: Fuse::terminated(),
        events: events_tx,
        waiters: Vec::new(),
        queries: HashMap::new(),
        infos: HashMap::new(),
        sends: HashMap::new(),
        peers: HashMap::new(),
    };
    rt.dial_bootstrap();
    Ok((BrowserHandle { peer_id, tx }, events, rt.run(rx)))
}

struct Runtime {
    swarm: Swarm<BrowserBehaviour>,
    config: BrowserConfig,
    bootstrap: PeerId,
    addrs: Vec<Multiaddr>,
    link: Link,
    /// The address of the connection to the bootstrap node.
    conn_addr: Option<Multiaddr>,
    /// The transport of the last connection to the bootstrap node: reconnects try it first.
    last_transport: Option<&'static str>,
    dial_started: Option<Instant>,
    /// Bootstrap addresses still to try in this round (next one last).
    dial_queue: Vec<Multiaddr>,
    dial_errors: Vec<String>,
    /// Our dial of the bootstrap node in flight.
    dialing: Option<ConnectionId>,
    relay_listener: Option<ListenerId>,
    relay_addr: Option<Multiaddr>,
    /// Reservations refused or lost in a row while connected (backs off the next try).
    relay_failures: u32,
    timer: Fuse<Delay>,
    events: mpsc::Sender<BrowserEvent>,
    waiters: Vec<Waiter>,
    queries: HashMap<kad::QueryId, RecordQuery>,
    infos: HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<NodeRecord>>)>,
    sends: HashMap<OutboundRequestId, (Instant, oneshot::Sender<Result<Duration>>)>,
    /// Connected peers, with how many connections each.
    peers: HashMap<PeerId, u32>,
}

/// `addr` ending in `/p2p/<peer>` (the dialed address may already carry it).
fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut kind = "unknown";
    for p in addr.iter() {
        kind = match p {
            Protocol::P2pCircuit => return "relay",
            Protocol::WebRTCDirect => "webrtc-direct",
            Protocol::Ws(_) | Protocol::Wss(_) => "websocket",
            _ => kind,
        };
    }
    kind
}

impl Runtime {
    fn emit(&mut self, ev: BrowserEvent) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("event queue full: dropping {:?}", e.into_inner());
                false
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.queries.len() + self.infos.len() + self.sends.len()
    }

    /// Dials the bootstrap node's addresses one at a time, in the given order. (Not one
    /// dial with all of them: the swarm creates every address's dial future up front, so
    /// the later addresses' timeouts would run out while the first one is tried.)
    ///
    /// After a first connection, the addresses of the transport that worked go first (the
    /// order is otherwise kept): a browser that cannot complete WebRTC-direct with this node
    /// does not wait out that dial's timeout again on every reconnect.
    fn dial_bootstrap(&mut self) {
        let mut order = self.addrs.clone();
        if let Some(kind) = self.last_transport {
            order.sort_by_key(|a| transport_of(a) != kind);
        }
        self.dial_queue = order.into_iter().rev().collect();
        self.dial_errors.clear();
        self.dial_started = Some(Instant::now());
        self.dial_next();
    }

    fn dial_next(&mut self) {
        let Some(addr) = self.dial_queue.pop() else {
            self.dialing = None;
            let why = self.dial_errors.join("; ");
            self.dial_failed(why);
            return;
        };
        let opts = DialOpts::peer_id(self.bootstrap)
            .condition(PeerCondition::Always)
            .addresses(vec![addr.clone()])
            .build();
        self.dialing = Some(opts.connection_id());
        if let Err(e) = self.swarm.dial(opts) {
            self.dial_errors.push(format!("{addr}: {e}"));
            self.dial_next();
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        FIRST_BACKOFF
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff)
    }

    /// Schedules reconnect attempt `attempt`, or goes offline once they are used up.
    fn schedule_reconnect(&mut self, attempt: u32, why: &str) {
        if attempt > self.config.reconnect_attempts {
            self.go_offline(format!(
                "node unreachable after {} attempts: {why}",
                attempt - 1
            ));
            return;
        }
        let delay = self.backoff(attempt);
        self.link = Link::Reconnecting(attempt);
        self.timer = Delay::new(delay).fuse();
        self.emit(BrowserEvent::Reconnecting {
            attempt,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn go_offline(&mut self, reason: String) {
        self.link = Link::Offline;
        self.timer = Fuse::terminated();
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(Error::Transport(reason.clone())));
        }
        self.emit(BrowserEvent::Offline { reason });
    }

    fn dial_failed(&mut self, why: String) {
        match self.link {
            Link::Joining => self.go_offline(format!("cannot reach the node: {why}")),
            Link::Reconnecting(n) => self.schedule_reconnect(n + 1, &why),
            Link::Connected | Link::Offline => {}
        }
    }

    fn listen_on_relay(&mut self) {
        if !self.config.relay_listen || self.relay_listener.is_some() {
            return;
        }
        let Some(addr) = self.conn_addr.clone() else {
            return;
        };
        match self.swarm.listen_on(addr.with(Protocol::P2pCircuit)) {
            Ok(id) => self.relay_listener = Some(id),
            Err(e) => tracing::warn!(error = %e, "cannot listen on the relay"),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            futures::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = rx.next() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                () = &mut self.timer => match self.link {
                    Link::Reconnecting(_) => self.dial_bootstrap(),
                    Link::Connected => self.listen_on_relay(),
                    Link::Joining | Link::Offline => {}
                },
            }
        }
        tracing::debug!("page-side node stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        let busy = || Error::Query(format!("{MAX_IN_FLIGHT} requests already in flight"));
        match cmd {
            Command::Connected(tx) => match (&self.link, &self.conn_addr) {
                (Link::Connected, Some(addr)) => {
                    let _ = tx.send(Ok((self.bootstrap, addr.clone())));
                }
                (Link::Offline, _) => {
                    let _ = tx.send(Err(Error::Transport("the node is offline".into())));
                }
                _ if self.waiters.len() >= COMMAND_QUEUE => {
                    let _ = tx.send(Err(busy()));
                }
                _ => self.waiters.push(tx),
            },
            Command::State(tx) => {
                let bootstrap = match (self.link, &self.conn_addr) {
                    (Link::Connected, Some(a)) => Some((self.bootstrap, a.clone())),
                    _ => None,
                };
                let mut peers: Vec<PeerId> = self.peers.keys().copied().collect();
                peers.sort();
                let _ = tx.send(BrowserState {
                    peer_id: *self.swarm.local_peer_id(),
                    bootstrap,
                    relay_addr: self.relay_addr.clone(),
                    peers,
                });
            }
            Command::GetRecord(peer, tx) => {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .node
                    .kad
                    .get_record(node_key(&peer));
                self.queries.insert(id, (peer, tx));
            }
            Command::AskInfo(peer, tx) => {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                let req = crate::info::Request::Info(InfoRequest {
                    v: INFO_REQUEST_VERSION,
                });
                let addrs = self.circuit_to(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .node
                    .info
                    .send_request_with_addresses(&peer, req, addrs);
                self.infos.insert(id, (peer, tx));
            }
            Command::Send(peer, data, tx) => {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                let addrs = self.circuit_to(peer);
                let id = self.swarm.behaviour_mut().msg.send_request_with_addresses(
                    &peer,
                    msg::Request::Message(data),
                    addrs,
                );
                self.sends.insert(id, (Instant::now(), tx));
            }
        }
    }

    /// How to reach `peer` if we are not connected to it: through the bootstrap node's relay.
    fn circuit_to(&self, peer: PeerId) -> Vec<Multiaddr> {
        match &self.conn_addr {
            Some(relay) if peer != self.bootstrap => vec![
                relay
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer)),
            ],
            _ => Vec::new(),
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BrowserBehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BrowserBehaviourEvent::Node(BehaviourEvent::Kad(e))) => {
                self.on_kad(e)
            }
            SwarmEvent::Behaviour(BrowserBehaviourEvent::Node(BehaviourEvent::Info(e))) => {
                self.on_info(e)
            }
            SwarmEvent::Behaviour(BrowserBehaviourEvent::Msg(e)) => self.on_msg(e),
            SwarmEvent::Behaviour(other) => tracing::trace!(?other, "behaviour event"),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                *self.peers.entry(peer_id).or_default() += 1;
                let addr = endpoint.get_remote_address().clone();
                let bootstrap = peer_id == self.bootstrap;
                let mut setup_ms = None;
                if bootstrap {
                    self.dialing = None;
                    self.dial_queue.clear();
                }
                if bootstrap && self.link != Link::Connected {
                    setup_ms = self
                        .dial_started
                        .take()
                        .map(|t| t.elapsed().as_secs_f64() * 1000.0);
                    self.link = Link::Connected;
                    self.timer = Fuse::terminated();
                    self.last_transport = Some(transport_of(&addr));
                    let full = with_peer(&addr, peer_id);
                    self.conn_addr = Some(full.clone());
                    for w in self.waiters.drain(..) {
                        let _ = w.send(Ok((peer_id, full.clone())));
                    }
                    self.listen_on_relay();
                }
                if num_established.get() == 1 {
                    self.emit(BrowserEvent::Connected {
                        peer: peer_id,
                        transport: transport_of(&addr),
                        addr,
                        bootstrap,
                        setup_ms,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    let bootstrap = peer_id == self.bootstrap;
                    self.emit(BrowserEvent::Disconnected {
                        peer: peer_id,
                        bootstrap,
                    });
                    if bootstrap && self.link == Link::Connected {
                        self.conn_addr = None;
                        self.relay_addr = None;
                        if let Some(id) = self.relay_listener.take() {
                            self.swarm.remove_listener(id);
                        }
                        self.schedule_reconnect(1, "connection closed");
                    }
                } else if let Some(n) = self.peers.get_mut(&peer_id) {
                    *n = num_established;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                // Only our own dials of the bootstrap node move the link on (Kademlia may
                // dial it too).
                if Some(connection_id) == self.dialing {
                    self.dial_errors.push(error.to_string());
                    self.dial_next();
                }
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } if Some(listener_id) == self.relay_listener => {
                let addr = with_peer(&address, *self.swarm.local_peer_id());
                self.relay_addr = Some(addr.clone());
                self.relay_failures = 0;
                self.emit(BrowserEvent::RelayReady { addr });
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if Some(listener_id) == self.relay_listener => {
                tracing::debug!(?reason, "relay listener closed");
                self.relay_listener = None;
                self.relay_addr = None;
                if self.link == Link::Connected {
                    // The reservation was refused or lost while the node is still there:
                    // try again after a growing delay rather than spinning.
                    self.relay_failures = self.relay_failures.saturating_add(1);
                    self.timer = Delay::new(self.backoff(self.relay_failures)).fuse();
                }
            }
            _ => {}
        }
        // The relay listener retries after a refused reservation (timer above).
        if self.link == Link::Connected
            && self.relay_listener.is_none()
            && self.timer.is_terminated()
        {
            self.listen_on_relay();
        }
    }

    fn on_kad(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = e
        else {
            return;
        };
        let QueryResult::GetRecord(res) = result else {
            return;
        };
        let Some((peer, _)) = self.queries.get(&id) else {
            return;
        };
        let peer = *peer;
        let outcome = match res {
            Ok(GetRecordOk::FoundRecord(found)) => match decode_node_record(&found.record.value) {
                Ok(rec) if rec.peer_id == peer => Some(Ok(Some(rec))),
                // A forged or foreign record: keep looking until the query ends.
                _ => step.last.then_some(Ok(None)),
            },
            Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. })
            | Err(kad::GetRecordError::NotFound { .. }) => Some(Ok(None)),
            Err(e) => Some(Err(Error::Query(e.to_string()))),
        };
        if let Some(outcome) = outcome {
            if let Some(mut q) = self.swarm.behaviour_mut().node.kad.query_mut(&id) {
                q.finish();
            }
            if let Some((_, tx)) = self.queries.remove(&id) {
                let _ = tx.send(outcome);
            }
        }
    }

    fn on_info(&mut self, e: request_response::Event<crate::info::Request, InfoResponse>) {
        match e {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((asked, tx)) = self.infos.remove(&request_id) {
                    let rec = response.verify(asked, peer);
                    let _ = tx.send(rec);
                }
            }
            // A browser does not announce a record: it leaves requests unanswered.
            request_response::Event::Message { .. } => {}
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((_, tx)) = self.infos.remove(&request_id) {
                    let _ = tx.send(Err(Error::Query(error.to_string())));
                }
            }
            _ => {}
        }
    }

    fn on_msg(&mut self, e: request_response::Event<msg::Request, msg::Response>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request {
                    msg::Request::Message(data) => {
                        let ok = self.emit(BrowserEvent::Message { from: peer, data });
                        let res = if ok {
                            msg::Response::Accepted
                        } else {
                            msg::Response::Refused
                        };
                        let _ = self.swarm.behaviour_mut().msg.send_response(channel, res);
                    }
                    msg::Request::Malformed(why) => {
                        tracing::warn!(%peer, why, "protocol violation: disconnecting");
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((t, tx)) = self.sends.remove(&request_id) {
                        let _ = tx.send(match response {
                            msg::Response::Accepted => Ok(t.elapsed()),
                            msg::Response::Refused => {
                                Err(Error::Query("the receiver refused the message".into()))
                            }
                        });
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((_, tx)) = self.sends.remove(&request_id) {
                    let _ = tx.send(Err(Error::Query(error.to_string())));
                }
            }
            _ => {}
        }
    }
}
