//! The composed network behaviour of a KwaaiNet node.
//!
//! Connection limits, identify, ping, Kademlia (`/kwaainet/kad/1.0.0`), circuit relay v2
//! (server optional, client always), DCUtR hole punching, AutoNAT (optional) and the
//! `/kwaainet/info/1.0.0` request-response protocol.

use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, autonat, connection_limits, dcutr, identify, kad, ping, relay};

use crate::config::{IDENTIFY_PROTOCOL, KAD_PROTOCOL, NodeConfig};
use crate::record::MAX_RECORD_BYTES;
use crate::{host, info};

/// Largest Kademlia message (libp2p's default is 16 KiB; ours carry up to 20 signed records
/// of [`MAX_RECORD_BYTES`] in a GET_VALUE/FIND_NODE reply, so a little more).
pub const KAD_MAX_PACKET: usize = 64 * 1024;
/// A Kademlia query (lookup, publication) gives up after this long.
pub const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// One Kademlia request to one peer gives up after this long.
pub const KAD_SUBSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay reservations and circuits one peer may open per [`RELAY_RATE_WINDOW`].
pub const RELAY_RATE_PER_PEER: u32 = 30;
/// The window of [`RELAY_RATE_PER_PEER`].
pub const RELAY_RATE_WINDOW: Duration = Duration::from_secs(60);
/// An `/kwaainet/info/1.0.0` request gives up after this long.
pub const INFO_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent `/kwaainet/info/1.0.0` streams per connection at most.
pub const INFO_MAX_STREAMS: usize = 32;
/// How often connected peers are pinged (the round trip shown in the node state). A peer
/// that does not answer within [`PING_TIMEOUT`] is disconnected: a closed tab's WebRTC
/// connection is otherwise never noticed by an ICE-lite node, and a relay would keep
/// hosting the span records of a page that is gone.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// See [`PING_INTERVAL`] (libp2p's default: generous for a busy machine).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Records one node stores for others.
pub const KAD_MAX_RECORDS: usize = 16 * 1024;
/// Provider entries one node stores for others.
pub const KAD_MAX_PROVIDED_KEYS: usize = 16 * 1024;

/// All protocols of a node, composed.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derive's generated types have no Debug
pub struct Behaviour {
    /// Caps on connections (first, so it vetoes before the others see a connection).
    pub limits: connection_limits::Behaviour,
    /// Exchange of listen addresses, protocols and agent version.
    pub identify: identify::Behaviour,
    /// Liveness and round-trip time.
    pub ping: ping::Behaviour,
    /// The DHT.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Circuit relay v2 server (nodes started with `relay`).
    pub relay_server: Toggle<relay::Behaviour>,
    /// Circuit relay v2 client (reach and be reached through relays).
    pub relay_client: relay::client::Behaviour,
    /// Direct connection upgrade through relay (hole punching).
    pub dcutr: dcutr::Behaviour,
    /// Reachability probes.
    pub autonat: Toggle<autonat::Behaviour>,
    /// `/kwaainet/info/1.0.0`.
    pub info: request_response::Behaviour<info::Codec>,
    /// `/kwaainet/host/1.0.0`: relays store their clients' records (inbound only on
    /// relays; every node may ask).
    pub host: request_response::Behaviour<host::Codec>,
    /// Protocols that own their streams (`/kwaainet/inference/1.0.0`), through
    /// `libp2p-stream`'s control.
    pub streams: libp2p_stream::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour").finish_non_exhaustive()
    }
}

/// The Kademlia configuration every KwaaiNet node uses.
pub fn kad_config(config: &NodeConfig) -> kad::Config {
    let mut k = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    k.set_max_packet_size(KAD_MAX_PACKET)
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_substreams_timeout(KAD_SUBSTREAM_TIMEOUT)
        .set_record_ttl(Some(config.record_ttl()))
        .set_provider_record_ttl(Some(config.record_ttl()))
        // Our own records are re-published by the node with fresh addresses; kad's
        // publication of the stored copy would re-send stale ones.
        .set_publication_interval(None)
        .set_provider_publication_interval(Some(config.refresh_interval()))
        .set_replication_interval(Some(config.refresh_interval()))
        // Inbound PUT_VALUE / ADD_PROVIDER are checked by the node before storing.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_periodic_bootstrap_interval(config.dht_bootstrap_interval());
    k
}

impl Behaviour {
    /// Builds the behaviour for `key` with `relay_client` from the swarm builder.
    pub fn new(key: &Keypair, relay_client: relay::client::Behaviour, config: &NodeConfig) -> Self {
        let peer_id = key.public().to_peer_id();
        let l = &config.limits;
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(l.max_established))
                .with_max_established_per_peer(Some(l.max_established_per_peer))
                .with_max_pending_incoming(Some(l.max_pending_incoming))
                .with_max_pending_outgoing(Some(l.max_pending_outgoing)),
        );

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(format!("kwaainet/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_records: KAD_MAX_RECORDS,
                max_value_bytes: MAX_RECORD_BYTES,
                max_providers_per_key: 64,
                max_provided_keys: KAD_MAX_PROVIDED_KEYS,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config(config));
        // Only DHT servers join others' routing tables; clients (browsers, `full = false`)
        // query without being stored.
        kad.set_mode(Some(if config.full {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));

        let relay_server = config.relay.then(|| {
            let r = &config.relay_limits;
            let mut rc = relay::Config {
                max_reservations: r.max_reservations,
                max_reservations_per_peer: r.max_reservations_per_peer,
                reservation_duration: Duration::from_secs(r.reservation_secs.max(1)),
                max_circuits: r.max_circuits,
                max_circuits_per_peer: r.max_circuits_per_peer,
                max_circuit_duration: Duration::from_secs(r.max_circuit_secs.max(1)),
                max_circuit_bytes: r.max_circuit_bytes,
                ..relay::Config::default()
            };
            // Rate limits on top of the caps: a peer cannot churn reservations/circuits.
            if let Some(n) = NonZeroU32::new(RELAY_RATE_PER_PEER) {
                rc = rc
                    .reservation_rate_per_peer(n, RELAY_RATE_WINDOW)
                    .circuit_src_per_peer(n, RELAY_RATE_WINDOW);
            }
            relay::Behaviour::new(peer_id, rc)
        });

        let autonat = config
            .autonat
            .then(|| autonat::Behaviour::new(peer_id, autonat::Config::default()));

        let info = request_response::Behaviour::with_codec(
            info::Codec::default(),
            [(info::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(INFO_REQUEST_TIMEOUT)
                .with_max_concurrent_streams(INFO_MAX_STREAMS),
        );

        let host = request_response::Behaviour::with_codec(
            host::Codec::default(),
            [(
                host::PROTOCOL,
                if config.relay {
                    ProtocolSupport::Full
                } else {
                    ProtocolSupport::Outbound
                },
            )],
            request_response::Config::default()
                .with_request_timeout(host::TIMEOUT)
                .with_max_concurrent_streams(INFO_MAX_STREAMS),
        );

        Self {
            limits,
            identify,
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
            kad,
            relay_server: relay_server.into(),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat.into(),
            info,
            host,
            streams: libp2p_stream::Behaviour::new(),
        }
    }
}
