//! What `/api/v1/state` shows, typed both ways: the node serializes these and the CLI's
//! `status` and `peers` read them back with the same types.

use libp2p::{Multiaddr, PeerId, autonat, kad};
use serde::{Deserialize, Serialize};

use crate::record::{AddressEntry, Role};

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

impl From<kad::Mode> for KadMode {
    fn from(mode: kad::Mode) -> Self {
        match mode {
            kad::Mode::Server => Self::Server,
            kad::Mode::Client => Self::Client,
        }
    }
}

impl From<&autonat::NatStatus> for NatStatus {
    fn from(status: &autonat::NatStatus) -> Self {
        match status {
            autonat::NatStatus::Public(_) => Self::Public,
            autonat::NatStatus::Private => Self::Private,
            autonat::NatStatus::Unknown => Self::Unknown,
        }
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
    /// The model spans this node announces.
    #[serde(default)]
    pub spans: Vec<crate::record::ServedSpan>,
    /// Clients (browser pages) whose records this relay hosts (`/kwaainet/host/1.0.0`).
    #[serde(default)]
    pub hosted: Vec<PeerId>,
}
