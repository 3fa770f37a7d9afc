//! `NodeHandle::dial`s in flight, tracked by the [`ConnectionId`] each started: only that
//! connection answers its caller (not an inbound one, nor another dial of the same peer),
//! and a dial that is not established by its deadline fails.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, Swarm};
use tokio::time::Instant;

use crate::behaviour::Behaviour;
use crate::command::Reply;
use crate::error::{Error, Result};

/// A dial waiting for its connection.
struct PendingDial {
    addr: Multiaddr,
    deadline: Instant,
    tx: Reply<Result<()>>,
}

#[derive(Default)]
pub(super) struct Dials(HashMap<ConnectionId, PendingDial>);

impl Dials {
    /// Dials `addr`; `tx` learns whether its connection was established within
    /// `timeout_secs`.
    pub(super) fn start(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        addr: Multiaddr,
        timeout_secs: u64,
        tx: Reply<Result<()>>,
    ) {
        // A `/p2p/<peer id>` in the address is checked against the peer's key.
        let opts = DialOpts::from(addr.clone());
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                let deadline = Instant::now() + Duration::from_secs(timeout_secs);
                self.0.insert(id, PendingDial { addr, deadline, tx });
            }
            Err(e) => {
                let reason = e.to_string();
                let _ = tx.send(Err(Error::Dial { addr, reason }));
            }
        }
    }

    /// Connection `id` is up.
    pub(super) fn established(&mut self, id: ConnectionId) {
        if let Some(dial) = self.0.remove(&id) {
            let _ = dial.tx.send(Ok(()));
        }
    }

    /// Connection `id` could not be established.
    pub(super) fn failed(&mut self, id: ConnectionId, error: &DialError) {
        if let Some(dial) = self.0.remove(&id) {
            let reason = error.to_string();
            let _ = dial.tx.send(Err(Error::Dial {
                addr: dial.addr,
                reason,
            }));
        }
    }

    /// Fails the dials whose `timeout_secs` ran out by `now`.
    pub(super) fn expire(&mut self, swarm: &mut Swarm<Behaviour>, now: Instant, timeout_secs: u64) {
        for (id, dial) in self.0.extract_if(|_, d| d.deadline <= now) {
            // The attempt itself ends by the transport's own timeouts; its connection, if it
            // comes late, is one nobody waits for and closes when idle.
            let _ = swarm.close_connection(id);
            let _ = dial.tx.send(Err(Error::Dial {
                addr: dial.addr,
                reason: format!("no connection within {timeout_secs} s"),
            }));
        }
    }
}
