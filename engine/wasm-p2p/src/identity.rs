//! A page identity that outlives the session: the page's Ed25519 key kept in the origin's
//! IndexedDB (database `kwaainet-identity`, store `keys`), so its did:key, the data it owns
//! on nodes, its consent records and its audit entries stay its own from one visit to the
//! next. Opt-in (`KwaaiNetwork({ identity: 'persistent' })`): a stable identifier is a
//! tracking vector, and a session key is the default.
//!
//! JavaScript only ever holds an opaque [`PageIdentity`]; the key's bytes stay in the module
//! and in the origin's storage (where other scripts of the origin can reach them, as they
//! can any of the origin's data). [`PageIdentity::forget`] deletes it: what was sealed
//! under it can then not be opened again, and the next visit is a new identity.

use js_sys::Uint8Array;
use kwaainet_p2p::libp2p::identity::Keypair;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{IdbDatabase, IdbTransactionMode};

use crate::P2pCode;
use crate::bindings::err;
use crate::idb::{done, factory};

const DB: &str = "kwaainet-identity";
const KEYS: &str = "keys";
const PAGE: &str = "page";

/// The page's key, loaded or created.
#[wasm_bindgen]
#[derive(Debug)]
pub struct PageIdentity {
    key: Keypair,
    created: bool,
}

fn internal(e: impl std::fmt::Display) -> JsValue {
    err(P2pCode::Internal, e)
}

async fn open() -> Result<IdbDatabase, JsValue> {
    let req = factory().map_err(internal)?.open_with_u32(DB, 1)?;
    let upgrade = {
        let r = req.clone();
        Closure::once_into_js(move |_: web_sys::Event| {
            if let Ok(db) = r.result().and_then(|d| d.dyn_into::<IdbDatabase>())
                && !db.object_store_names().contains(KEYS)
            {
                let _ = db.create_object_store(KEYS);
            }
        })
    };
    req.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
    done(&req, "open")
        .await
        .map_err(internal)?
        .dyn_into::<IdbDatabase>()
        .map_err(|_| internal("IndexedDB open gave no database"))
}

/// The value kept under `key` in the identity database (the page key, vault keyrings).
pub(crate) async fn kv_get(key: &str) -> Result<Option<Vec<u8>>, JsValue> {
    let db = open().await?;
    let store = db.transaction_with_str(KEYS)?.object_store(KEYS)?;
    let found = done(&store.get(&key.into())?, "get")
        .await
        .map_err(internal);
    db.close();
    Ok(found?.dyn_into::<Uint8Array>().ok().map(|b| b.to_vec()))
}

/// Keeps `value` under `key` in the identity database.
pub(crate) async fn kv_put(key: &str, value: &[u8]) -> Result<(), JsValue> {
    let db = open().await?;
    let store = db
        .transaction_with_str_and_mode(KEYS, IdbTransactionMode::Readwrite)?
        .object_store(KEYS)?;
    let put = done(
        &store.put_with_key(&Uint8Array::from(value), &key.into())?,
        "put",
    )
    .await;
    db.close();
    put.map(|_| ()).map_err(internal)
}

#[wasm_bindgen]
impl PageIdentity {
    /// The page's key from this origin's IndexedDB, created (and stored) on first use.
    pub async fn load() -> Result<PageIdentity, JsValue> {
        let stored = kv_get(PAGE).await?;
        let out = match stored.map(|b| Keypair::from_protobuf_encoding(&b)) {
            Some(Ok(key)) if key.key_type() == kwaainet_p2p::libp2p::identity::KeyType::Ed25519 => {
                PageIdentity {
                    key,
                    created: false,
                }
            }
            Some(_) => {
                return Err(err(
                    P2pCode::Record,
                    "the stored page key is damaged: PageIdentity.forget() starts a new identity",
                ));
            }
            None => {
                let key = Keypair::generate_ed25519();
                let bytes = key.to_protobuf_encoding().map_err(internal)?;
                kv_put(PAGE, &bytes).await?;
                PageIdentity { key, created: true }
            }
        };
        Ok(out)
    }

    /// Deletes the stored key: the next `load` creates a new identity.
    pub async fn forget() -> Result<bool, JsValue> {
        let db = open().await?;
        let store = db
            .transaction_with_str_and_mode(KEYS, IdbTransactionMode::Readwrite)?
            .object_store(KEYS)?;
        let had = !done(&store.get(&PAGE.into())?, "get")
            .await
            .map_err(internal)?
            .is_undefined();
        let store = db
            .transaction_with_str_and_mode(KEYS, IdbTransactionMode::Readwrite)?
            .object_store(KEYS)?;
        done(&store.delete(&PAGE.into())?, "delete")
            .await
            .map_err(internal)?;
        db.close();
        Ok(had)
    }

    /// Its did:key.
    pub fn did(&self) -> Result<String, JsValue> {
        kwaainet_p2p::did::from_peer_id(&self.key.public().to_peer_id()).map_err(internal)
    }

    /// Whether `load` created it (a first visit, or after `forget`).
    #[wasm_bindgen(getter)]
    pub fn created(&self) -> bool {
        self.created
    }
}

impl PageIdentity {
    /// The key, for the node that starts with it.
    pub(crate) fn keypair(&self) -> Keypair {
        self.key.clone()
    }
}
