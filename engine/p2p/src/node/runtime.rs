//! The node's event loop: one task owns the swarm and serves the handle's commands, the
//! swarm's events and the timers. The policies it applies live beside it: `relays.rs`,
//! `routing.rs`, `store.rs`, `announce.rs`, `lookup.rs`, `dials.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::RecordStore};
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, autonat, identify};

use super::dials::Dials;
use super::handle::Command;
use super::hosted::Hosted;
use super::lookup::Queries;
use super::metrics::NodeMetrics;
use super::relays::Relays;
use super::state::{NodeState, PeerState};
use super::{routing, split_peer, store};
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::config::NodeConfig;
use crate::info::{InfoResponse, Request};
use crate::lookup::InfoAsks;
use crate::record::{AddressEntry, is_dialable, model_key};

/// How often the runtime expires dials and re-publishes after address changes.
const HOUSEKEEPING_TICK: Duration = Duration::from_secs(1);
/// How long a stopping node lets its close frames go out.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// A peer's agent string is kept to this many characters (it is the peer's to choose).
const MAX_AGENT_CHARS: usize = 128;

/// The loop's state; the policies beside it (`announce.rs`, `lookup.rs`, `relays.rs`) read
/// and update the fields marked `pub(super)`.
pub(super) struct Runtime {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) key: Keypair,
    pub(super) config: NodeConfig,
    started: Instant,
    metrics: Metrics,
    pub(super) ours: NodeMetrics,
    pub(super) queries: Queries,
    info: InfoAsks,
    dials: Dials,
    peers: HashMap<PeerId, PeerState>,
    pub(super) record_published_at: Option<u64>,
    pub(super) republish_at: Option<tokio::time::Instant>,
    pub(super) last_announced: Vec<AddressEntry>,
    misbehaving: u64,
    pub(super) relays: Relays,
    pub(super) nat: autonat::NatStatus,
    pub(super) hosted: Hosted,
    /// The signed contribution record our node record carries.
    pub(super) contribution: Option<String>,
}

impl Runtime {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        key: Keypair,
        config: NodeConfig,
        metrics: Metrics,
        ours: NodeMetrics,
    ) -> Self {
        Self {
            swarm,
            key,
            config,
            started: Instant::now(),
            metrics,
            ours,
            queries: Queries::default(),
            info: InfoAsks::default(),
            dials: Dials::default(),
            peers: HashMap::new(),
            record_published_at: None,
            republish_at: None,
            last_announced: Vec::new(),
            misbehaving: 0,
            relays: Relays::default(),
            nat: autonat::NatStatus::Unknown,
            hosted: Hosted::default(),
            contribution: None,
        }
    }

    pub(super) fn allow_local(&self) -> bool {
        self.config.allow_local_addrs
    }

    pub(super) fn start(&mut self) {
        if self.allow_local() {
            // On a local network the listen addresses are what others dial.
            let addrs: Vec<_> = self.swarm.listeners().cloned().collect();
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

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: Arc<tokio::sync::Notify>,
    ) {
        let mut refresh = tokio::time::interval(self.config.refresh_interval());
        refresh.tick().await; // the first tick is immediate; `start` published already
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_TICK);
        loop {
            tokio::select! {
                _ = shutdown.notified() => break,
                cmd = rx.next() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break, // every handle dropped
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = refresh.tick() => self.publish(None),
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
        tracing::info!("node stopping");
        self.withdraw_spans().await;
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
        self.dials.expire(&mut self.swarm, now, secs);
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

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::State(tx) => {
                let _ = tx.send(self.state());
            }
            Command::GetRecord(peer, tx) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                self.queries.records.start(kad, peer, tx);
            }
            Command::Providers(key, tx) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                self.queries.start_providers(kad, key, tx);
            }
            Command::Provide(key, on, tx) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let res = if on {
                    kad.start_providing(key)
                        .map(|_| ())
                        .map_err(|e| crate::Error::Query(e.to_string()))
                } else {
                    kad.stop_providing(&key);
                    Ok(())
                };
                let _ = tx.send(res);
            }
            Command::Closest(key, n, tx) => {
                let target = kad::KBucketKey::new(key.to_vec());
                let kad = &mut self.swarm.behaviour_mut().kad;
                let mut peers: Vec<(kad::KBucketDistance, PeerId)> = kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .map(|p| (kad::KBucketKey::from(p).distance(&target), p))
                    .collect();
                peers.sort();
                let _ = tx.send(peers.into_iter().take(n).map(|(_, p)| p).collect());
            }
            Command::AskInfo(peer, tx) => {
                let info = &mut self.swarm.behaviour_mut().info;
                self.info.start(info, peer, Vec::new(), tx);
            }
            Command::Publish(tx) => self.publish(Some(tx)),
            Command::SetSpans(spans, tx) => self.set_spans(spans, Some(tx)),
            Command::SetContribution(signed, tx) => self.set_contribution(signed, tx),
            Command::HostOn(relay, tx) => self.host_on(relay, tx),
            Command::Dial(addr, tx) => {
                let secs = self.config.dial_timeout_secs.max(1);
                self.dials.start(&mut self.swarm, addr, secs, tx);
            }
        }
    }

    fn state(&mut self) -> NodeState {
        let me = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let kad_mode = kad.mode().into();
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
            relay_reservations: self.relays.reserved(),
            nat_status: (&self.nat).into(),
            spans: self.config.spans.clone(),
            hosted: self.hosted.peers(),
        }
    }

    pub(super) fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
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
                match e.result {
                    Ok(rtt) => {
                        if let Some(p) = self.peers.get_mut(&e.peer) {
                            p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    // A peer without ping keeps its connection.
                    Err(libp2p::ping::Failure::Unsupported) => {}
                    // A peer that stopped answering (a closed tab, a dead link) goes, with
                    // what it was hosted for (behaviour::PING_INTERVAL).
                    Err(err) => {
                        tracing::debug!(peer = %e.peer, error = %err, "ping failed: disconnecting");
                        self.swarm.close_connection(e.connection);
                    }
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
            SwarmEvent::Behaviour(BehaviourEvent::Host(e)) => self.on_host(e),
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
                self.dials.established(connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer_id);
                self.unhost(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                self.dials.failed(connection_id, &error);
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
        self.relay_identified(peer_id, &info);
        let local = self.allow_local();
        routing::on_identify(&mut self.swarm.behaviour_mut().kad, peer_id, info, local);
    }

    pub(super) fn misbehaved(&mut self, peer: PeerId, why: &str) {
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
                } => self.info.on_response(request_id, peer, &response),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.info.on_failure(request_id, &error),
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
            kad::Event::InboundRequest { request } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                store::on_inbound(kad, request, &self.ours.rejected_records);
            }
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
}
