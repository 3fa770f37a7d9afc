//! Hosting (`/kwaainet/host/1.0.0`): a relay node stores the signed records of its clients
//! that cannot be DHT servers (browser pages), lists them in its own record (`hosted`) and
//! registers as a provider of their models, so a client looking for a model's servers
//! finds them through it. Hosting ends when the client withdraws its spans or its last
//! connection to us closes. The other direction, a client asking a relay to host it, is
//! [`NodeHandle::host_on`](super::NodeHandle::host_on).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::kad::{self, Quorum, Record, store::RecordStore};
use libp2p::request_response;
use libp2p::{PeerId, multiaddr::Protocol};

use super::runtime::Runtime;
use crate::command::Reply;
use crate::error::{Error, Result};
use crate::host::{self, HostAsks, HostResponse, MIN_INTERVAL_SECS};
use crate::record::{MAX_HOSTED, NodeRecord, Role, model_key, node_key, unix_now};

/// The clients we host, and the DHT publications of their records in flight.
#[derive(Default)]
pub(super) struct Hosted {
    peers: HashMap<PeerId, Entry>,
    puts: HashSet<kad::QueryId>,
    /// Our own requests to relays.
    pub(super) asks: HostAsks,
}

struct Entry {
    record: NodeRecord,
    accepted_at: Instant,
}

impl Hosted {
    /// The peers hosted, in a stable order.
    pub(super) fn peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.peers.keys().copied().collect();
        v.sort_by_key(|p| p.to_bytes());
        v
    }

    /// The models our hosted peers serve.
    pub(super) fn models(&self) -> HashSet<String> {
        self.peers
            .values()
            .flat_map(|e| e.record.spans.iter().map(|s| s.model.clone()))
            .collect()
    }

    /// Whether query `id` stores a hosted record (not ours).
    pub(super) fn is_put(&mut self, id: kad::QueryId, last: bool) -> bool {
        let ours = self.puts.contains(&id);
        if ours && last {
            self.puts.remove(&id);
        }
        ours
    }
}

impl Runtime {
    /// The models we are a provider of: our spans' and our hosted peers'.
    pub(super) fn provided_models(&self) -> HashSet<String> {
        let mut m: HashSet<String> = self.config.spans.iter().map(|s| s.model.clone()).collect();
        m.extend(self.hosted.models());
        m
    }

    /// Registers (or ends) provider records so they follow `provided_models`, from `before`.
    pub(super) fn update_providers(&mut self, before: &HashSet<String>) {
        let after = self.provided_models();
        let kad = &mut self.swarm.behaviour_mut().kad;
        for m in after.difference(before) {
            if let Err(e) = kad.start_providing(model_key(m)) {
                tracing::warn!(model = %m, error = %e, "cannot register as provider");
            }
        }
        for m in before.difference(&after) {
            kad.stop_providing(&model_key(m));
        }
    }

    pub(super) fn on_host(&mut self, e: request_response::Event<host::Request, HostResponse>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: host::Request::Malformed(why),
                    ..
                } => self.misbehaved(peer, &why),
                request_response::Message::Request {
                    request: host::Request::Record(bytes),
                    channel,
                    ..
                } => {
                    let answer = match self.host(peer, &bytes) {
                        Ok(()) => HostResponse::accepted(),
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "hosting refused");
                            HostResponse::refused(e)
                        }
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .host
                        .send_response(channel, answer);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.hosted.asks.on_response(request_id, response),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.hosted.asks.on_failure(request_id, &error),
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound host request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Stores `peer`'s record `bytes` for it (or ends its hosting when it has no spans).
    fn host(&mut self, peer: PeerId, bytes: &[u8]) -> Result<()> {
        let me = *self.swarm.local_peer_id();
        if !self.config.relay {
            return Err(Error::Config("this node is not a relay".into()));
        }
        let record = host::verify(bytes, peer, me)?;
        let withdraw = record.spans.is_empty();
        match self.hosted.peers.get(&peer) {
            Some(old) if record.issued_at < old.record.issued_at => {
                return Err(Error::InvalidRecord("older than the record hosted".into()));
            }
            Some(old)
                if !withdraw
                    && old.accepted_at.elapsed() < Duration::from_secs(MIN_INTERVAL_SECS) =>
            {
                return Err(Error::Query(format!(
                    "one record per {MIN_INTERVAL_SECS} s"
                )));
            }
            None if withdraw => return Ok(()),
            None if self.hosted.peers.len() >= MAX_HOSTED => {
                return Err(Error::Query(format!("hosting {MAX_HOSTED} peers already")));
            }
            _ => {}
        }
        let before = self.provided_models();
        if withdraw {
            self.unhost(peer);
            return Ok(());
        }
        tracing::info!(%peer, spans = record.spans.len(), "hosting a client's record");
        let mut stored = Record::new(node_key(&peer), bytes.to_vec());
        stored.publisher = Some(peer);
        stored.expires = Some(Instant::now() + self.config.record_ttl());
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(stored, Quorum::One)
        {
            Ok(id) => {
                self.hosted.puts.insert(id);
            }
            // Kept in our own store at least: lookups that reach us find it.
            Err(e) => tracing::debug!(%peer, error = %e, "cannot store a hosted record"),
        }
        self.hosted.peers.insert(
            peer,
            Entry {
                record,
                accepted_at: Instant::now(),
            },
        );
        self.update_providers(&before);
        self.publish(None);
        Ok(())
    }

    /// Ends `peer`'s hosting, if we host it (its spans withdrawn, or it disconnected).
    pub(super) fn unhost(&mut self, peer: PeerId) {
        let before = self.provided_models();
        if self.hosted.peers.remove(&peer).is_none() {
            return;
        }
        tracing::info!(%peer, "hosting ended");
        self.swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .remove(&node_key(&peer));
        self.update_providers(&before);
        self.publish(None);
    }

    /// Asks `relay` (which must hold a reservation for us) to host our record: our spans
    /// with only our circuit addresses through it.
    pub(super) fn host_on(&mut self, relay: PeerId, reply: Reply<Result<()>>) {
        let me = *self.swarm.local_peer_id();
        let mut record = self.own_record();
        record.roles = vec![Role::Client];
        record.hosted.clear();
        record.issued_at = unix_now();
        record.addrs.retain(|a| {
            let parts: Vec<_> = a.addr.iter().collect();
            matches!(
                parts.as_slice(),
                [.., Protocol::P2p(r), Protocol::P2pCircuit] if *r == relay
            ) || matches!(
                parts.as_slice(),
                [.., Protocol::P2p(r), Protocol::P2pCircuit, Protocol::P2p(p)]
                    if *r == relay && *p == me
            )
        });
        for a in &mut record.addrs {
            if !matches!(a.addr.iter().last(), Some(Protocol::P2p(_))) {
                a.addr.push(Protocol::P2p(me));
            }
        }
        if record.addrs.is_empty() {
            let _ = reply.send(Err(Error::Config(format!(
                "no circuit address through {relay} yet (no reservation)"
            ))));
            return;
        }
        match record.sign(&self.key) {
            Ok(bytes) => {
                let host = &mut self.swarm.behaviour_mut().host;
                self.hosted.asks.start(host, relay, bytes, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}
