//! The link to the bootstrap node: dial its addresses one at a time (the transport that
//! worked last first), reconnect with a bounded exponential back-off when it goes away,
//! and hold a relay reservation on it while connected.

use std::time::Duration;

use futures::FutureExt;
use futures::future::Fuse;
use futures_timer::Delay;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use web_time::Instant;

use super::BrowserEvent;
use super::runtime::Runtime;
use crate::error::Error;

/// First reconnect delay; doubles per failed attempt up to
/// [`BrowserConfig::max_backoff`](super::BrowserConfig::max_backoff).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Where the node stands with its bootstrap peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// First dial round in flight.
    Joining,
    Connected,
    /// Reconnect attempt `n` is dialing or scheduled.
    Reconnecting(u32),
    Offline,
}

/// `addr` ending in `/p2p/<peer>` (the dialed address may already carry it).
pub(super) fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

pub(super) fn transport_of(addr: &Multiaddr) -> &'static str {
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
    /// Dials the bootstrap node's addresses one at a time, in the given order. (Not one
    /// dial with all of them: the swarm creates every address's dial future up front, so
    /// the later addresses' timeouts would run out while the first one is tried.)
    ///
    /// After a first connection, the addresses of the transport that worked go first (the
    /// order is otherwise kept): a browser that cannot complete WebRTC-direct with this node
    /// does not wait out that dial's timeout again on every reconnect.
    pub(super) fn dial_bootstrap(&mut self) {
        let mut order = self.addrs.clone();
        if let Some(kind) = self.last_transport {
            order.sort_by_key(|a| transport_of(a) != kind);
        }
        self.dial_queue = order.into_iter().rev().collect();
        self.dial_errors.clear();
        self.dial_started = Some(Instant::now());
        self.dial_next();
    }

    pub(super) fn dial_next(&mut self) {
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

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        FIRST_BACKOFF
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff)
    }

    /// Schedules reconnect attempt `attempt`, or goes offline once they are used up.
    pub(super) fn schedule_reconnect(&mut self, attempt: u32, why: &str) {
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

    pub(super) fn listen_on_relay(&mut self) {
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
}
