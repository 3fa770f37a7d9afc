//! The node runtime (native): builds the swarm, listens, bootstraps, keeps its DHT record
//! fresh, answers `/kwaainet/info/1.0.0`, enforces the misbehaviour policy, and serves
//! commands from [`NodeHandle`] over a bounded channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetRecordOk, QueryResult, Quorum, Record, store::RecordStore};
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, relay};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::config::{KAD_PROTOCOL, NodeConfig, RelayReservations};
use crate::error::{Error, Result};
use crate::info::{INFO_REQUEST_VERSION, InfoRequest, InfoResponse, Request};
use crate::record::{
    self, AddressEntry, MAX_ADDRESSES, NODE_RECORD_VERSION, NodeRecord, Role, decode_node_record,
    is_dialable, model_key, node_key, unix_now,
};
use crate::transport::{self, TransportKind};

/// Commands waiting in the node's queue at most.
const COMMAND_QUEUE: usize = 64;
/// How long `spawn` waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Debounce between an address change and the re-publication of our record.
const REPUBLISH_DEBOUNCE: Duration = Duration::from_secs(2);
/// How often the runtime expires dials and re-publishes after address changes.
const HOUSEKEEPING_TICK: Duration = Duration::from_secs(1);
/// How long a stopping node lets its close frames go out.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// A peer's agent string is kept to this many characters (it is the peer's to choose).
const MAX_AGENT_CHARS: usize = 128;

/// A connected peer, as shown by `/api/v1/state` and `kwaainet peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    /// The peer.
    pub peer_id: PeerId,
    /// Address of the (first) connection.
    pub address: Multiaddr,
    /// Its agent version (from identify), once known.
    pub agent: Option<String>,
    /// Last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// The node's Kademlia mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Serves the DHT: in others' routing tables, answers queries, stores records.
    Server,
    /// Queries only; stays out of routing tables.
    Client,
}

/// What AutoNAT last concluded about our reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatStatus {
    /// Reachable from the internet at a confirmed address.
    Public,
    /// Not reachable directly (behind a NAT or firewall).
    Private,
    /// No verdict yet (or AutoNAT is off).
    Unknown,
}

impl std::fmt::Display for KadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server => "server",
            Self::Client => "client",
        })
    }
}

impl std::fmt::Display for NatStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Unknown => "unknown",
        })
    }
}

/// A snapshot of the node for health monitors (`/api/v1/state`); the CLI's `status` and
/// `peers` read it back with this same type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Software version.
    pub version: String,
    /// Roles announced.
    pub roles: Vec<Role>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Addresses the listeners are bound to (each with `/p2p/<peer id>`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Addresses announced in our record.
    pub announced: Vec<AddressEntry>,
    /// The announced addresses a browser can dial, best first: WebRTC-direct (with its
    /// `/certhash`), then WebSocket; each with `/p2p/<peer id>`. Pages join through these.
    pub browser_addrs: Vec<Multiaddr>,
    /// `server` (serves the DHT) or `client`.
    pub kad_mode: KadMode,
    /// Peers in our Kademlia routing table.
    pub routing_table_peers: usize,
    /// DHT records in our local store (ours and those we hold for others).
    pub dht_records: usize,
    /// Connected peers.
    pub connected_peers: Vec<PeerState>,
    /// When our record was last stored on a peer (seconds since the Unix epoch).
    pub record_published_at: Option<u64>,
    /// Peers disconnected for protocol violations since start.
    pub misbehaving_peers: u64,
    /// Relays holding a reservation for us (we are reachable through them).
    pub relay_reservations: Vec<PeerId>,
    /// What AutoNAT last concluded: `public`, `private` or `unknown`.
    pub nat_status: NatStatus,
}

/// The outcome of one DHT lookup of a node record, with Kademlia's query statistics.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The verified record, if found.
    pub record: Option<NodeRecord>,
    /// Requests the query sent (peers contacted).
    pub requests: u32,
    /// Requests that were answered.
    pub successes: u32,
    /// Wall time of the query.
    pub elapsed: Duration,
}

enum Command {
    State(oneshot::Sender<NodeState>),
    GetRecord(PeerId, oneshot::Sender<Result<Lookup>>),
    Providers(String, oneshot::Sender<Result<Vec<PeerId>>>),
    AskInfo(PeerId, oneshot::Sender<Result<NodeRecord>>),
    Publish(oneshot::Sender<Result<()>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
}

/// The handle to a running node. Dropping every clone stops the node; [`NodeHandle::shutdown`]
/// stops it and waits.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    tx: mpsc::Sender<Command>,
    shutdown: Arc<tokio::sync::Notify>,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    registry: Arc<Registry>,
}

impl NodeHandle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the listeners reported at start, each ending in `/p2p/<peer id>`
    /// (WebRTC-direct ones with their `/certhash`).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The Prometheus registry (libp2p metrics and ours).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the Prometheus text (OpenMetrics) format.
    pub fn metrics_text(&self) -> String {
        let mut body = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        body
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// A snapshot of the node's state.
    pub async fn state(&self) -> Result<NodeState> {
        self.ask(Command::State).await
    }

    /// Looks up `peer`'s node record in the DHT (verified; `None` if nobody has it).
    pub async fn get_node_record(&self, peer: PeerId) -> Result<Option<NodeRecord>> {
        Ok(self.lookup_node_record(peer).await?.record)
    }

    /// [`Self::get_node_record`] with the query's statistics.
    pub async fn lookup_node_record(&self, peer: PeerId) -> Result<Lookup> {
        self.ask(|tx| Command::GetRecord(peer, tx)).await?
    }

    /// The peers registered as serving `model`.
    pub async fn model_providers(&self, model: &str) -> Result<Vec<PeerId>> {
        self.ask(|tx| Command::Providers(model.to_owned(), tx))
            .await?
    }

    /// Asks a connected peer for its record directly (`/kwaainet/info/1.0.0`).
    pub async fn ask_info(&self, peer: PeerId) -> Result<NodeRecord> {
        self.ask(|tx| Command::AskInfo(peer, tx)).await?
    }

    /// Publishes our record now and waits until at least one peer stored it.
    pub async fn publish(&self) -> Result<()> {
        self.ask(Command::Publish).await?
    }

    /// Dials `addr` and waits for that connection: `Ok` once it is established, an error
    /// when it fails or is not established within the config's `dial_timeout_secs`. Other
    /// connections (inbound ones, or another dial to the same peer) do not answer it.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Stops the node: closes its connections and listeners, and waits for it.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let join = self.done.lock().await.take();
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}

/// Our own metrics, next to libp2p's.
#[derive(Debug, Default, Clone)]
struct NodeMetrics {
    connected_peers: Gauge,
    routing_table_peers: Gauge,
    dht_records: Gauge,
    rejected_records: Counter,
    misbehaving_peers: Counter,
    records_published: Counter,
}

impl NodeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("kwaainet");
        r.register(
            "connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        r.register(
            "routing_table_peers",
            "Peers in the Kademlia routing table",
            m.routing_table_peers.clone(),
        );
        r.register(
            "dht_records",
            "DHT records in the local store",
            m.dht_records.clone(),
        );
        r.register(
            "rejected_records",
            "DHT records refused (bad signature, size, key, version)",
            m.rejected_records.clone(),
        );
        r.register(
            "misbehaving_peers",
            "Peers disconnected for protocol violations",
            m.misbehaving_peers.clone(),
        );
        r.register(
            "records_published",
            "Successful publications of our node record",
            m.records_published.clone(),
        );
        m
    }
}

/// A `NodeHandle::dial` waiting for its connection.
struct PendingDial {
    addr: Multiaddr,
    deadline: tokio::time::Instant,
    tx: oneshot::Sender<Result<()>>,
}

enum Pending {
    GetRecord(PeerId, Option<oneshot::Sender<Result<Lookup>>>),
    Providers(
        HashSet<PeerId>,
        Option<oneshot::Sender<Result<Vec<PeerId>>>>,
    ),
    Publish(Vec<oneshot::Sender<Result<()>>>),
}

struct Runtime {
    swarm: Swarm<Behaviour>,
    key: Keypair,
    config: NodeConfig,
    started: Instant,
    metrics: Metrics,
    ours: NodeMetrics,
    pending: HashMap<kad::QueryId, Pending>,
    info_pending:
        HashMap<request_response::OutboundRequestId, (PeerId, oneshot::Sender<Result<NodeRecord>>)>,
    /// `NodeHandle::dial`s in flight, by the connection each started.
    dials: HashMap<ConnectionId, PendingDial>,
    peers: HashMap<PeerId, PeerState>,
    record_published_at: Option<u64>,
    republish_at: Option<tokio::time::Instant>,
    last_announced: Vec<AddressEntry>,
    misbehaving: u64,
    /// Relays met (peers serving the circuit relay v2 hop protocol), with an address of each.
    relays: HashMap<PeerId, Multiaddr>,
    /// Our reservations: the relay and the listener of its circuit address.
    reservations: HashMap<PeerId, ListenerId>,
    nat: autonat::NatStatus,
}

/// Relays we reserve a slot on at once (more only add fallbacks).
const MAX_RESERVATIONS: usize = 2;
/// Relays we remember as candidates.
const MAX_RELAY_CANDIDATES: usize = 16;
/// The protocol a circuit relay v2 server serves.
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

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

    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let mut rt = Runtime {
        swarm,
        key,
        config,
        started: Instant::now(),
        metrics,
        ours,
        pending: HashMap::new(),
        info_pending: HashMap::new(),
        dials: HashMap::new(),
        peers: HashMap::new(),
        record_published_at: None,
        republish_at: None,
        last_announced: Vec::new(),
        misbehaving: 0,
        relays: HashMap::new(),
        reservations: HashMap::new(),
        nat: autonat::NatStatus::Unknown,
    };
    rt.start();
    let join = tokio::spawn(rt.run(rx, shutdown.clone()));
    Ok(NodeHandle {
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        tx,
        shutdown,
        done: Arc::new(tokio::sync::Mutex::new(Some(join))),
        registry: Arc::new(registry),
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

impl Runtime {
    fn allow_local(&self) -> bool {
        self.config.allow_local_addrs
    }

    fn start(&mut self) {
        if self.allow_local() {
            // On a local network the listen addresses are what others dial.
            let addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
            for a in addrs {
                if is_dialable(&a, true) {
                    self.swarm.add_external_address(a);
                }
            }
        }
        for addr in self.config.bootstrap.clone() {
            let (transport_addr, peer) = split_peer(&addr);
            match peer {
                Some(peer) => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, transport_addr);
                }
                None => {
                    tracing::warn!(%addr, "bootstrap address without /p2p/<peer id>: dialing it anyway")
                }
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        if !self.config.bootstrap.is_empty()
            && let Err(e) = self.swarm.behaviour_mut().kad.bootstrap()
        {
            tracing::debug!(error = %e, "no peers to bootstrap from yet");
        }
        for span in self.config.spans.clone() {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(model_key(&span.model))
            {
                tracing::warn!(model = %span.model, error = %e, "cannot register as provider");
            }
        }
        // Our record goes into our own store at once (so `get_node_record(self)` works even
        // alone), and out to the DHT after the bootstrap.
        self.publish(None);
    }

    fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::new();
        if self.config.full && self.config.bootstrap.is_empty() {
            roles.push(Role::Bootstrap);
        }
        if self.config.relay {
            roles.push(Role::Relay);
        }
        roles.push(if self.config.full {
            Role::Full
        } else {
            Role::Client
        });
        roles
    }

    /// The addresses we announce: confirmed external ones, plus listen addresses that are
    /// dialable (globally, or on the local network when allowed). Never `0.0.0.0`.
    fn announced(&self) -> Vec<AddressEntry> {
        let local = self.allow_local();
        let mut seen = HashSet::new();
        self.swarm
            .external_addresses()
            .chain(self.swarm.listeners())
            .filter(|a| is_dialable(a, local))
            .filter(|a| seen.insert((*a).clone()))
            .take(MAX_ADDRESSES)
            .map(|a| AddressEntry::new(a.clone()))
            .collect()
    }

    /// [`NodeState::browser_addrs`].
    fn browser_addrs(&self) -> Vec<Multiaddr> {
        let me = *self.swarm.local_peer_id();
        let mut ranked: Vec<(u8, Multiaddr)> = self
            .announced()
            .into_iter()
            .filter(|a| !a.relayed)
            .filter_map(|a| Some((record::browser_rank(&a.addr)?, a.addr)))
            .collect();
        ranked.sort_by_key(|(rank, _)| *rank);
        ranked
            .into_iter()
            .map(|(_, a)| a.with(Protocol::P2p(me)))
            .collect()
    }

    fn own_record(&self) -> NodeRecord {
        NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: *self.swarm.local_peer_id(),
            roles: self.roles(),
            addrs: self.announced(),
            accelerator: self.config.accelerator,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            region: self.config.region.clone(),
            spans: self.config.spans.clone(),
            issued_at: unix_now(),
        }
    }

    fn signed_own_record(&self) -> Result<Vec<u8>> {
        self.own_record().sign(&self.key)
    }

    /// Puts our record in the DHT; `reply` (if any) learns the outcome.
    fn publish(&mut self, reply: Option<oneshot::Sender<Result<()>>>) {
        let value = match self.signed_own_record() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign our own record");
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                return;
            }
        };
        self.last_announced = self.announced();
        let me = *self.swarm.local_peer_id();
        let mut record = Record::new(node_key(&me), value);
        record.publisher = Some(me);
        record.expires = Some(Instant::now() + self.config.record_ttl());
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
        {
            Ok(id) => {
                self.pending
                    .insert(id, Pending::Publish(reply.into_iter().collect()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store our record");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Query(e.to_string())));
                }
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: Arc<tokio::sync::Notify>) {
        let mut refresh = tokio::time::interval(self.config.refresh_interval());
        refresh.tick().await; // the first tick is immediate; `start` published already
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_TICK);
        loop {
            tokio::select! {
                _ = shutdown.notified() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break, // every handle dropped
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = refresh.tick() => self.publish(None),
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
        tracing::info!("node stopping");
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        // Let the close frames go out (bounded).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = tokio::time::Instant::now();
        let secs = self.config.dial_timeout_secs.max(1);
        for (id, dial) in self.dials.extract_if(|_, d| d.deadline <= now) {
            // The attempt itself ends by the transport's own timeouts; its connection, if it
            // comes late, is one nobody waits for and closes when idle.
            let _ = self.swarm.close_connection(id);
            let _ = dial.tx.send(Err(Error::Dial {
                addr: dial.addr,
                reason: format!("no connection within {secs} s"),
            }));
        }
        if self
            .republish_at
            .is_some_and(|t| t <= tokio::time::Instant::now())
        {
            self.republish_at = None;
            self.publish(None);
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        let routing: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
        let records = kad.store_mut().records().count();
        self.ours.routing_table_peers.set(routing as i64);
        self.ours.dht_records.set(records as i64);
        self.ours.connected_peers.set(self.peers.len() as i64);
    }

    fn addresses_changed(&mut self) {
        if self.republish_at.is_none() && self.announced() != self.last_announced {
            self.republish_at = Some(tokio::time::Instant::now() + REPUBLISH_DEBOUNCE);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::State(tx) => {
                let _ = tx.send(self.state());
            }
            Command::GetRecord(peer, tx) => {
                let id = self.swarm.behaviour_mut().kad.get_record(node_key(&peer));
                self.pending.insert(id, Pending::GetRecord(peer, Some(tx)));
            }
            Command::Providers(model, tx) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(model_key(&model));
                self.pending
                    .insert(id, Pending::Providers(HashSet::new(), Some(tx)));
            }
            Command::AskInfo(peer, tx) => {
                let id = self.swarm.behaviour_mut().info.send_request(
                    &peer,
                    Request::Info(InfoRequest {
                        v: INFO_REQUEST_VERSION,
                    }),
                );
                self.info_pending.insert(id, (peer, tx));
            }
            Command::Publish(tx) => self.publish(Some(tx)),
            Command::Dial(addr, tx) => {
                // A `/p2p/<peer id>` in the address is checked against the peer's key.
                let opts = DialOpts::from(addr.clone());
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        let timeout = Duration::from_secs(self.config.dial_timeout_secs.max(1));
                        let deadline = tokio::time::Instant::now() + timeout;
                        self.dials.insert(id, PendingDial { addr, deadline, tx });
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let _ = tx.send(Err(Error::Dial { addr, reason }));
                    }
                }
            }
        }
    }

    fn state(&mut self) -> NodeState {
        let me = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let kad_mode = match kad.mode() {
            kad::Mode::Server => KadMode::Server,
            kad::Mode::Client => KadMode::Client,
        };
        let routing_table_peers = kad.kbuckets().map(|b| b.num_entries()).sum();
        let dht_records = kad.store_mut().records().count();
        let mut connected_peers: Vec<PeerState> = self.peers.values().cloned().collect();
        connected_peers.sort_by_key(|p| p.peer_id.to_string());
        NodeState {
            peer_id: me,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: self.roles(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen_addrs: self
                .swarm
                .listeners()
                .map(|a| a.clone().with(Protocol::P2p(me)))
                .collect(),
            announced: self.announced(),
            browser_addrs: self.browser_addrs(),
            kad_mode,
            routing_table_peers,
            dht_records,
            connected_peers,
            record_published_at: self.record_published_at,
            misbehaving_peers: self.misbehaving,
            relay_reservations: self.reservations.keys().copied().collect(),
            nat_status: match self.nat {
                autonat::NatStatus::Public(_) => NatStatus::Public,
                autonat::NatStatus::Private => NatStatus::Private,
                autonat::NatStatus::Unknown => NatStatus::Unknown,
            },
        }
    }

    /// Whether we should be reachable through relays now.
    fn wants_relays(&self) -> bool {
        match self.config.relay_reservations {
            RelayReservations::Always => true,
            RelayReservations::Auto => matches!(self.nat, autonat::NatStatus::Private),
            RelayReservations::Off => false,
        }
    }

    /// Reserves a slot on known relays, up to [`MAX_RESERVATIONS`], or releases them all
    /// when we no longer need them. The relay client renews a reservation while its
    /// connection lives; a lost one closes its listener (see `on_listener_closed`).
    fn update_reservations(&mut self) {
        if !self.wants_relays() {
            for (relay, id) in self.reservations.drain() {
                tracing::info!(%relay, "releasing relay reservation");
                self.swarm.remove_listener(id);
            }
            return;
        }
        let missing = MAX_RESERVATIONS.saturating_sub(self.reservations.len());
        let picks: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(p, _)| !self.reservations.contains_key(p))
            .take(missing)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (relay, addr) in picks {
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%circuit, "requesting a relay reservation");
                    self.reservations.insert(relay, id);
                }
                Err(e) => {
                    tracing::warn!(%circuit, error = %e, "cannot listen through relay");
                    self.relays.remove(&relay);
                }
            }
        }
    }

    /// A listener closed: if it was a relay reservation, forget that relay (it refused us
    /// or went away; it becomes a candidate again when we next identify it) and try
    /// another.
    fn on_listener_closed(&mut self, listener: ListenerId) {
        let Some(relay) = self
            .reservations
            .iter()
            .find_map(|(p, id)| (*id == listener).then_some(*p))
        else {
            return;
        };
        tracing::info!(%relay, "relay reservation ended");
        self.reservations.remove(&relay);
        self.relays.remove(&relay);
        self.update_reservations();
        self.addresses_changed();
    }

    fn on_autonat(&mut self, e: autonat::Event) {
        if let autonat::Event::StatusChanged { old, new } = e {
            tracing::info!(?old, ?new, "reachability changed");
            self.nat = new;
            self.update_reservations();
        } else {
            tracing::debug!(?e, "autonat");
        }
    }

    fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
            }
            other => tracing::debug!(?other, "relay client"),
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&ev);
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.metrics.record(&e);
                self.on_kad(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.metrics.record(&e);
                self.on_identify(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                self.metrics.record(&e);
                if let (Ok(rtt), Some(p)) = (e.result, self.peers.get_mut(&e.peer)) {
                    p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => {
                self.metrics.record(&e);
                tracing::debug!(?e, "relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => {
                self.metrics.record(&e);
                tracing::debug!(?e, "dcutr");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Info(e)) => self.on_info(e),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.on_autonat(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => self.on_relay_client(e),
            SwarmEvent::ListenerClosed { listener_id, .. } => self.on_listener_closed(listener_id),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(v)) => match v {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let address = endpoint.get_remote_address().clone();
                self.peers.entry(peer_id).or_insert(PeerState {
                    peer_id,
                    address,
                    agent: None,
                    rtt_ms: None,
                });
                if let Some(dial) = self.dials.remove(&connection_id) {
                    let _ = dial.tx.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                if let Some(dial) = self.dials.remove(&connection_id) {
                    let reason = error.to_string();
                    let _ = dial.tx.send(Err(Error::Dial {
                        addr: dial.addr,
                        reason,
                    }));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.allow_local() && is_dialable(&address, true) {
                    self.swarm.add_external_address(address);
                }
                self.addresses_changed();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.addresses_changed();
            }
            SwarmEvent::ExternalAddrExpired { .. } | SwarmEvent::ExpiredListenAddr { .. } => {
                self.addresses_changed();
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = e else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&peer_id) {
            p.agent = Some(info.agent_version.chars().take(MAX_AGENT_CHARS).collect());
        }
        let local = self.allow_local();
        if info
            .protocols
            .iter()
            .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL)
            && (self.relays.contains_key(&peer_id) || self.relays.len() < MAX_RELAY_CANDIDATES)
            && let Some(addr) = info
                .listen_addrs
                .iter()
                .take(MAX_ADDRESSES)
                .find(|a| is_dialable(a, local) && !a.iter().any(|p| p == Protocol::P2pCircuit))
        {
            let (addr, _) = split_peer(addr);
            self.relays.insert(peer_id, addr);
            self.update_reservations();
        }
        // Only DHT servers of *our* DHT go into the routing table, with addresses others
        // can dial.
        let serves_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
        // Into a bucket with room, or as new addresses of a peer it already holds. A full
        // bucket keeps its (older, proven) peers: Kademlia would dial the bucket's oldest
        // disconnected peer to test it, and that peer's identify of us would do the same in
        // *its* table, a chain of dials that grew with the swarm (engine/p2p/README.md,
        // "Scale simulation"). Newcomers still enter full buckets through our own
        // queries' dials, which Kademlia handles itself.
        if serves_kad && self.room_in_routing_table(peer_id) {
            for addr in info.listen_addrs.into_iter().take(MAX_ADDRESSES) {
                if is_dialable(&addr, local) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
        }
    }

    /// Whether `peer` is in our routing table or its bucket has room.
    fn room_in_routing_table(&mut self, peer: PeerId) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbucket(peer)
            .is_none_or(|b| {
                b.num_entries() < kad::K_VALUE.get()
                    || b.iter().any(|e| *e.node.key.preimage() == peer)
            })
    }

    fn misbehaved(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, why, "protocol violation: disconnecting");
        self.misbehaving += 1;
        self.ours.misbehaving_peers.inc();
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_info(&mut self, e: request_response::Event<Request, InfoResponse>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Request::Malformed(why),
                    ..
                } => {
                    self.misbehaved(peer, &why);
                }
                request_response::Message::Request { channel, .. } => {
                    match self.signed_own_record() {
                        Ok(bytes) => {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .info
                                .send_response(channel, InfoResponse(bytes));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot sign our record"),
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((asked, tx)) = self.info_pending.remove(&request_id) {
                        let rec = response.verify(asked, peer);
                        let _ = tx.send(rec);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((_, tx)) = self.info_pending.remove(&request_id) {
                    let _ = tx.send(Err(Error::Query(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // Malformed requests arrive as `Request::Malformed` (above); what fails
                // here is I/O or a timeout, not necessarily the peer's fault.
                tracing::debug!(%peer, %error, "inbound info request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_kad(&mut self, e: kad::Event) {
        match e {
            kad::Event::InboundRequest { request } => self.on_kad_inbound(request),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                self.on_query(id, result, step.last, &stats);
            }
            _ => {}
        }
    }

    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(record),
                ..
            } => {
                if let Err(e) = record::validate_stored(&record.key, &record.value) {
                    tracing::debug!(%source, error = %e, "refused a DHT record");
                    self.ours.rejected_records.inc();
                    return;
                }
                let store = self.swarm.behaviour_mut().kad.store_mut();
                // Never roll a record back to an older one (replayed or stale replica).
                let newer = match (store.get(&record.key), decode_node_record(&record.value)) {
                    (Some(old), Ok(new)) => decode_node_record(&old.value)
                        .map(|o| new.issued_at >= o.issued_at)
                        .unwrap_or(true),
                    _ => true,
                };
                if newer && let Err(e) = store.put(record) {
                    tracing::debug!(error = %e, "store full");
                }
            }
            kad::InboundRequest::AddProvider {
                record: Some(provider),
            } => {
                let ok = std::str::from_utf8(provider.key.as_ref())
                    .is_ok_and(|k| k.starts_with("/kwaainet/model/") && k.len() <= 256);
                if ok {
                    let store = self.swarm.behaviour_mut().kad.store_mut();
                    if let Err(e) = store.add_provider(provider) {
                        tracing::debug!(error = %e, "provider store full");
                    }
                } else {
                    self.ours.rejected_records.inc();
                }
            }
            _ => {}
        }
    }

    fn on_query(
        &mut self,
        id: kad::QueryId,
        result: QueryResult,
        last: bool,
        stats: &kad::QueryStats,
    ) {
        match result {
            QueryResult::Bootstrap(Ok(ok)) if ok.num_remaining == 0 => {
                tracing::info!(peer = %ok.peer, "DHT bootstrap done");
                self.publish(None);
            }
            QueryResult::Bootstrap(Ok(_)) => {}
            QueryResult::Bootstrap(Err(e)) => tracing::debug!(error = %e, "bootstrap failed"),
            QueryResult::GetRecord(res) => {
                let Some(Pending::GetRecord(peer, _)) = self.pending.get(&id) else {
                    return;
                };
                let peer = *peer;
                let (found, done) = match res {
                    Ok(GetRecordOk::FoundRecord(found)) => {
                        match decode_node_record(&found.record.value) {
                            Ok(rec) if rec.peer_id == peer => (Some(Ok(Some(rec))), true),
                            _ => {
                                self.ours.rejected_records.inc();
                                (None, last)
                            }
                        }
                    }
                    Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. })
                    | Err(kad::GetRecordError::NotFound { .. }) => (None, true),
                    Err(e) => (Some(Err(Error::Query(e.to_string()))), true),
                };
                if !done {
                    return;
                }
                if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                    q.finish();
                }
                if let Some(Pending::GetRecord(_, Some(tx))) = self.pending.remove(&id) {
                    let outcome = found.unwrap_or(Ok(None)).map(|record| Lookup {
                        record,
                        requests: stats.num_requests(),
                        successes: stats.num_successes(),
                        elapsed: stats.duration().unwrap_or_default(),
                    });
                    let _ = tx.send(outcome);
                }
            }
            QueryResult::GetProviders(res) => {
                let Some(Pending::Providers(set, _)) = self.pending.get_mut(&id) else {
                    return;
                };
                let mut failed = None;
                match res {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        set.extend(providers)
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => failed = Some(e.to_string()),
                }
                if (last || failed.is_some())
                    && let Some(Pending::Providers(set, Some(tx))) = self.pending.remove(&id)
                {
                    let _ = tx.send(match failed {
                        Some(e) if set.is_empty() => Err(Error::Query(e)),
                        _ => Ok(set.into_iter().collect()),
                    });
                }
            }
            QueryResult::PutRecord(res) => {
                if !last {
                    return;
                }
                let outcome = match res {
                    Ok(_) => {
                        self.record_published_at = Some(unix_now());
                        self.ours.records_published.inc();
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing our record failed");
                        Err(Error::Query(e.to_string()))
                    }
                };
                if let Some(Pending::Publish(txs)) = self.pending.remove(&id) {
                    for tx in txs {
                        let _ = tx.send(
                            outcome
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| Error::Query(e.to_string())),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}
