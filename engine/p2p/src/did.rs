//! `did:key` identities (W3C CCG did:key, Ed25519): the same key as a libp2p peer id, written
//! the way decentralised-identity software reads it.
//!
//! `did:key:z…` is multibase base58btc (`z`) of the multicodec `ed25519-pub` (0xed, varint
//! `0xed 0x01`) followed by the 32-byte public key. A node's and a page's Ed25519 peer ids
//! embed the same key (an identity multihash), so the two convert both ways without a lookup.

use libp2p::PeerId;
use libp2p::identity::{PublicKey, ed25519};

/// The multicodec prefix of an Ed25519 public key (`ed25519-pub`, 0xed as a varint).
const ED25519_PUB: [u8; 2] = [0xed, 0x01];
/// The DID method prefix, with multibase base58btc's `z`.
const PREFIX: &str = "did:key:z";

/// Why a string or a peer id is not a usable `did:key`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DidError {
    /// Not `did:key:z…` (only base58btc, the spec's encoding for did:key, is accepted).
    #[error("not a did:key in base58btc (`did:key:z…`)")]
    NotDidKey,
    /// Not base58.
    #[error("the key is not base58btc")]
    Base58,
    /// A key type other than Ed25519.
    #[error("not an Ed25519 key (multicodec 0xed01)")]
    NotEd25519,
    /// Not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    BadKey,
    /// A peer id that does not embed its key (only Ed25519 ids do).
    #[error("this peer id does not embed an Ed25519 key")]
    NoEmbeddedKey,
}

/// The `did:key` of an Ed25519 public key.
pub fn from_ed25519(key: &ed25519::PublicKey) -> String {
    let mut bytes = ED25519_PUB.to_vec();
    bytes.extend_from_slice(&key.to_bytes());
    format!("{PREFIX}{}", bs58::encode(bytes).into_string())
}

/// The Ed25519 public key a `did:key` names.
pub fn to_ed25519(did: &str) -> Result<ed25519::PublicKey, DidError> {
    let encoded = did.strip_prefix(PREFIX).ok_or(DidError::NotDidKey)?;
    if encoded.len() > 64 {
        return Err(DidError::NotEd25519);
    }
    let bytes = bs58::decode(encoded)
        .into_vec()
        .map_err(|_| DidError::Base58)?;
    let key = bytes
        .strip_prefix(&ED25519_PUB)
        .filter(|k| k.len() == 32)
        .ok_or(DidError::NotEd25519)?;
    ed25519::PublicKey::try_from_bytes(key).map_err(|_| DidError::BadKey)
}

/// The Ed25519 key an Ed25519 peer id embeds (an identity multihash of the key).
pub fn ed25519_of_peer(peer: &PeerId) -> Result<ed25519::PublicKey, DidError> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return Err(DidError::NoEmbeddedKey); // a SHA-256 id: the key is not in it
    }
    let key = PublicKey::try_decode_protobuf(mh.digest()).map_err(|_| DidError::NoEmbeddedKey)?;
    key.try_into_ed25519().map_err(|_| DidError::NotEd25519)
}

/// The `did:key` of a peer: its id embeds its Ed25519 key.
pub fn from_peer_id(peer: &PeerId) -> Result<String, DidError> {
    Ok(from_ed25519(&ed25519_of_peer(peer)?))
}

/// The peer id of the key a `did:key` names.
pub fn to_peer_id(did: &str) -> Result<PeerId, DidError> {
    Ok(PublicKey::from(to_ed25519(did)?).to_peer_id())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key_from_base58(s: &str) -> ed25519::PublicKey {
        ed25519::PublicKey::try_from_bytes(&bs58::decode(s).into_vec().unwrap()).unwrap()
    }

    /// Published vectors: the W3C CCG did:key test vector for the all-zero seed, and two
    /// keys given with their publicKeyBase58 in other implementations' test data.
    #[test]
    fn published_vectors() {
        let zero = ed25519::SecretKey::try_from_bytes([0u8; 32]).unwrap();
        let zero = ed25519::Keypair::from(zero);
        assert_eq!(
            from_ed25519(&zero.public()),
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
        for (base58, did) in [
            (
                "8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K",
                "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
            ),
            (
                "HrBXe7XnjMbscM1roSDTSMCcLNraetDQM9wSVjnzDxn3",
                "did:key:z6MkwJSaEMnE4u6LiqrZV1BJHSkc9x8S4mTm3ArNL1m19BZR",
            ),
        ] {
            let key = key_from_base58(base58);
            assert_eq!(from_ed25519(&key), did);
            assert_eq!(to_ed25519(did).unwrap(), key);
        }
    }

    #[test]
    fn peer_ids_and_did_keys_convert_both_ways() {
        for _ in 0..8 {
            let kp = libp2p::identity::Keypair::generate_ed25519();
            let peer = kp.public().to_peer_id();
            let did = from_peer_id(&peer).unwrap();
            assert!(did.starts_with("did:key:z6Mk"), "{did}");
            assert_eq!(to_peer_id(&did).unwrap(), peer);
        }
        // A SHA-256 peer id (RSA, secp256k1 and so on) does not embed its key.
        assert_eq!(
            from_peer_id(&PeerId::random()),
            Err(DidError::NoEmbeddedKey)
        );
    }

    #[test]
    fn malformed_did_keys_are_errors() {
        let good = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        assert_eq!(to_ed25519("did:web:example.org"), Err(DidError::NotDidKey));
        assert_eq!(
            to_ed25519(&good.replace(":z", ":u")),
            Err(DidError::NotDidKey)
        );
        assert_eq!(to_ed25519("did:key:z0OIl"), Err(DidError::Base58));
        // Too short for a key, and a secp256k1 (0xe7) did:key from the spec's examples.
        assert_eq!(to_ed25519("did:key:zTjsVPtY"), Err(DidError::NotEd25519));
        assert_eq!(
            to_ed25519("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"),
            Err(DidError::NotEd25519)
        );
        assert_eq!(
            to_ed25519(&format!("{good}{}", "1".repeat(80))),
            Err(DidError::NotEd25519)
        );
    }
}
