//! Signed requests: how a person asks a node to act on their data (export it, erase it,
//! store or read through the node's vault) without an account or a password: the request
//! is signed with the key their `did:key` names (a page's key, or the node operator's own
//! identity key), bound to one node (its did:key as the audience), one action and one
//! moment, and carries a random nonce the node remembers so it cannot be replayed.
//!
//! The signed bytes are the request's JSON text itself (`kwaainet/request/v1\n` first),
//! kept as text on the wire, so nothing has to be re-serialised identically to verify.

use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::did;

/// Request format version.
pub const REQUEST_VERSION: u8 = 1;
/// How far a request's time may be from the node's clock.
pub const MAX_SKEW_MS: u64 = 2 * 60 * 1000;
/// Largest request text.
pub const MAX_REQUEST: usize = 6 << 20;

/// What is asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRequest {
    /// [`REQUEST_VERSION`].
    pub v: u8,
    /// Who asks (and whose data it is): the did:key of the signing key.
    pub subject: String,
    /// The node asked (its did:key): a request is good for that node only.
    pub audience: String,
    /// What to do (`export`, `erase`, `put`, `get`, `list`, `delete`).
    pub action: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// 16 random bytes, hex: the node refuses a nonce it has seen.
    pub nonce: String,
    /// The action's arguments.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// A request as sent: its JSON text and the subject's signature over it (base58btc, as
/// consent records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    /// The [`DataRequest`] as JSON text.
    pub request: String,
    /// Base58btc of the Ed25519 signature over `kwaainet/request/v1\n` ‖ `request`.
    pub signature: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a request this version understands, or too large.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Addressed to another node.
    #[error("the request is addressed to {0}, not this node")]
    Audience(String),
    /// Too far from now.
    #[error("the request's time is {0} ms away from now (at most {MAX_SKEW_MS})")]
    Stale(u64),
    /// The signature does not verify with the subject's key.
    #[error("the request is not signed by its subject")]
    Signature,
}

fn signing_bytes(text: &str) -> Vec<u8> {
    [b"kwaainet/request/v1\n".as_slice(), text.as_bytes()].concat()
}

/// Signs a request of `action` with `params` for the node `audience`, as `key`'s did:key.
pub fn sign(
    key: &Keypair,
    audience: &str,
    action: &str,
    params: serde_json::Value,
    now_ms: u64,
    nonce: [u8; 16],
) -> Result<SignedRequest, RequestError> {
    let public = key
        .public()
        .try_into_ed25519()
        .map_err(|_| RequestError::Malformed("requests are signed with Ed25519 keys".into()))?;
    let request = DataRequest {
        v: REQUEST_VERSION,
        subject: did::from_ed25519(&public),
        audience: audience.to_owned(),
        action: action.to_owned(),
        at_ms: now_ms,
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        params,
    };
    let text =
        serde_json::to_string(&request).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let sig = key
        .sign(&signing_bytes(&text))
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    Ok(SignedRequest {
        request: text,
        signature: bs58::encode(sig).into_string(),
    })
}

/// Checks a request for the node `audience` at `now_ms`: size, shape, audience, time and
/// the subject's signature. The caller checks the nonce against the ones it has seen.
pub fn verify(
    signed: &SignedRequest,
    audience: &str,
    now_ms: u64,
) -> Result<DataRequest, RequestError> {
    let bad = |m: String| RequestError::Malformed(m);
    if signed.request.len() > MAX_REQUEST || signed.signature.len() > 100 {
        return Err(bad("too large".into()));
    }
    let r: DataRequest = serde_json::from_str(&signed.request).map_err(|e| bad(e.to_string()))?;
    if r.v != REQUEST_VERSION {
        return Err(bad(format!("version {}", r.v)));
    }
    let action_ok = !r.action.is_empty()
        && r.action.len() <= 32
        && r.action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_');
    if !action_ok {
        return Err(bad(format!("action {:?}", r.action)));
    }
    if r.nonce.len() != 32 || !r.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("nonce: 32 hex digits".into()));
    }
    if r.audience != audience {
        return Err(RequestError::Audience(r.audience));
    }
    let skew = r.at_ms.abs_diff(now_ms);
    if skew > MAX_SKEW_MS {
        return Err(RequestError::Stale(skew));
    }
    let key = did::to_ed25519(&r.subject).map_err(|e| bad(e.to_string()))?;
    let sig = bs58::decode(&signed.signature)
        .into_vec()
        .map_err(|_| RequestError::Signature)?;
    if !key.verify(&signing_bytes(&signed.request), &sig) {
        return Err(RequestError::Signature);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn requests_verify_for_their_node_only_and_forgeries_do_not() {
        let key = Keypair::generate_ed25519();
        let node = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let s = sign(&key, node, "export", serde_json::json!({}), NOW, [7; 16]).unwrap();
        let r = verify(&s, node, NOW + 1000).unwrap();
        assert_eq!(r.action, "export");
        assert_eq!(
            r.subject,
            did::from_ed25519(&key.public().try_into_ed25519().unwrap())
        );
        assert!(matches!(
            verify(&s, "did:key:z6Mkother", NOW),
            Err(RequestError::Audience(_))
        ));
        assert!(matches!(
            verify(&s, node, NOW + MAX_SKEW_MS + 1),
            Err(RequestError::Stale(_))
        ));
        // The text changed (another action), or signed by another key in this subject's name.
        let mut changed = s.clone();
        changed.request = changed.request.replace("export", "erase");
        assert_eq!(verify(&changed, node, NOW), Err(RequestError::Signature));
        let other = sign(
            &Keypair::generate_ed25519(),
            node,
            "erase",
            serde_json::json!({}),
            NOW,
            [8; 16],
        )
        .unwrap();
        let forged = SignedRequest {
            request: other.request.replace(
                &did::from_ed25519(
                    &Keypair::generate_ed25519()
                        .public()
                        .try_into_ed25519()
                        .unwrap(),
                ),
                "x",
            ),
            signature: s.signature.clone(),
        };
        assert!(verify(&forged, node, NOW).is_err());
        let garbage = SignedRequest {
            request: "{".into(),
            signature: "1".into(),
        };
        assert!(matches!(
            verify(&garbage, node, NOW),
            Err(RequestError::Malformed(_))
        ));
    }
}
