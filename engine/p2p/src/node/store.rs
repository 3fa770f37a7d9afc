//! What others may store with us. Kademlia hands every inbound `PUT_VALUE` and
//! `ADD_PROVIDER` to the node (`StoreInserts::FilterBoth`); only valid signed node records
//! under their own key, never older than the copy we hold, and provider records of
//! `/kwaainet/model/<id>` and `/kwaainet/blob/<cid>` keys go in.

use libp2p::kad::{self, store::MemoryStore, store::RecordStore};
use prometheus_client::metrics::counter::Counter;

use crate::record::{self, decode_node_record};

/// Longest provider key accepted, in bytes.
const MAX_PROVIDER_KEY_BYTES: usize = 256;

/// Stores `request`'s record if it passes; `rejected` counts those that do not.
pub(super) fn on_inbound(
    kad: &mut kad::Behaviour<MemoryStore>,
    request: kad::InboundRequest,
    rejected: &Counter,
) {
    match request {
        kad::InboundRequest::PutRecord {
            source,
            record: Some(record),
            ..
        } => {
            if let Err(e) = record::validate_stored(&record.key, &record.value) {
                tracing::debug!(%source, error = %e, "refused a DHT record");
                rejected.inc();
                return;
            }
            let store = kad.store_mut();
            // Never roll a record back to an older one (replayed or stale replica).
            let newer = match (store.get(&record.key), decode_node_record(&record.value)) {
                (Some(old), Ok(new)) => decode_node_record(&old.value)
                    .map(|o| new.issued_at >= o.issued_at)
                    .unwrap_or(true),
                _ => true,
            };
            if newer && let Err(e) = store.put(record) {
                tracing::debug!(error = %e, "store full");
            }
        }
        kad::InboundRequest::AddProvider {
            record: Some(provider),
        } => {
            let ok = std::str::from_utf8(provider.key.as_ref()).is_ok_and(|k| {
                (k.starts_with("/kwaainet/model/") || k.starts_with(record::BLOB_KEY_PREFIX))
                    && k.len() <= MAX_PROVIDER_KEY_BYTES
            });
            if ok {
                if let Err(e) = kad.store_mut().add_provider(provider) {
                    tracing::debug!(error = %e, "provider store full");
                }
            } else {
                rejected.inc();
            }
        }
        _ => {}
    }
}
