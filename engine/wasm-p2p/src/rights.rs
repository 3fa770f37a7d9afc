//! Data rights from the page: the did:key of a node, and offline checks of what a node
//! answers to a signed export or erasure request (`kwaainet-compliance`, the same code
//! `kwaainet gdpr verify` runs). The SDK's `KwaaiNetwork.exportData` / `eraseData` sign the
//! request (`WasmP2pNode.signRequest`), send it, and call these. Failures are `record`
//! errors.

use kwaainet_compliance::export::{self, Bundle, ErasureReceipt};
use wasm_bindgen::prelude::*;

use crate::P2pCode;
use crate::bindings::err;

/// Largest bundle or receipt text checked.
const MAX_TEXT: usize = 64 << 20;

fn record(e: impl std::fmt::Display) -> JsValue {
    err(P2pCode::Record, e)
}

fn to_js(v: &impl serde::Serialize) -> Result<JsValue, JsValue> {
    let json = serde_json::to_string(v).map_err(|e| err(P2pCode::Internal, e))?;
    js_sys::JSON::parse(&json)
}

/// The did:key of the node with this peer id (an Ed25519 peer id).
#[wasm_bindgen(js_name = didOfPeer)]
pub fn did_of_peer(#[wasm_bindgen(js_name = peerId)] peer_id: &str) -> Result<String, JsValue> {
    let peer = peer_id
        .parse()
        .map_err(|_| err(P2pCode::InvalidArgument, "not a peer id"))?;
    kwaainet_p2p::did::from_peer_id(&peer).map_err(|e| err(P2pCode::InvalidArgument, e))
}

/// Checks an export bundle (its JSON text) offline: the node's signature on the manifest,
/// every blob against its CID, every plaintext against its digest, every consent record's
/// signature, every audit entry's inclusion proof against the node's signed checkpoint and
/// its commitment to the subject. Returns `{ manifest, consents, entries, log_size }`.
#[wasm_bindgen(js_name = verifyExport)]
pub fn verify_export(bundle: &str) -> Result<JsValue, JsValue> {
    if bundle.len() > MAX_TEXT {
        return Err(err(P2pCode::InvalidArgument, "the bundle is too large"));
    }
    let b: Bundle = serde_json::from_str(bundle).map_err(record)?;
    to_js(&export::verify(&b).map_err(record)?)
}

/// Checks an erasure receipt (its JSON text): the node's signature, and each peer's own
/// signed receipt. Returns the erasure it states.
#[wasm_bindgen(js_name = verifyErasure)]
pub fn verify_erasure(receipt: &str) -> Result<JsValue, JsValue> {
    if receipt.len() > MAX_TEXT {
        return Err(err(P2pCode::InvalidArgument, "the receipt is too large"));
    }
    let r: ErasureReceipt = serde_json::from_str(receipt).map_err(record)?;
    let e = r.verify().map_err(record)?;
    for p in &e.receipts {
        export::verify_peer_receipt(p).map_err(record)?;
    }
    to_js(&e)
}
