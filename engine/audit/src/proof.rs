//! Proof verification on plain bytes: what a client (a page, `kwaainet audit verify`, the
//! holder of an export) runs against a signed checkpoint's size and root.

use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::tree::Hash;

/// The most hashes a proof of a tree of up to 2^63 leaves can hold.
const MAX_PROOF_HASHES: usize = 128;

fn check_len(proof: &[u8]) -> Result<()> {
    if !proof.len().is_multiple_of(32) || proof.len() / 32 > MAX_PROOF_HASHES {
        return Err(Error::Proof(format!(
            "{} bytes is not a list of at most {MAX_PROOF_HASHES} SHA-256 hashes",
            proof.len()
        )));
    }
    Ok(())
}

fn root(hash: &Hash, size: u64) -> RootHash<Sha256> {
    RootHash::new((*hash).into(), size)
}

/// Checks that `leaf` is entry `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    root_hash: &Hash,
    proof: &[u8],
) -> Result<()> {
    check_len(proof)?;
    let proof = InclusionProof::<Sha256>::try_from_bytes(proof.to_vec())
        .map_err(|e| Error::Proof(e.to_string()))?;
    root(root_hash, size)
        .verify_inclusion(leaf, index, &proof)
        .map_err(|e| Error::Proof(format!("entry {index} of {size}: {e}")))
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (equal sizes: equal roots and an empty proof).
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[u8],
) -> Result<()> {
    check_len(proof)?;
    if old_size == new_size {
        return if old_root == new_root && proof.is_empty() {
            Ok(())
        } else {
            Err(Error::Proof(format!(
                "two different trees of size {old_size}: the log forked"
            )))
        };
    }
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.to_vec())
        .map_err(|e| Error::Proof(e.to_string()))?;
    root(new_root, new_size)
        .verify_consistency(&root(old_root, old_size), &proof)
        .map_err(|e| Error::Proof(format!("size {old_size} to {new_size}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tree::Tree;

    fn tree(n: u64) -> Tree {
        let mut t = Tree::new();
        for i in 0..n {
            t.push(Tree::leaf(format!("entry {i}").as_bytes()));
        }
        t
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        for n in 1..=17u64 {
            let t = tree(n);
            let r = t.root();
            for i in 0..n {
                let p = t.prove_inclusion(i).unwrap();
                let leaf = *t.get(i).unwrap();
                verify_inclusion(&leaf, i, n, &r, &p).unwrap();
                let other = Tree::leaf(b"forged");
                assert!(verify_inclusion(&other, i, n, &r, &p).is_err());
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0] ^= 1;
                    assert!(verify_inclusion(&leaf, i, n, &r, &bad).is_err());
                }
            }
            for old in 1..=n {
                let p = t.prove_consistency(old).unwrap();
                let old_root = tree(old).root();
                verify_consistency(old, &old_root, n, &r, &p).unwrap();
                let mut forked = old_root;
                forked[5] ^= 0x40;
                assert!(verify_consistency(old, &forked, n, &r, &p).is_err());
            }
        }
        assert!(tree(3).prove_inclusion(3).is_err());
        assert!(tree(3).prove_consistency(0).is_err());
        assert!(tree(3).prove_consistency(4).is_err());
        assert!(verify_inclusion(&[0; 32], 0, 1, &[0; 32], &[0; 31]).is_err());
        assert!(verify_inclusion(&[0; 32], 0, 1, &[0; 32], &[0; 32 * 200]).is_err());
    }

    /// RFC 6962's tree hash, written out from §2.1 for a few sizes, against the tree's root.
    #[test]
    fn roots_are_rfc_6962_tree_hashes() {
        use sha2::Digest;
        fn mth(leaves: &[Hash]) -> Hash {
            match leaves.len() {
                0 => Sha256::digest(b"").into(),
                1 => Sha256::new()
                    .chain_update([0u8])
                    .chain_update(leaves[0])
                    .finalize()
                    .into(),
                n => {
                    let k = n.next_power_of_two() / 2;
                    let (l, r) = (mth(&leaves[..k]), mth(&leaves[k..]));
                    Sha256::new()
                        .chain_update([1u8])
                        .chain_update(l)
                        .chain_update(r)
                        .finalize()
                        .into()
                }
            }
        }
        for n in 0..=9u64 {
            let t = tree(n);
            let leaves: Vec<Hash> = (0..n).map(|i| *t.get(i).unwrap()).collect();
            assert_eq!(t.root(), mth(&leaves), "size {n}");
        }
    }
}
