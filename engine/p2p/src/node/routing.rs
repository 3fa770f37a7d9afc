//! Which identified peers enter our Kademlia routing table.
//!
//! Only DHT servers of *our* DHT (they list [`KAD_PROTOCOL`]), at addresses others can dial,
//! and only into a bucket with room, or as new addresses of a peer the table already holds.
//! A full bucket keeps its (older, proven) peers: Kademlia would dial the bucket's oldest
//! disconnected peer to test it, and that peer's identify of us would do the same in
//! *its* table, a chain of dials that grew with the swarm (engine/p2p/README.md, "Scale
//! simulation"). Newcomers still enter full buckets through our own queries' dials, which
//! Kademlia handles itself.

use libp2p::kad::{self, store::MemoryStore};
use libp2p::{PeerId, identify};

use crate::config::KAD_PROTOCOL;
use crate::record::{MAX_ADDRESSES, is_dialable};

/// Applies the policy to what `peer` told us in identify; `allow_local` admits loopback
/// and private addresses (local networks, tests).
pub(super) fn on_identify(
    kad: &mut kad::Behaviour<MemoryStore>,
    peer: PeerId,
    info: identify::Info,
    allow_local: bool,
) {
    let serves_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
    if serves_kad && room_for(kad, peer) {
        for addr in info.listen_addrs.into_iter().take(MAX_ADDRESSES) {
            if is_dialable(&addr, allow_local) {
                kad.add_address(&peer, addr);
            }
        }
    }
}

/// Whether `peer` is in our routing table or its bucket has room.
fn room_for(kad: &mut kad::Behaviour<MemoryStore>, peer: PeerId) -> bool {
    kad.kbucket(peer).is_none_or(|b| {
        b.num_entries() < kad::K_VALUE.get() || b.iter().any(|e| *e.node.key.preimage() == peer)
    })
}
