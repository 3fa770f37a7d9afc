//! A tamper-evident audit log of data operations (stores, reads, exports, deletions,
//! consent changes, policy decisions), the shape Certificate Transparency gave such logs:
//!
//! - [`Entry`]: one operation. It names people only through salted [`Commitment`]s and
//!   carries no free text (every string is a short [`Label`]), so the log can be shown,
//!   exported and verified without revealing whom it is about; forgetting a subject's salt
//!   ([`Salts::forget`]) unlinks their entries for good while the log still verifies.
//! - [`Tree`]: the RFC 6962 Merkle tree over the entries (`ct-merkle`): leaf *i* is the
//!   SHA-256 of entry *i*'s exact stored bytes.
//! - [`Checkpoint`]: the tree's size and root in the C2SP checkpoint format, signed as a C2SP
//!   signed note with the node's Ed25519 key (the key behind its peer id).
//! - [`proof`]: inclusion and consistency proofs and their verification; plain functions on
//!   bytes, so a page verifies them with the same code (this crate builds for wasm32).
//! - [`report`]: counts over a time range (what, for which purpose, allowed or refused,
//!   why, where, how many subjects), for auditors.
//! - `store` (native): the log on disk, appended with a signed checkpoint after every entry,
//!   and [`store::verify`], which finds any edited, removed, reordered or forged entry.

mod checkpoint;
mod commit;
mod entry;
mod error;
pub mod proof;
pub mod report;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod store;
mod tree;

pub use checkpoint::{Checkpoint, Signer, key_id};
pub use commit::{Commitment, Salt, Salts};
pub use entry::{Decision, Entry, Label, Op};
pub use error::{Error, Result};
pub use tree::{Hash, Tree};

/// The log name (checkpoint origin and signing key name) of the node with this peer id.
pub fn node_origin(peer_id: &str) -> String {
    format!("kwaainet/audit/{peer_id}")
}
