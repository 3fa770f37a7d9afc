//! The node's own Prometheus metrics (`kwaainet_*`), next to libp2p's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default, Clone)]
pub(super) struct NodeMetrics {
    pub(super) connected_peers: Gauge,
    pub(super) routing_table_peers: Gauge,
    pub(super) dht_records: Gauge,
    pub(super) rejected_records: Counter,
    pub(super) misbehaving_peers: Counter,
    pub(super) records_published: Counter,
}

impl NodeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("kwaainet");
        r.register(
            "connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        r.register(
            "routing_table_peers",
            "Peers in the Kademlia routing table",
            m.routing_table_peers.clone(),
        );
        r.register(
            "dht_records",
            "DHT records in the local store",
            m.dht_records.clone(),
        );
        r.register(
            "rejected_records",
            "DHT records refused (bad signature, size, key, version)",
            m.rejected_records.clone(),
        );
        r.register(
            "misbehaving_peers",
            "Peers disconnected for protocol violations",
            m.misbehaving_peers.clone(),
        );
        r.register(
            "records_published",
            "Successful publications of our node record",
            m.records_published.clone(),
        );
        m
    }
}
