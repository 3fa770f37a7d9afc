//! Typed, versioned DHT records.
//!
//! Two kinds of entries live in the DHT:
//! - **node records** under `/kwaainet/node/<peer id>`: who a node is and how to reach it
//!   ([`NodeRecord`]), signed by the node's own key inside a libp2p [`SignedEnvelope`] so
//!   nobody can publish a record in another peer's name, however it was replicated;
//! - **model registry** entries: Kademlia provider records under
//!   `/kwaainet/model/<model id>` — the peers that serve (part of) a model. What span a
//!   provider serves is in its node record ([`ServedSpan`]).
//!
//! Versioning: `v` is the schema version of the payload. Additive changes (new optional
//! fields) keep `v` and old readers ignore unknown fields; a breaking change bumps `v`, and
//! readers reject versions they do not know ([`decode_node_record`]).
//! Every field a peer controls is bounded ([`MAX_RECORD_BYTES`], [`MAX_ADDRESSES`], ...).

#[cfg(not(wasm_browser))]
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::kad::RecordKey;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Schema version of [`NodeRecord`] this code writes and understands.
pub const NODE_RECORD_VERSION: u16 = 1;
/// Largest encoded record (envelope included) accepted from a peer.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Most addresses in one node record.
pub const MAX_ADDRESSES: usize = 16;
/// Most served spans in one node record.
pub const MAX_SPANS: usize = 32;
/// Longest free-form string (version, region, model id).
pub const MAX_STRING: usize = 128;
/// Most hosted peers one node record lists ([`NodeRecord::hosted`]).
pub const MAX_HOSTED: usize = 64;
/// Largest signed contribution record a node record carries.
pub const MAX_CONTRIBUTION_BYTES: usize = 2 * 1024;

const NODE_KEY_PREFIX: &str = "/kwaainet/node/";
const MODEL_KEY_PREFIX: &str = "/kwaainet/model/";
/// Provider keys of stored blobs: `/kwaainet/blob/<cid>`.
pub const BLOB_KEY_PREFIX: &str = "/kwaainet/blob/";
const ENVELOPE_DOMAIN: &str = "kwaainet-dht-record";
const NODE_PAYLOAD_TYPE: &[u8] = b"/kwaainet/node-record";

/// What a node does in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An entry point others bootstrap from (a DHT server started without bootstrap peers).
    Bootstrap,
    /// Runs a circuit relay v2 server (browsers and NATed peers reach others through it).
    Relay,
    /// A DHT server that serves model spans.
    Full,
    /// Takes part without serving the DHT (Kademlia client mode), e.g. a browser.
    Client,
}

impl std::fmt::Display for Role {
    /// As on the wire (`bootstrap`, `relay`, `full`, `client`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bootstrap => "bootstrap",
            Self::Relay => "relay",
            Self::Full => "full",
            Self::Client => "client",
        })
    }
}

/// The compute a node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accelerator {
    /// CPU only.
    #[default]
    Cpu,
    /// A native GPU (Vulkan, Metal, DX12, CUDA).
    Gpu,
    /// WebGPU in a browser.
    Webgpu,
    /// Something this version does not know.
    #[serde(other)]
    Unknown,
}

/// One address a node can be dialed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressEntry {
    /// The multiaddr (for `/webrtc-direct` with its `/certhash`).
    pub addr: Multiaddr,
    /// Reached through a relay's circuit (`/p2p-circuit`), not directly.
    pub relayed: bool,
}

impl AddressEntry {
    /// An entry for `addr`, marked relayed when it goes through a circuit.
    pub fn new(addr: Multiaddr) -> Self {
        let relayed = is_relayed(&addr);
        Self { addr, relayed }
    }
}

/// Where a served span is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanState {
    /// Loading or measuring: not taking sessions yet.
    Joining,
    /// Taking sessions.
    #[default]
    Online,
    /// Finishing its sessions before it stops or moves: takes no new ones.
    Draining,
    /// Something this version does not know.
    #[serde(other)]
    Unknown,
}

/// A contiguous range of a model's blocks that a node serves: blocks `start..end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedSpan {
    /// Model id (for example `SmolLM2-135M-Instruct.Q4_1`).
    pub model: String,
    /// First block served.
    pub start: u32,
    /// One past the last block served.
    pub end: u32,
    /// Where it is in its life.
    #[serde(default)]
    pub state: SpanState,
    /// Measured throughput: tokens per second through one block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f32>,
    /// KV-cache positions not reserved by a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_cache: Option<u32>,
}

impl ServedSpan {
    /// An online span of `model`'s blocks `start..end`, nothing measured.
    pub fn new(model: impl Into<String>, start: u32, end: u32) -> Self {
        Self {
            model: model.into(),
            start,
            end,
            state: SpanState::Online,
            throughput: None,
            free_cache: None,
        }
    }

    /// Checks the bounds a peer could violate.
    pub fn validate(&self) -> Result<()> {
        let throughput_ok = self
            .throughput
            .is_none_or(|t| t.is_finite() && (0.0..=1e9).contains(&t));
        if self.model.is_empty()
            || self.model.len() > MAX_STRING
            || self.start >= self.end
            || !throughput_ok
        {
            return Err(Error::InvalidRecord(format!(
                "bad span {}[{}..{}) (throughput {:?})",
                self.model, self.start, self.end, self.throughput
            )));
        }
        Ok(())
    }
}

/// What a node announces about itself in the DHT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Schema version ([`NODE_RECORD_VERSION`]).
    pub v: u16,
    /// The node.
    pub peer_id: PeerId,
    /// What it does.
    pub roles: Vec<Role>,
    /// Where it can be dialed; only addresses others can reach.
    pub addrs: Vec<AddressEntry>,
    /// Its compute.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// Its software version.
    pub version: String,
    /// Optional coarse region chosen by the operator: an ISO country code, `EU` or `EEA` (see
    /// [`crate::region`]; a node validates its own, readers ignore what they cannot parse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Model spans it serves.
    #[serde(default)]
    pub spans: Vec<ServedSpan>,
    /// Peers that cannot be DHT servers (browser pages, reached through this node's relay)
    /// whose own signed records this node stores for them: their spans are found through
    /// this node's provider registrations (`/kwaainet/host/1.0.0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosted: Vec<PeerId>,
    /// Its contribution to the network, as it signed it (`kwaainet-footprint`'s
    /// `SignedContribution` in JSON, at most [`MAX_CONTRIBUTION_BYTES`]): what leaderboards
    /// rank, each reader checking the signature itself. Opaque to this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution: Option<String>,
    /// When it was issued (seconds since the Unix epoch); newer wins.
    pub issued_at: u64,
}

impl NodeRecord {
    /// Checks every bound a peer could violate.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRecord(m));
        if self.v == 0 || self.v > NODE_RECORD_VERSION {
            return bad(format!("unsupported node record version {}", self.v));
        }
        if self.addrs.len() > MAX_ADDRESSES {
            return bad(format!(
                "{} addresses (max {MAX_ADDRESSES})",
                self.addrs.len()
            ));
        }
        if self.spans.len() > MAX_SPANS {
            return bad(format!("{} spans (max {MAX_SPANS})", self.spans.len()));
        }
        if self
            .contribution
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CONTRIBUTION_BYTES)
        {
            return bad(format!(
                "a contribution record over {MAX_CONTRIBUTION_BYTES} bytes"
            ));
        }
        if self.hosted.len() > MAX_HOSTED {
            return bad(format!(
                "{} hosted peers (max {MAX_HOSTED})",
                self.hosted.len()
            ));
        }
        if self.roles.len() > 8 {
            return bad("too many roles".into());
        }
        if self.version.len() > MAX_STRING
            || self.region.as_ref().is_some_and(|r| r.len() > MAX_STRING)
        {
            return bad("string field too long".into());
        }
        for s in &self.spans {
            s.validate()?;
        }
        for a in &self.addrs {
            if a.relayed != is_relayed(&a.addr) {
                return bad(format!("address {} mislabeled", a.addr));
            }
        }
        Ok(())
    }

    /// Signs the record with `key` (which must be the record's peer) into DHT value bytes.
    pub fn sign(&self, key: &Keypair) -> Result<Vec<u8>> {
        if PeerId::from(key.public()) != self.peer_id {
            return Err(Error::InvalidRecord(
                "signing key is not the record's peer".into(),
            ));
        }
        self.validate()?;
        let payload =
            serde_json::to_vec(self).map_err(|e| Error::InvalidRecord(format!("encoding: {e}")))?;
        let env = SignedEnvelope::new(
            key,
            ENVELOPE_DOMAIN.to_owned(),
            NODE_PAYLOAD_TYPE.to_vec(),
            payload,
        )?;
        let bytes = env.into_protobuf_encoding();
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Error::InvalidRecord(format!(
                "record is {} bytes (max {MAX_RECORD_BYTES})",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Decodes and verifies DHT value bytes: size, envelope signature, schema version, bounds,
/// and that the signer is the peer the record describes.
pub fn decode_node_record(bytes: &[u8]) -> Result<NodeRecord> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(Error::InvalidRecord(format!(
            "{} bytes (max {MAX_RECORD_BYTES})",
            bytes.len()
        )));
    }
    let env = SignedEnvelope::from_protobuf_encoding(bytes)
        .map_err(|e| Error::InvalidRecord(format!("envelope: {e}")))?;
    let (payload, signer) = env
        .payload_and_signing_key(ENVELOPE_DOMAIN.to_owned(), NODE_PAYLOAD_TYPE)
        .map_err(|e| Error::InvalidRecord(format!("envelope: {e}")))?;
    let record: NodeRecord = serde_json::from_slice(payload)
        .map_err(|e| Error::InvalidRecord(format!("payload: {e}")))?;
    if PeerId::from(signer.clone()) != record.peer_id {
        return Err(Error::InvalidRecord("signed by another peer".into()));
    }
    record.validate()?;
    Ok(record)
}

/// Checks a record a peer asks us to store under `key`.
pub fn validate_stored(key: &RecordKey, value: &[u8]) -> Result<()> {
    let key = std::str::from_utf8(key.as_ref())
        .map_err(|_| Error::InvalidRecord("key is not UTF-8".into()))?;
    let Some(peer) = key.strip_prefix(NODE_KEY_PREFIX) else {
        return Err(Error::InvalidRecord(format!(
            "unknown key namespace: {key:.64}"
        )));
    };
    let record = decode_node_record(value)?;
    if record.peer_id.to_string() != peer {
        return Err(Error::InvalidRecord(
            "key does not match the record's peer".into(),
        ));
    }
    Ok(())
}

/// DHT key of `peer`'s node record.
pub fn node_key(peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("{NODE_KEY_PREFIX}{peer}"))
}

/// DHT key under which the providers of `model` are registered.
pub fn model_key(model: &str) -> RecordKey {
    RecordKey::new(&format!("{MODEL_KEY_PREFIX}{model}"))
}

/// The provider key under which the holders of the blob with this CID (its string form)
/// register (kwaainet-storage's network backend).
pub fn blob_key(cid: &str) -> RecordKey {
    RecordKey::new(&format!("{BLOB_KEY_PREFIX}{cid}"))
}

/// Whether `addr` goes through a relay's circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether others can dial `addr`: not an unspecified IP (`0.0.0.0`, `::`), not a memory
/// address outside in-process swarms, and — unless `allow_local` — not loopback,
/// private, link-local or otherwise non-global.
pub fn is_dialable(addr: &Multiaddr, allow_local: bool) -> bool {
    let mut has_transport_addr = false;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) => {
                has_transport_addr = true;
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                    return false;
                }
                let local = ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_documentation()
                    || ip.octets()[0] == 0;
                if local && !allow_local {
                    return false;
                }
            }
            Protocol::Ip6(ip) => {
                has_transport_addr = true;
                if ip.is_unspecified() || ip.is_multicast() {
                    return false;
                }
                let seg0 = ip.segments()[0];
                let local = ip.is_loopback()
                    || (seg0 & 0xfe00) == 0xfc00 // unique local
                    || (seg0 & 0xffc0) == 0xfe80; // link-local
                if local && !allow_local {
                    return false;
                }
            }
            Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_) => {
                has_transport_addr = true;
            }
            Protocol::Memory(_) => {
                has_transport_addr = true;
                if !allow_local {
                    return false;
                }
            }
            // A circuit address is dialable when its relay part is: the checks above ran on
            // the relay's own address.
            Protocol::P2pCircuit => break,
            _ => {}
        }
    }
    has_transport_addr
}

/// Whether a browser can dial `addr`, and how much it prefers it (lower first): 0 for
/// WebRTC-direct with a `/certhash` (UDP, no TLS certificate needed), 1 for secure
/// WebSocket, 2 for plain WebSocket (pages on `http:` origins only). `None` otherwise
/// (TCP, QUIC: browsers have no such sockets).
pub fn browser_rank(addr: &Multiaddr) -> Option<u8> {
    let protos: Vec<Protocol> = addr.iter().collect();
    let has = |f: fn(&Protocol) -> bool| protos.iter().any(f);
    if has(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    if has(|p| matches!(p, Protocol::WebRTCDirect)) && has(|p| matches!(p, Protocol::Certhash(_))) {
        Some(0)
    } else if has(|p| matches!(p, Protocol::Wss(_) | Protocol::Tls))
        && has(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
    {
        Some(1)
    } else if has(|p| matches!(p, Protocol::Ws(_))) {
        Some(2)
    } else {
        None
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    // std's clock panics in a page: the browser's through `web-time` there.
    #[cfg(wasm_browser)]
    use web_time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_display_as_on_the_wire() {
        for r in [Role::Bootstrap, Role::Relay, Role::Full, Role::Client] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.to_string());
        }
    }

    fn sample(key: &Keypair) -> NodeRecord {
        NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: key.public().to_peer_id(),
            roles: vec![Role::Full, Role::Relay],
            addrs: vec![AddressEntry::new("/ip4/1.2.3.4/tcp/4001".parse().unwrap())],
            accelerator: Accelerator::Cpu,
            version: "0.1.0".into(),
            region: Some("DE".into()),
            spans: vec![ServedSpan::new("m", 0, 30)],
            hosted: vec![],
            contribution: None,
            issued_at: 1,
        }
    }

    /// A contribution record travels in the node record, bounded; it counts toward the
    /// record's size, which is why a full node publishes without it (node/announce.rs).
    #[test]
    fn a_contribution_record_rides_in_the_record_within_its_bounds() {
        let key = Keypair::generate_ed25519();
        let mut rec = sample(&key);
        rec.contribution = Some("{\"record\":\"…\",\"signature\":\"…\"}".into());
        let bytes = rec.sign(&key).unwrap();
        assert_eq!(decode_node_record(&bytes).unwrap(), rec);
        rec.contribution = Some("x".repeat(MAX_CONTRIBUTION_BYTES + 1));
        assert!(rec.sign(&key).is_err(), "an oversized contribution record");
        // A record full of hosted pages fits without a contribution record, not with one.
        let mut full = sample(&key);
        full.hosted = (0..MAX_HOSTED).map(|_| PeerId::random()).collect();
        // Spans with long model names until one more would not fit.
        while full.spans.len() < MAX_SPANS {
            let name = format!("{:0>100}", full.spans.len());
            full.spans.push(ServedSpan::new(name, 0, 30));
            if full.sign(&key).is_err() {
                full.spans.pop();
                break;
            }
        }
        assert!(full.sign(&key).is_ok());
        full.contribution = Some("x".repeat(MAX_CONTRIBUTION_BYTES));
        assert!(full.sign(&key).is_err());
    }

    #[test]
    fn signed_record_round_trips_and_validates_under_its_key() {
        let key = Keypair::generate_ed25519();
        let rec = sample(&key);
        let bytes = rec.sign(&key).unwrap();
        assert_eq!(decode_node_record(&bytes).unwrap(), rec);
        validate_stored(&node_key(&rec.peer_id), &bytes).unwrap();
        let other = PeerId::random();
        assert!(validate_stored(&node_key(&other), &bytes).is_err());
        assert!(validate_stored(&model_key("m"), &bytes).is_err());
    }

    #[test]
    fn forged_tampered_and_garbled_records_are_rejected() {
        let key = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        // Mallory signs a record that claims to be `key`'s.
        let rec = sample(&key);
        let forged = SignedEnvelope::new(
            &mallory,
            ENVELOPE_DOMAIN.into(),
            NODE_PAYLOAD_TYPE.to_vec(),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap()
        .into_protobuf_encoding();
        assert!(decode_node_record(&forged).is_err());
        assert!(rec.sign(&mallory).is_err());
        // One flipped byte anywhere breaks the signature or the encoding.
        let mut bytes = rec.sign(&key).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        assert!(decode_node_record(&bytes).is_err());
        assert!(decode_node_record(b"garbage").is_err());
        assert!(decode_node_record(&vec![0u8; MAX_RECORD_BYTES + 1]).is_err());
    }

    #[test]
    fn bounds_and_versions_are_enforced() {
        let key = Keypair::generate_ed25519();
        let mut rec = sample(&key);
        rec.v = NODE_RECORD_VERSION + 1;
        assert!(rec.sign(&key).is_err());
        let mut rec = sample(&key);
        rec.addrs = vec![rec.addrs[0].clone(); MAX_ADDRESSES + 1];
        assert!(rec.validate().is_err());
        let mut rec = sample(&key);
        rec.spans[0].end = 0;
        assert!(rec.validate().is_err());
        let mut rec = sample(&key);
        rec.addrs[0].relayed = true; // not a circuit address
        assert!(rec.validate().is_err());
    }

    #[test]
    fn only_dialable_addresses_pass() {
        let ok = |s: &str, local| is_dialable(&s.parse().unwrap(), local);
        assert!(ok("/ip4/8.8.8.8/tcp/1", false));
        assert!(ok("/dns4/example.org/tcp/443/wss", false));
        assert!(!ok("/ip4/0.0.0.0/tcp/1", true));
        assert!(!ok("/ip6/::/udp/1/quic-v1", true));
        assert!(!ok("/ip4/127.0.0.1/tcp/1", false));
        assert!(ok("/ip4/127.0.0.1/tcp/1", true));
        assert!(!ok("/ip4/192.168.1.2/tcp/1", false));
        assert!(!ok("/ip6/fe80::1/tcp/1", false));
        assert!(!ok("/memory/5", false));
        assert!(ok("/memory/5", true));
        let relayed: Multiaddr = format!("/ip4/8.8.8.8/tcp/1/p2p/{}/p2p-circuit", PeerId::random())
            .parse()
            .unwrap();
        assert!(is_dialable(&relayed, false));
        assert!(AddressEntry::new(relayed).relayed);
    }

    #[test]
    fn browsers_prefer_webrtc_direct_then_websocket() {
        let rank = |s: &str| browser_rank(&s.parse().unwrap());
        let hash = "uEiD_pOxNcZqF8E5pSQu6AtWX-b6Kh0RMHs0uYfnsq1F3Nw";
        assert_eq!(
            rank(&format!("/ip4/1.2.3.4/udp/1/webrtc-direct/certhash/{hash}")),
            Some(0)
        );
        assert_eq!(rank("/ip4/1.2.3.4/udp/1/webrtc-direct"), None); // no certhash: undialable
        assert_eq!(rank("/dns4/example.org/tcp/443/wss"), Some(1));
        assert_eq!(rank("/dns4/example.org/tcp/443/tls/ws"), Some(1));
        assert_eq!(rank("/ip4/1.2.3.4/tcp/2/ws"), Some(2));
        assert_eq!(rank("/ip4/1.2.3.4/tcp/2"), None);
        assert_eq!(rank("/ip4/1.2.3.4/udp/2/quic-v1"), None);
        let circuit = format!("/ip4/1.2.3.4/tcp/2/ws/p2p/{}/p2p-circuit", PeerId::random());
        assert_eq!(rank(&circuit), None);
    }
}
