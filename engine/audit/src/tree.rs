//! The RFC 6962 Merkle tree over the log's entries (`ct-merkle`'s memory-backed tree).
//!
//! Leaf *i* is the SHA-256 of entry *i*'s stored bytes (so the tree holds 32 bytes per
//! entry, not the entries); its leaf hash is RFC 6962's `SHA-256(0x00 ‖ leaf)`.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The Merkle tree of a log.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    inner: MemoryBackedTree<Sha256, Hash>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The leaf of an entry's stored bytes.
    pub fn leaf(entry_bytes: &[u8]) -> Hash {
        Sha256::digest(entry_bytes).into()
    }

    /// Appends a leaf.
    pub fn push(&mut self, leaf: Hash) {
        self.inner.push(leaf);
    }

    /// How many leaves.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether it has no leaf.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The leaf at `index`.
    pub fn get(&self, index: u64) -> Option<&Hash> {
        self.inner.get(usize::try_from(index).ok()?)
    }

    /// The Merkle tree hash (RFC 6962 §2.1; SHA-256 of nothing for an empty tree).
    pub fn root(&self) -> Hash {
        (*self.inner.root().as_bytes()).into()
    }

    /// The audit path of leaf `index` in the tree as it is now (RFC 6962 §2.1.1): hashes
    /// concatenated, leaf side first.
    pub fn prove_inclusion(&self, index: u64) -> Result<Vec<u8>> {
        if index >= self.len() {
            return Err(Error::Proof(format!(
                "no entry {index}: the log has {}",
                self.len()
            )));
        }
        let i = usize::try_from(index).map_err(|_| Error::Proof("index too large".into()))?;
        Ok(self.inner.prove_inclusion(i).as_bytes().to_vec())
    }

    /// The proof that the tree of the first `old_size` leaves is a prefix of this one
    /// (RFC 6962 §2.1.2). Empty when the sizes are equal.
    pub fn prove_consistency(&self, old_size: u64) -> Result<Vec<u8>> {
        let size = self.len();
        if old_size == 0 || old_size > size {
            return Err(Error::Proof(format!(
                "no consistency proof from size {old_size} to {size}"
            )));
        }
        if old_size == size {
            return Ok(Vec::new());
        }
        let additions =
            usize::try_from(size - old_size).map_err(|_| Error::Proof("too large".into()))?;
        Ok(self.inner.prove_consistency(additions).as_bytes().to_vec())
    }
}
