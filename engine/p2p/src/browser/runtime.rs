//! The page-side node's event loop: one future owns the swarm and serves the handle's
//! commands, the swarm's events and the link's timer.

use std::collections::HashMap;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{Fuse, FusedFuture};
use futures::{FutureExt, StreamExt};
use futures_timer::Delay;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::{self, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use web_time::Instant;

use super::handle::{Command, Waiter};
use super::link::{Link, transport_of, with_peer};
use super::swarm::{BrowserBehaviour, BrowserBehaviourEvent};
use super::{BrowserConfig, BrowserEvent, BrowserState, COMMAND_QUEUE, MAX_IN_FLIGHT};
use crate::behaviour::BehaviourEvent;
use crate::command::Reply;
use crate::error::{Error, Result};
use crate::host::{self, HostAsks, HostResponse};
use crate::info::InfoResponse;
use crate::lookup::{InfoAsks, RecordLookups};
use crate::msg;
use crate::record::{
    Accelerator, AddressEntry, NODE_RECORD_VERSION, NodeRecord, Role, ServedSpan, unix_now,
};

/// The loop's state; the link to the bootstrap node (`link.rs`) reads and updates the
/// fields marked `pub(super)`.
pub(super) struct Runtime {
    pub(super) swarm: Swarm<BrowserBehaviour>,
    key: Keypair,
    pub(super) config: BrowserConfig,
    pub(super) bootstrap: PeerId,
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) link: Link,
    /// The address of the connection to the bootstrap node.
    pub(super) conn_addr: Option<Multiaddr>,
    /// The transport of the last connection to the bootstrap node: reconnects try it first.
    pub(super) last_transport: Option<&'static str>,
    pub(super) dial_started: Option<Instant>,
    /// Bootstrap addresses still to try in this round (next one last).
    pub(super) dial_queue: Vec<Multiaddr>,
    pub(super) dial_errors: Vec<String>,
    /// Our dial of the bootstrap node in flight.
    pub(super) dialing: Option<ConnectionId>,
    pub(super) relay_listener: Option<ListenerId>,
    relay_addr: Option<Multiaddr>,
    /// Reservations refused or lost in a row while connected (backs off the next try).
    relay_failures: u32,
    pub(super) timer: Fuse<Delay>,
    events: mpsc::Sender<BrowserEvent>,
    pub(super) waiters: Vec<Waiter>,
    queries: RecordLookups,
    infos: InfoAsks,
    sends: HashMap<OutboundRequestId, (Instant, Reply<Result<Duration>>)>,
    /// Connected peers, with how many connections each.
    peers: HashMap<PeerId, u32>,
    /// The spans our relay hosts for us (sent again when the reservation comes back).
    hosting: Option<(Vec<ServedSpan>, Accelerator)>,
    /// The signed contribution record our hosted record carries.
    contribution: Option<String>,
    hosts: HostAsks,
    /// Our dials of other peers ([`Command::Connect`]), by connection.
    connects: HashMap<ConnectionId, (PeerId, Reply<Result<()>>)>,
}

impl Runtime {
    pub(super) fn new(
        swarm: Swarm<BrowserBehaviour>,
        key: Keypair,
        config: BrowserConfig,
        bootstrap: PeerId,
        addrs: Vec<Multiaddr>,
        events: mpsc::Sender<BrowserEvent>,
    ) -> Self {
        Self {
            swarm,
            key,
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
            events,
            waiters: Vec::new(),
            queries: RecordLookups::default(),
            infos: InfoAsks::default(),
            sends: HashMap::new(),
            peers: HashMap::new(),
            hosting: None,
            contribution: None,
            hosts: HostAsks::default(),
            connects: HashMap::new(),
        }
    }

    pub(super) fn emit(&mut self, ev: BrowserEvent) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("event queue full: dropping {:?}", e.into_inner());
                false
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.queries.len()
            + self.infos.len()
            + self.sends.len()
            + self.hosts.len()
            + self.connects.len()
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
                let kad = &mut self.swarm.behaviour_mut().node.kad;
                self.queries.start(kad, peer, tx);
            }
            Command::AskInfo(peer, tx) => {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                let addrs = self.circuit_to(peer);
                let info = &mut self.swarm.behaviour_mut().node.info;
                self.infos.start(info, peer, addrs, tx);
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
            Command::Connect(peer, addrs, tx) => {
                if self.peers.contains_key(&peer) {
                    let _ = tx.send(Ok(()));
                    return;
                }
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                let mut addrs = addrs;
                addrs.extend(self.circuit_to(peer));
                if addrs.is_empty() {
                    let _ = tx.send(Err(Error::Transport(format!(
                        "no address of {peer} to dial, and no relay to reach it through"
                    ))));
                    return;
                }
                // `Always`: our own dial, whose outcome is ours to report (a dial already in
                // flight would answer a second one with a refusal, not with its result).
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::Always)
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.connects.insert(id, (peer, tx));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::Transport(format!("dialing {peer}: {e}"))));
                    }
                }
            }
            Command::Host(spans, accelerator, tx) => {
                if self.in_flight() >= MAX_IN_FLIGHT {
                    let _ = tx.send(Err(busy()));
                    return;
                }
                self.hosting = (!spans.is_empty()).then(|| (spans.clone(), accelerator));
                self.send_host(spans, accelerator, tx);
            }
            Command::SetContribution(signed, tx) => {
                self.contribution = Some(signed);
                match self.hosting.clone() {
                    Some(_) if self.in_flight() >= MAX_IN_FLIGHT => {
                        let _ = tx.send(Err(busy()));
                    }
                    Some((spans, accelerator)) => self.send_host(spans, accelerator, tx),
                    // Carried by the next record we host.
                    None => {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Sends our signed record with `spans` to the bootstrap node (our relay) to host.
    fn send_host(
        &mut self,
        spans: Vec<ServedSpan>,
        accelerator: Accelerator,
        tx: Reply<Result<()>>,
    ) {
        let Some(addr) = self.relay_addr.clone() else {
            let _ = tx.send(Err(Error::Transport(
                "no relayed address yet: the relay reservation is not ready".into(),
            )));
            return;
        };
        let record = NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: *self.swarm.local_peer_id(),
            roles: vec![Role::Client],
            addrs: vec![AddressEntry::new(addr)],
            accelerator,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            region: None,
            spans,
            hosted: Vec::new(),
            contribution: self.contribution.clone(),
            issued_at: unix_now(),
        };
        match record.sign(&self.key) {
            Ok(bytes) => {
                let bootstrap = self.bootstrap;
                let host = &mut self.swarm.behaviour_mut().node.host;
                self.hosts.start(host, bootstrap, bytes, tx);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
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
            SwarmEvent::Behaviour(BrowserBehaviourEvent::Node(BehaviourEvent::Host(e))) => {
                self.on_host(e)
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
                // Any connection to the peer answers those waiting for one (ours, or one
                // the peer or Kademlia opened meanwhile).
                let done: Vec<ConnectionId> = self
                    .connects
                    .iter()
                    .filter(|(_, (p, _))| *p == peer_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    if let Some((_, tx)) = self.connects.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                }
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
                if let Some((peer, tx)) = self.connects.remove(&connection_id) {
                    let _ = tx.send(Err(Error::Transport(format!("dialing {peer}: {error}"))));
                }
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
                // A new reservation (after a reconnect): the relay hosts us again.
                if let Some((spans, accelerator)) = self.hosting.clone() {
                    // Nobody waits for this answer: a refusal shows in the relay's state.
                    let (tx, _) = futures::channel::oneshot::channel();
                    self.send_host(spans, accelerator, tx);
                }
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
            id,
            result: QueryResult::GetRecord(res),
            step,
            stats,
        } = e
        else {
            return;
        };
        let kad = &mut self.swarm.behaviour_mut().node.kad;
        // A refused (forged or foreign) record only means the query goes on: the page keeps
        // no metrics.
        let _refused = self.queries.on_progress(kad, id, res, step.last, &stats);
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
            } => self.infos.on_response(request_id, peer, &response),
            // A browser does not announce a record: it leaves requests unanswered.
            request_response::Event::Message { .. } => {}
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.infos.on_failure(request_id, &error),
            _ => {}
        }
    }

    fn on_host(&mut self, e: request_response::Event<host::Request, HostResponse>) {
        match e {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.hosts.on_response(request_id, response),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.hosts.on_failure(request_id, &error),
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
