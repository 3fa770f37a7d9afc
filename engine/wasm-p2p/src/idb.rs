//! The IndexedDB backend: a page's blobs in its origin's IndexedDB, behind the same
//! [`StorageProvider`] trait and conformance suite as the native backends.
//!
//! One database per store name, one object store (`blobs`) keyed by CID string, each
//! record `{ data: Uint8Array, acl: string }`. An index of sizes and access lists is read
//! when the store opens (so quotas and listing cost no round trip); every write is its own
//! transaction. Two tabs writing the same store at once can see stale indexes: the page
//! host (one elected tab) owns a store.

use std::cell::RefCell;
use std::collections::HashMap;

use js_sys::{Object, Reflect, Uint8Array};
use kwaainet_storage::{
    Access, Acl, Cid, Deleted, Error, Limits, Result, StorageProvider, admit, check_store, owned_by,
};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbFactory, IdbObjectStore, IdbRequest, IdbTransactionMode};

const BLOBS: &str = "blobs";

/// Blobs in IndexedDB.
pub struct IdbStore {
    db: IdbDatabase,
    limits: Limits,
    index: RefCell<HashMap<Cid, (u64, Acl)>>,
}

impl std::fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdbStore")
            .field("name", &self.db.name())
            .finish_non_exhaustive()
    }
}

fn io(what: &str, e: JsValue) -> Error {
    // A full origin quota surfaces as a QuotaExceededError DOMException.
    let name = Reflect::get(&e, &"name".into())
        .ok()
        .and_then(|n| n.as_string())
        .unwrap_or_default();
    let message = Reflect::get(&e, &"message".into())
        .ok()
        .and_then(|n| n.as_string())
        .unwrap_or_default();
    if name == "QuotaExceededError" {
        Error::Quota(format!("the browser's storage quota: {message}"))
    } else {
        Error::Io(std::io::Error::other(format!(
            "IndexedDB {what}: {name} {message}"
        )))
    }
}

/// Waits for a request: its result, or its error. One callback serves both events, so it
/// is freed once it ran.
pub(crate) async fn done(req: &IdbRequest, what: &str) -> Result<JsValue> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        let cb = Closure::once_into_js(move |ev: web_sys::Event| {
            if ev.type_() == "success" {
                let _ = resolve.call1(&JsValue::NULL, &r.result().unwrap_or(JsValue::UNDEFINED));
            } else {
                let err = r
                    .error()
                    .ok()
                    .flatten()
                    .map_or(JsValue::UNDEFINED, JsValue::from);
                let _ = reject.call1(&JsValue::NULL, &err);
            }
        });
        req.set_onsuccess(Some(cb.unchecked_ref()));
        req.set_onerror(Some(cb.unchecked_ref()));
    });
    JsFuture::from(promise).await.map_err(|e| io(what, e))
}

pub(crate) fn factory() -> Result<IdbFactory> {
    let f =
        Reflect::get(&js_sys::global(), &"indexedDB".into()).map_err(|e| io("unavailable", e))?;
    f.dyn_into::<IdbFactory>()
        .map_err(|_| Error::Io(std::io::Error::other("no IndexedDB in this context")))
}

impl IdbStore {
    /// Opens (creating it if needed) the store `name`.
    pub async fn open(name: &str, limits: Limits) -> Result<Self> {
        let req = factory()?
            .open_with_u32(name, 1)
            .map_err(|e| io("open", e))?;
        let upgrade = {
            let r = req.clone();
            Closure::once_into_js(move |_: web_sys::Event| {
                if let Ok(db) = r.result().and_then(|d| d.dyn_into::<IdbDatabase>())
                    && !db.object_store_names().contains(BLOBS)
                {
                    let _ = db.create_object_store(BLOBS);
                }
            })
        };
        req.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
        let db: IdbDatabase = done(&req, "open")
            .await?
            .dyn_into()
            .map_err(|_| Error::Io(std::io::Error::other("IndexedDB open gave no database")))?;
        let store = Self {
            db,
            limits,
            index: RefCell::new(HashMap::new()),
        };
        store.load().await?;
        Ok(store)
    }

    fn objects(&self, mode: IdbTransactionMode) -> Result<IdbObjectStore> {
        self.db
            .transaction_with_str_and_mode(BLOBS, mode)
            .and_then(|t| t.object_store(BLOBS))
            .map_err(|e| io("transaction", e))
    }

    /// Reads every record's key and list (the index).
    async fn load(&self) -> Result<()> {
        let objects = self.objects(IdbTransactionMode::Readonly)?;
        let keys = objects.get_all_keys().map_err(|e| io("keys", e))?;
        let values = objects.get_all().map_err(|e| io("values", e))?;
        let keys: js_sys::Array = done(&keys, "keys").await?.unchecked_into();
        let values: js_sys::Array = done(&values, "values").await?.unchecked_into();
        let mut index = HashMap::new();
        for (k, v) in keys.iter().zip(values.iter()) {
            let cid = k.as_string().and_then(|s| Cid::parse(&s).ok());
            let acl = Reflect::get(&v, &"acl".into())
                .ok()
                .and_then(|a| a.as_string())
                .and_then(|a| serde_json::from_str::<Acl>(&a).ok());
            let size = Reflect::get(&v, &"data".into())
                .ok()
                .and_then(|d| d.dyn_into::<Uint8Array>().ok())
                .map(|d| u64::from(d.length()));
            if let (Some(cid), Some(acl), Some(size)) = (cid, acl, size) {
                index.insert(cid, (size, acl));
            }
        }
        *self.index.borrow_mut() = index;
        Ok(())
    }

    async fn put(&self, cid: &Cid, data: &[u8], acl: &Acl) -> Result<()> {
        let record = Object::new();
        let list = serde_json::to_string(acl).map_err(|e| Error::Invalid(e.to_string()))?;
        Reflect::set(&record, &"data".into(), &Uint8Array::from(data))
            .map_err(|e| io("record", e))?;
        Reflect::set(&record, &"acl".into(), &list.into()).map_err(|e| io("record", e))?;
        let req = self
            .objects(IdbTransactionMode::Readwrite)?
            .put_with_key(&record, &cid.to_string().into())
            .map_err(|e| io("put", e))?;
        done(&req, "put").await.map(|_| ())
    }

    /// Overwrites the bytes stored for `cid` (the self-test's tampering case: what another
    /// script on the origin, or a damaged profile, could do).
    pub async fn corrupt(&self, cid: &Cid, bytes: &[u8]) -> Result<()> {
        let acl = (self.index.borrow().get(cid).map(|(_, a)| a.clone()))
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        self.put(cid, bytes, &acl).await
    }

    /// Deletes the whole database `name`.
    pub async fn destroy(name: &str) -> Result<()> {
        let req = factory()?
            .delete_database(name)
            .map_err(|e| io("delete", e))?;
        done(&req, "delete").await.map(|_| ())
    }

    /// Closes the connection (a later `destroy` would wait for it otherwise).
    pub fn close(&self) {
        self.db.close();
    }
}

#[async_trait::async_trait(?Send)]
impl StorageProvider for IdbStore {
    fn name(&self) -> &'static str {
        "indexeddb"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid> {
        check_store(&data, acl, self.limits)?;
        let cid = Cid::of(&data);
        let size = data.len() as u64;
        let (existing, held) = {
            let index = self.index.borrow();
            (
                index.get(&cid).map(|(_, a)| a.owner.clone()),
                index.values().map(|(s, _)| s).sum(),
            )
        };
        admit(&cid, existing.as_deref(), acl, held, size, self.limits)?;
        self.put(&cid, &data, acl).await?;
        self.index.borrow_mut().insert(cid, (size, acl.clone()));
        Ok(cid)
    }

    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        let acl = (self.index.borrow().get(cid).map(|(_, a)| a.clone()))
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Read, cid)?;
        let req = self
            .objects(IdbTransactionMode::Readonly)?
            .get(&cid.to_string().into())
            .map_err(|e| io("get", e))?;
        let record = done(&req, "get").await?;
        if record.is_undefined() {
            return Err(Error::NotFound(cid.to_string()));
        }
        let bytes = Reflect::get(&record, &"data".into())
            .ok()
            .and_then(|d| d.dyn_into::<Uint8Array>().ok())
            .map(|d| d.to_vec())
            .ok_or_else(|| Error::Tampered(format!("{cid}: the record holds no bytes")))?;
        cid.verify(&bytes)?;
        Ok(bytes)
    }

    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        let acl = (self.index.borrow().get(cid).map(|(_, a)| a.clone()))
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Delete, cid)?;
        let req = self
            .objects(IdbTransactionMode::Readwrite)?
            .delete(&cid.to_string().into())
            .map_err(|e| io("delete", e))?;
        done(&req, "delete").await?;
        self.index.borrow_mut().remove(cid);
        Ok(Deleted::default())
    }

    async fn list(&self, owner: &str) -> Result<Vec<Cid>> {
        Ok(owned_by(
            self.index.borrow().iter().map(|(c, (_, a))| (c, a)),
            owner,
        ))
    }
}

/// Runs the storage conformance suite on a fresh IndexedDB store named `name` (deleted
/// before and after): the same cases every backend passes natively. Resolves when the
/// browser's IndexedDB behaves as the other backends do; rejects with the failed case.
#[wasm_bindgen(js_name = storageSelfTest)]
pub async fn storage_self_test(name: String) -> std::result::Result<(), JsValue> {
    use kwaainet_storage::conformance::{Party, run};
    let fail = |e: String| crate::bindings::err(crate::P2pCode::Internal, e);
    IdbStore::destroy(&name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let limits = Limits {
        max_blob: 64 << 10,
        max_total: 1 << 20,
    };
    let store = IdbStore::open(&name, limits)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let party = |did: &str| Party {
        did: did.to_owned(),
        store: &store,
    };
    let held = &store;
    let tamper = move |cid: Cid| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            let _ = held.corrupt(&cid, b"evil").await;
        })
    };
    let outcome = run(
        party("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"),
        party("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
        party("did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf"),
        Some(&tamper),
    )
    .await;
    // What survives a reopen is what the store says it holds.
    let reopened = match outcome {
        Ok(()) => {
            let again = IdbStore::open(&name, limits)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let left = again.index.borrow().len();
            again.close();
            if left == 0 {
                Ok(())
            } else {
                Err(format!(
                    "indexeddb: {left} blob(s) left after every one was deleted"
                ))
            }
        }
        Err(e) => Err(e),
    };
    store.close();
    IdbStore::destroy(&name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    reopened.map_err(fail)
}
