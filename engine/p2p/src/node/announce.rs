//! What the node announces (roles, dialable addresses, spans) and the publication of its
//! signed record: at start, after the DHT bootstrap, every `refresh_secs`, and shortly
//! after its announced addresses change.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::kad::{Quorum, Record};
use libp2p::multiaddr::Protocol;

use super::runtime::Runtime;
use crate::command::Reply;
use crate::error::{Error, Result};
use crate::record::{
    self, AddressEntry, MAX_ADDRESSES, MAX_SPANS, NODE_RECORD_VERSION, NodeRecord, Role,
    ServedSpan, is_dialable, node_key, unix_now,
};

/// Debounce between an address change and the re-publication of our record.
const REPUBLISH_DEBOUNCE: Duration = Duration::from_secs(2);
/// How long a stopping node waits for its last record (without spans) to be stored.
const WITHDRAW_GRACE: Duration = Duration::from_secs(3);

impl Runtime {
    pub(super) fn roles(&self) -> Vec<Role> {
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
    pub(super) fn announced(&self) -> Vec<AddressEntry> {
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

    /// [`NodeState::browser_addrs`](super::NodeState::browser_addrs).
    pub(super) fn browser_addrs(&self) -> Vec<Multiaddr> {
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

    pub(super) fn own_record(&self) -> NodeRecord {
        NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: *self.swarm.local_peer_id(),
            roles: self.roles(),
            addrs: self.announced(),
            accelerator: self.config.accelerator,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            region: self.config.region.clone(),
            spans: self.config.spans.clone(),
            hosted: self.hosted.peers(),
            contribution: self.contribution.clone(),
            issued_at: unix_now(),
        }
    }

    pub(super) fn signed_own_record(&self) -> Result<Vec<u8>> {
        let record = self.own_record();
        match record.sign(&self.key) {
            // A full record (many addresses, spans and hosted pages) goes without its
            // contribution record rather than not at all.
            Err(Error::InvalidRecord(why)) if record.contribution.is_some() => {
                tracing::warn!(%why, "our record is full: published without its contribution record");
                NodeRecord {
                    contribution: None,
                    ..record
                }
                .sign(&self.key)
            }
            other => other,
        }
    }

    /// Puts our record in the DHT; `reply` (if any) learns the outcome.
    pub(super) fn publish(&mut self, reply: Option<Reply<Result<()>>>) {
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
            Ok(id) => self.queries.publishing(id, reply),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store our record");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Query(e.to_string())));
                }
            }
        }
    }

    /// Replaces the spans announced: provider registrations follow the set of models, and
    /// the record is published (`reply` learns when a peer stored it).
    pub(super) fn set_spans(&mut self, spans: Vec<ServedSpan>, reply: Option<Reply<Result<()>>>) {
        let checked = if spans.len() > MAX_SPANS {
            Err(Error::InvalidRecord(format!(
                "{} spans (max {MAX_SPANS})",
                spans.len()
            )))
        } else {
            spans.iter().try_for_each(ServedSpan::validate)
        };
        if let Err(e) = checked {
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
            return;
        }
        let before = self.provided_models();
        self.config.spans = spans;
        self.update_providers(&before);
        self.publish(reply);
    }

    /// Replaces the signed contribution record announced, and publishes the record.
    pub(super) fn set_contribution(&mut self, signed: String, reply: Reply<Result<()>>) {
        if signed.len() > record::MAX_CONTRIBUTION_BYTES {
            let _ = reply.send(Err(Error::InvalidRecord(format!(
                "a contribution record of {} bytes (max {})",
                signed.len(),
                record::MAX_CONTRIBUTION_BYTES
            ))));
            return;
        }
        self.contribution = Some(signed);
        self.publish(Some(reply));
    }

    /// On stop: a last record without spans (so clients stop routing here), waited for at
    /// most [`WITHDRAW_GRACE`].
    pub(super) async fn withdraw_spans(&mut self) {
        if self.config.spans.is_empty() {
            return;
        }
        let (tx, mut rx) = futures::channel::oneshot::channel();
        self.set_spans(Vec::new(), Some(tx));
        let deadline = tokio::time::Instant::now() + WITHDRAW_GRACE;
        loop {
            tokio::select! {
                _ = &mut rx => break,
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("no peer stored our last record in time");
                    break;
                }
            }
        }
    }

    /// Schedules a re-publication if what we announce changed (debounced: addresses
    /// often change in bursts).
    pub(super) fn addresses_changed(&mut self) {
        if self.republish_at.is_none() && self.announced() != self.last_announced {
            self.republish_at = Some(tokio::time::Instant::now() + REPUBLISH_DEBOUNCE);
        }
    }
}
