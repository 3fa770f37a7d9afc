//! A node's audit log checked in the page, with the node's own Rust code
//! (`kwaainet-audit`): its signed checkpoints (by the key behind its peer id), the root of
//! its entries, inclusion and consistency proofs. The SDK's `KwaaiNetwork.verifyAudit`
//! fetches and calls these. Failures are `record` errors.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kwaainet_audit::proof::{verify_consistency, verify_inclusion};
use kwaainet_audit::{Checkpoint, Hash, Tree};
use wasm_bindgen::prelude::*;

use crate::P2pCode;
use crate::bindings::err;

/// The most entries `auditRoot` takes in one call.
const MAX_ENTRIES: usize = 1 << 20;

fn record(e: impl std::fmt::Display) -> JsValue {
    err(P2pCode::Record, e)
}

fn hash(b64: &str) -> Result<Hash, JsValue> {
    B64.decode(b64)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| err(P2pCode::InvalidArgument, "not a base64 SHA-256 hash"))
}

fn proof(b64: &str) -> Result<Vec<u8>, JsValue> {
    B64.decode(b64)
        .map_err(|_| err(P2pCode::InvalidArgument, "the proof is not base64"))
}

fn size(n: f64, what: &str) -> Result<u64, JsValue> {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
        Ok(n as u64)
    } else {
        Err(err(
            P2pCode::InvalidArgument,
            format!("{what} must be a whole number"),
        ))
    }
}

/// The checkpoint in a signed note, once its signature by the node `peerId` verifies:
/// `{ origin, size, root }` (root in base64).
#[wasm_bindgen(js_name = auditOpenCheckpoint)]
pub fn audit_open_checkpoint(
    note: &str,
    #[wasm_bindgen(js_name = peerId)] peer_id: &str,
) -> Result<JsValue, JsValue> {
    let peer = peer_id
        .parse()
        .map_err(|_| err(P2pCode::InvalidArgument, "not a peer id"))?;
    let key = kwaainet_p2p::did::ed25519_of_peer(&peer).map_err(record)?;
    let origin = kwaainet_audit::node_origin(peer_id);
    let cp = Checkpoint::open(note, &origin, &key.to_bytes()).map_err(record)?;
    let out = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
    set("origin", cp.origin.into())?;
    set("size", (cp.size as f64).into())?;
    set("root", B64.encode(cp.root).into())?;
    Ok(out.into())
}

/// The RFC 6962 root (base64) of a log whose entries are these stored strings, in order.
#[wasm_bindgen(js_name = auditRoot)]
pub fn audit_root(entries: Vec<String>) -> Result<String, JsValue> {
    if entries.len() > MAX_ENTRIES {
        return Err(err(
            P2pCode::InvalidArgument,
            "too many entries for one call",
        ));
    }
    let mut tree = Tree::new();
    for e in &entries {
        tree.push(Tree::leaf(e.as_bytes()));
    }
    Ok(B64.encode(tree.root()))
}

/// Checks that `entry` (its stored string) is entry `index` of the log of `size` entries
/// with root `root`, by its audit path `proof` (base64).
#[wasm_bindgen(js_name = auditVerifyInclusion)]
pub fn audit_verify_inclusion(
    entry: &str,
    index: f64,
    size: f64,
    root: &str,
    proof_b64: &str,
) -> Result<(), JsValue> {
    verify_inclusion(
        &Tree::leaf(entry.as_bytes()),
        self::size(index, "index")?,
        self::size(size, "size")?,
        &hash(root)?,
        &proof(proof_b64)?,
    )
    .map_err(record)
}

/// Checks that the log of `oldSize` entries with root `oldRoot` is a prefix of the log of
/// `newSize` entries with root `newRoot`.
#[wasm_bindgen(js_name = auditVerifyConsistency)]
pub fn audit_verify_consistency(
    #[wasm_bindgen(js_name = oldSize)] old_size: f64,
    #[wasm_bindgen(js_name = oldRoot)] old_root: &str,
    #[wasm_bindgen(js_name = newSize)] new_size: f64,
    #[wasm_bindgen(js_name = newRoot)] new_root: &str,
    proof_b64: &str,
) -> Result<(), JsValue> {
    verify_consistency(
        size(old_size, "oldSize")?,
        &hash(old_root)?,
        size(new_size, "newSize")?,
        &hash(new_root)?,
        &proof(proof_b64)?,
    )
    .map_err(record)
}
