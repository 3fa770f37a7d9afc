//! The page's vault: kwaainet-storage's [`Vault`] over the origin's IndexedDB
//! ([`IdbStore`]), its key-encryption key derived from the page's own Ed25519 key (a
//! persistent identity keeps it across visits), so only this page's identity can open what
//! it seals. The wrapped data keys (the keyring) are kept beside the identity key in
//! `kwaainet-identity`; `forget(subject)` destroys one subject's key (crypto-shredding).
//!
//! `sealed(cid)` hands out the ciphertext (for a copy at a node, which never sees the
//! plaintext) and `open(subject, cid, sealed)` opens ciphertext fetched back.

use js_sys::Uint8Array;
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_storage::{Acl, Cid, Keyring, Limits, StorageProvider as _, UserKey, Vault};
use wasm_bindgen::prelude::*;

use crate::P2pCode;
use crate::bindings::err;
use crate::idb::IdbStore;

/// Bytes one page vault holds at most (the browser's own quota may be lower).
const MAX_TOTAL: u64 = 256 << 20;
/// Largest blob.
const MAX_BLOB: usize = 16 << 20;

/// A vault in this origin's IndexedDB.
#[wasm_bindgen]
#[derive(Debug)]
pub struct PageVault {
    vault: Vault<IdbStore>,
    /// The identity key (for accepting keys shared with it).
    key: Keypair,
    /// Where the keyring is kept.
    slot: String,
}

fn fail(e: kwaainet_storage::Error) -> JsValue {
    let code = match &e {
        kwaainet_storage::Error::BadCid(_)
        | kwaainet_storage::Error::Invalid(_)
        | kwaainet_storage::Error::TooLarge { .. } => P2pCode::InvalidArgument,
        kwaainet_storage::Error::Tampered(_)
        | kwaainet_storage::Error::NoKey(_)
        | kwaainet_storage::Error::Denied { .. } => P2pCode::Record,
        _ => P2pCode::Internal,
    };
    err(code, e)
}

fn cid_of(s: &str) -> Result<Cid, JsValue> {
    Cid::parse(s).map_err(fail)
}

impl PageVault {
    /// Opens the vault `name` of the identity `key`.
    pub(crate) async fn open_for(key: &Keypair, name: &str) -> Result<PageVault, JsValue> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                P2pCode::InvalidArgument,
                "vault name: 1 to 64 letters, digits, - or _",
            ));
        }
        let ed = key
            .clone()
            .try_into_ed25519()
            .map_err(|_| err(P2pCode::Internal, "the page key is not Ed25519"))?;
        let seed: [u8; 32] = ed
            .secret()
            .as_ref()
            .try_into()
            .map_err(|_| err(P2pCode::Internal, "an Ed25519 secret is 32 bytes"))?;
        let owner = kwaainet_p2p::did::from_peer_id(&key.public().to_peer_id())
            .map_err(|e| err(P2pCode::Internal, e))?;
        // One database per identity and name: another identity's vault is another store.
        let tag: String = owner.chars().skip(8).take(16).collect();
        let store = IdbStore::open(
            &format!("kwaainet-vault-{name}-{tag}"),
            Limits {
                max_blob: MAX_BLOB,
                max_total: MAX_TOTAL,
            },
        )
        .await
        .map_err(fail)?;
        let slot = format!("keyring:{name}:{owner}");
        let keyring = match crate::identity::kv_get(&slot).await? {
            Some(bytes) => Keyring::from_json(&String::from_utf8_lossy(&bytes)).map_err(fail)?,
            None => Keyring::default(),
        };
        Ok(PageVault {
            vault: Vault::with_keyring(store, UserKey::derive(&seed), keyring, owner),
            key: key.clone(),
            slot,
        })
    }

    async fn save_keyring(&self) -> Result<(), JsValue> {
        crate::identity::kv_put(&self.slot, self.vault.keyring().to_json().as_bytes()).await
    }
}

#[wasm_bindgen]
impl PageVault {
    /// Seals `data` under `subject`'s data key (made on first use) and keeps it: its CID
    /// (the ciphertext's).
    pub async fn put(&self, subject: String, data: Uint8Array) -> Result<String, JsValue> {
        let known = self.vault.keyring().subjects().contains(&subject);
        let cid = self
            .vault
            .put(&subject, &data.to_vec(), Acl::private(self.vault.owner()))
            .await
            .map_err(fail)?;
        if !known {
            self.save_keyring().await?;
        }
        Ok(cid.to_string())
    }

    /// Opens the blob `cid` of `subject`.
    pub async fn get(&self, subject: String, cid: String) -> Result<Uint8Array, JsValue> {
        let plain = self
            .vault
            .get(&subject, &cid_of(&cid)?)
            .await
            .map_err(fail)?;
        Ok(Uint8Array::from(plain.as_slice()))
    }

    /// The ciphertext of `cid`, as a node keeps it.
    pub async fn sealed(&self, cid: String) -> Result<Uint8Array, JsValue> {
        let bytes = (self.vault.store())
            .retrieve(&cid_of(&cid)?, self.vault.owner())
            .await
            .map_err(fail)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// Opens ciphertext of `subject` fetched from elsewhere (a node); checked against `cid`.
    pub fn open(
        &self,
        subject: String,
        cid: String,
        sealed: Uint8Array,
    ) -> Result<Uint8Array, JsValue> {
        let plain = self
            .vault
            .open(&subject, &cid_of(&cid)?, &sealed.to_vec())
            .map_err(fail)?;
        Ok(Uint8Array::from(plain.as_slice()))
    }

    /// Deletes `cid` here.
    pub async fn delete(&self, cid: String) -> Result<(), JsValue> {
        self.vault
            .delete(&cid_of(&cid)?)
            .await
            .map(|_| ())
            .map_err(fail)
    }

    /// The CIDs kept here.
    pub async fn list(&self) -> Result<Vec<String>, JsValue> {
        let cids = self
            .vault
            .store()
            .list(self.vault.owner())
            .await
            .map_err(fail)?;
        Ok(cids.iter().map(ToString::to_string).collect())
    }

    /// Destroys `subject`'s data key: what was sealed under it, here or anywhere, can no
    /// longer be opened. Whether it had one.
    pub async fn forget(&self, subject: String) -> Result<bool, JsValue> {
        let had = self.vault.keyring().forget(&subject);
        self.save_keyring().await?;
        Ok(had)
    }

    /// `subject`'s data key sealed for the identity `reader` (a did:key): JSON the reader
    /// passes to `accept`. It opens nothing for anyone else.
    pub fn share(&self, subject: String, reader: String) -> Result<String, JsValue> {
        let key = kwaainet_p2p::did::to_ed25519(&reader)
            .map_err(|e| err(P2pCode::InvalidArgument, format!("reader: {e}")))?;
        let shared = self.vault.share(&subject, &key.to_bytes()).map_err(fail)?;
        serde_json::to_string(&shared).map_err(|e| err(P2pCode::Internal, e))
    }

    /// Takes a key shared with this identity (`share`'s JSON) into the keyring.
    pub async fn accept(&self, shared: String) -> Result<String, JsValue> {
        if shared.len() > 4096 {
            return Err(err(
                P2pCode::InvalidArgument,
                "a shared key is at most 4 KiB",
            ));
        }
        let shared: kwaainet_storage::SharedKey = serde_json::from_str(&shared)
            .map_err(|e| err(P2pCode::InvalidArgument, format!("shared key: {e}")))?;
        let ed = self
            .key
            .clone()
            .try_into_ed25519()
            .map_err(|_| err(P2pCode::Internal, "the page key is not Ed25519"))?;
        let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            ed.secret()
                .as_ref()
                .try_into()
                .map_err(|_| err(P2pCode::Internal, "an Ed25519 secret is 32 bytes"))?,
        );
        self.vault.accept(&seed, &shared).map_err(fail)?;
        self.save_keyring().await?;
        Ok(shared.subject)
    }

    /// The vault's owner (the page identity's did:key).
    pub fn owner(&self) -> String {
        self.vault.owner().to_owned()
    }

    /// Closes its database.
    pub fn close(&self) {
        self.vault.store().close();
    }
}
