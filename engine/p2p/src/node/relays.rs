//! Relay-reservation policy: reachable behind a NAT through circuit relay v2.
//!
//! The node remembers the relays it meets (peers whose identify lists the hop protocol,
//! up to [`MAX_RELAY_CANDIDATES`]) and, when `relay_reservations` asks for it (`auto`: while
//! AutoNAT finds us private; `always`; `off`), reserves a slot on [`MAX_RESERVATIONS`] of
//! them. A reservation that ends moves on to the next relay; all are released when we no
//! longer want them (AutoNAT finds us public again).

use std::collections::HashMap;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, relay};

use super::runtime::Runtime;
use super::split_peer;
use crate::behaviour::Behaviour;
use crate::config::RelayReservations;
use crate::record::{MAX_ADDRESSES, is_dialable};

/// Relays we reserve a slot on at once (more only add fallbacks).
const MAX_RESERVATIONS: usize = 2;
/// Relays we remember as candidates.
const MAX_RELAY_CANDIDATES: usize = 16;
/// The protocol a circuit relay v2 server serves.
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

#[derive(Debug, Default)]
pub(super) struct Relays {
    /// Relays met (peers serving the circuit relay v2 hop protocol), with an address of each.
    candidates: HashMap<PeerId, Multiaddr>,
    /// Our reservations: the relay and the listener of its circuit address.
    reservations: HashMap<PeerId, ListenerId>,
}

impl Relays {
    /// Relays holding a reservation for us.
    pub(super) fn reserved(&self) -> Vec<PeerId> {
        self.reservations.keys().copied().collect()
    }

    /// Remembers `peer` if identify says it is a relay and there is room; returns whether
    /// it did.
    fn on_identify(&mut self, peer: PeerId, info: &identify::Info, allow_local: bool) -> bool {
        let is_relay = info
            .protocols
            .iter()
            .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL);
        if !is_relay
            || (!self.candidates.contains_key(&peer)
                && self.candidates.len() >= MAX_RELAY_CANDIDATES)
        {
            return false;
        }
        let Some(addr) =
            info.listen_addrs.iter().take(MAX_ADDRESSES).find(|a| {
                is_dialable(a, allow_local) && !a.iter().any(|p| p == Protocol::P2pCircuit)
            })
        else {
            return false;
        };
        let (addr, _) = split_peer(addr);
        self.candidates.insert(peer, addr);
        true
    }

    /// Reserves a slot on known relays, up to [`MAX_RESERVATIONS`], or releases them all
    /// when `wanted` is false. The relay client renews a reservation while its connection
    /// lives; a lost one closes its listener (see [`Self::on_listener_closed`]).
    fn update(&mut self, swarm: &mut Swarm<Behaviour>, wanted: bool) {
        if !wanted {
            for (relay, id) in self.reservations.drain() {
                tracing::info!(%relay, "releasing relay reservation");
                swarm.remove_listener(id);
            }
            return;
        }
        let missing = MAX_RESERVATIONS.saturating_sub(self.reservations.len());
        let picks: Vec<(PeerId, Multiaddr)> = self
            .candidates
            .iter()
            .filter(|(p, _)| !self.reservations.contains_key(p))
            .take(missing)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (relay, addr) in picks {
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%circuit, "requesting a relay reservation");
                    self.reservations.insert(relay, id);
                }
                Err(e) => {
                    tracing::warn!(%circuit, error = %e, "cannot listen through relay");
                    self.candidates.remove(&relay);
                }
            }
        }
    }

    /// A listener closed: if it was a relay reservation, forget that relay (it refused us
    /// or went away; it becomes a candidate again when we next identify it) and return it.
    fn on_listener_closed(&mut self, listener: ListenerId) -> Option<PeerId> {
        let relay = self
            .reservations
            .iter()
            .find_map(|(p, id)| (*id == listener).then_some(*p))?;
        self.reservations.remove(&relay);
        self.candidates.remove(&relay);
        Some(relay)
    }
}

impl Runtime {
    /// Whether we should be reachable through relays now.
    fn wants_relays(&self) -> bool {
        match self.config.relay_reservations {
            RelayReservations::Always => true,
            RelayReservations::Auto => matches!(self.nat, autonat::NatStatus::Private),
            RelayReservations::Off => false,
        }
    }

    fn update_reservations(&mut self) {
        let wanted = self.wants_relays();
        self.relays.update(&mut self.swarm, wanted);
    }

    /// Identify told us about `peer`: a relay becomes a candidate, maybe a reservation.
    pub(super) fn relay_identified(&mut self, peer: PeerId, info: &identify::Info) {
        let local = self.allow_local();
        if self.relays.on_identify(peer, info, local) {
            self.update_reservations();
        }
    }

    /// A listener closed: a lost reservation moves on to another relay.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        let Some(relay) = self.relays.on_listener_closed(listener) else {
            return;
        };
        tracing::info!(%relay, "relay reservation ended");
        self.update_reservations();
        self.addresses_changed();
    }

    pub(super) fn on_autonat(&mut self, e: autonat::Event) {
        if let autonat::Event::StatusChanged { old, new } = e {
            tracing::info!(?old, ?new, "reachability changed");
            self.nat = new;
            self.update_reservations();
        } else {
            tracing::debug!(?e, "autonat");
        }
    }

    pub(super) fn on_relay_client(&mut self, e: relay::client::Event) {
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
}
