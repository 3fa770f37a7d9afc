//! Node configuration: roles, addresses, limits. Plain data with serde, so a binary can
//! fill it from a TOML file, flags and environment variables.

use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::record::{Accelerator, ServedSpan};

/// The Kademlia protocol id of the KwaaiNet DHT (never the public `/ipfs/kad/1.0.0`:
/// our records and peers stay out of IPFS's DHT and theirs out of ours).
pub const KAD_PROTOCOL: &str = "/kwaainet/kad/1.0.0";
/// The identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/kwaainet/id/1.0.0";

/// Circuit relay v2 server limits. libp2p's defaults (128 KiB and 2 minutes per circuit)
/// cut an inference session's hidden-state stream within seconds; ours are sized for
/// tensor traffic and configurable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Bytes relayed per circuit, both directions together.
    pub max_circuit_bytes: u64,
    /// Lifetime of one circuit, in seconds.
    pub max_circuit_secs: u64,
    /// Circuits open at once through this relay.
    pub max_circuits: usize,
    /// Circuits open at once per source peer.
    pub max_circuits_per_peer: usize,
    /// Reservations (peers reachable through this relay) held at once.
    pub max_reservations: usize,
    /// Reservations per peer.
    pub max_reservations_per_peer: usize,
    /// Lifetime of a reservation, in seconds (the client renews it).
    pub reservation_secs: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_circuit_bytes: 1 << 30, // 1 GiB: hours of hidden states for a small model
            max_circuit_secs: 60 * 60,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_reservations: 256,
            max_reservations_per_peer: 4,
            reservation_secs: 60 * 60,
        }
    }
}

/// Connection limits (libp2p `connection-limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Established connections in total.
    pub max_established: u32,
    /// Established connections per peer.
    pub max_established_per_peer: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Outgoing dials in flight.
    pub max_pending_outgoing: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_established: 512,
            max_established_per_peer: 4,
            max_pending_incoming: 128,
            max_pending_outgoing: 128,
        }
    }
}

/// How DHT records are kept fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordTimes {
    /// Lifetime of a node record / provider record in others' stores, in seconds.
    pub ttl_secs: u64,
    /// How often a node re-publishes its own record (well under the TTL), in seconds.
    pub refresh_secs: u64,
}

impl Default for RecordTimes {
    fn default() -> Self {
        Self {
            ttl_secs: 30 * 60,
            refresh_secs: 10 * 60,
        }
    }
}

/// When a node takes circuit relay v2 reservations (so peers can reach it through a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayReservations {
    /// When AutoNAT finds the node unreachable (behind a NAT or firewall); released when
    /// it finds it reachable again.
    #[default]
    Auto,
    /// Always, on relays it meets (e.g. its bootstrap nodes started with `--relay`).
    Always,
    /// Never.
    Off,
}

/// Everything a node needs to start (besides its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Addresses to listen on (TCP, QUIC, WebSocket, WebRTC-direct, or `/memory/N` for
    /// in-process swarms).
    pub listen: Vec<Multiaddr>,
    /// Peers to bootstrap from (each with its `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Run a circuit relay v2 server.
    pub relay: bool,
    /// Serve the DHT and model spans (Kademlia server mode). Without it the node is a DHT
    /// client: it queries but stays out of others' routing tables.
    pub full: bool,
    /// Treat loopback and private addresses as dialable (local networks, tests). Off for
    /// public nodes: they never announce or accept addresses others cannot reach.
    pub allow_local_addrs: bool,
    /// Run AutoNAT (learn whether our addresses are publicly reachable).
    pub autonat: bool,
    /// Compute this node offers.
    pub accelerator: Accelerator,
    /// Coarse region the operator chooses to announce (optional).
    pub region: Option<String>,
    /// Model spans this node serves (announced in its record and as model providers).
    pub spans: Vec<ServedSpan>,
    /// Circuit relay server limits.
    pub relay_limits: RelayLimits,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// Record lifetimes.
    pub records: RecordTimes,
    /// Close a connection after this many seconds without any stream.
    pub idle_timeout_secs: u64,
    /// How often Kademlia refreshes the routing table (one lookup per bucket), in seconds;
    /// 0: only at start and whenever the table holds fewer than 20 peers.
    pub dht_bootstrap_secs: u64,
    /// When to reserve a slot on relays and announce the relayed addresses.
    pub relay_reservations: RelayReservations,
    /// How long `NodeHandle::dial` waits for its connection, in seconds.
    pub dial_timeout_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            relay: false,
            full: false,
            allow_local_addrs: false,
            autonat: true,
            accelerator: Accelerator::Cpu,
            region: None,
            spans: Vec::new(),
            relay_limits: RelayLimits::default(),
            limits: ConnectionLimits::default(),
            records: RecordTimes::default(),
            idle_timeout_secs: 60,
            dht_bootstrap_secs: 5 * 60,
            relay_reservations: RelayReservations::Auto,
            dial_timeout_secs: 20,
        }
    }
}

impl NodeConfig {
    /// The default listen addresses of a native node on `host` (an IP) with base `port`
    /// (0: ephemeral): TCP, QUIC, WebSocket and (with the `webrtc` feature) WebRTC-direct.
    pub fn default_listen(host: std::net::IpAddr, port: u16) -> Vec<Multiaddr> {
        let ip = match host {
            std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
            std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
        };
        let p = |off: u16| {
            if port == 0 {
                0
            } else {
                port.saturating_add(off)
            }
        };
        #[allow(unused_mut)]
        let mut v = vec![
            format!("{ip}/tcp/{}", p(0)),
            format!("{ip}/udp/{}/quic-v1", p(0)),
            format!("{ip}/tcp/{}/ws", p(1)),
        ];
        #[cfg(all(feature = "webrtc", not(wasm_browser)))]
        v.push(format!("{ip}/udp/{}/webrtc-direct", p(1)));
        v.into_iter().filter_map(|s| s.parse().ok()).collect()
    }

    pub(crate) fn record_ttl(&self) -> Duration {
        Duration::from_secs(self.records.ttl_secs.max(1))
    }

    pub(crate) fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.records.refresh_secs.max(1))
    }

    pub(crate) fn dht_bootstrap_interval(&self) -> Option<Duration> {
        (self.dht_bootstrap_secs > 0).then(|| Duration::from_secs(self.dht_bootstrap_secs))
    }
}
