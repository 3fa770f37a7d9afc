//! Storage the user owns: one [`StorageProvider`] trait — store with an access-control list,
//! retrieve, delete, list — and its backends, all content addressed:
//!
//! - [`Cid`]: every blob is named by the CIDv1 (raw, SHA-256) of its bytes, and every
//!   backend checks a blob against its CID before handing it out, so a tampered copy is an
//!   error ([`Error::Tampered`]), never data.
//! - [`Acl`]: the owner (a `did:key`) reads and deletes; readers read.
//! - [`MemoryStore`], and natively [`FileStore`] (one file per blob, atomic writes, quotas)
//!   and, with the `net` feature, `net::NetworkStore`: blobs on peers over
//!   `/kwaainet/blob/1.0.0`, found through DHT provider records, with replicas and signed
//!   deletion requests answered by signed receipts.
//! - with the `solid` feature, natively, `solid::SolidStore`: blobs in a container of the
//!   user's Solid pod over HTTP(S), signed in as a Solid client (Solid-OIDC client
//!   credentials, DPoP-bound tokens).
//! - [`Vault`]: the encryption layer over any backend. Each subject's data key is random and
//!   wrapped by the user's key-encryption key, which is derived from their own Ed25519
//!   identity key, so only they can read what is stored, the backends and peers hold
//!   ciphertext, and erasing a subject's key (crypto-shredding) makes every copy of its data
//!   unreadable wherever it is.
//! - `conformance` (feature): the suite every backend passes.
//!
//! ```
//! # fn main() -> kwaainet_storage::Result<()> { futures_lite(async {
//! use kwaainet_storage::{Acl, MemoryStore, StorageProvider, UserKey, Vault};
//! let owner = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
//! let vault = Vault::new(MemoryStore::default(), UserKey::derive(&[7; 32]), owner);
//! let cid = vault.put("chats", b"hello", Acl::private(owner)).await?;
//! assert_eq!(vault.get("chats", &cid).await?, b"hello");
//! vault.keyring().forget("chats");
//! assert!(vault.get("chats", &cid).await.is_err()); // crypto-shredded
//! # Ok(()) }) }
//! # fn futures_lite<T>(f: impl std::future::Future<Output = T>) -> T {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod acl;
mod cid;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod file;
mod memory;
#[cfg(all(
    feature = "net",
    not(all(target_arch = "wasm32", target_os = "unknown"))
))]
pub mod net;
#[cfg(all(
    feature = "solid",
    not(all(target_arch = "wasm32", target_os = "unknown"))
))]
pub mod solid;
mod vault;

pub use acl::{Access, Acl, MAX_DID, MAX_READERS, check_did};
pub use cid::Cid;
pub use error::{Error, Result};
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub use file::FileStore;
pub use memory::MemoryStore;
pub use vault::{Keyring, SharedKey, UserKey, Vault};

use serde::{Deserialize, Serialize};

/// The first bytes of every blob a [`Vault`] seals (a holder whose policy requires
/// encryption accepts nothing else).
pub const SEALED_MAGIC: &[u8; 4] = b"KWV1";

/// Largest blob any backend accepts by default (4 MiB): what one protocol frame carries.
pub const MAX_BLOB: usize = 4 << 20;

/// What a backend accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest blob, in bytes.
    pub max_blob: usize,
    /// Most bytes held in all.
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob: MAX_BLOB,
            max_total: 1 << 30,
        }
    }
}

/// The outcome of a deletion: where the blob was held besides here, the signed receipts of
/// the peers that deleted it (none for a local backend).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deleted {
    /// Receipts from the peers that held a copy.
    pub receipts: Vec<Receipt>,
    /// Peers that held a copy but did not confirm (unreachable): the request stands, and
    /// the data is unreadable anyway once the key is erased.
    pub unconfirmed: Vec<String>,
}

/// A holder's signed statement that it deleted a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The holder (its did:key).
    pub holder: String,
    /// The blob.
    pub cid: Cid,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// The holder's Ed25519 signature over [`Receipt::signing_bytes`], base64.
    pub signature: String,
}

impl Receipt {
    /// The bytes the holder signs.
    pub fn signing_bytes(holder: &str, cid: &Cid, at_ms: u64) -> Vec<u8> {
        format!("kwaainet/storage/receipt/v1\n{holder}\n{cid}\n{at_ms}\n").into_bytes()
    }

    /// Checks the signature with the holder's Ed25519 public key (the key its did:key
    /// names, which the caller resolves).
    pub fn verify(&self, holder_key: &[u8; 32]) -> Result<()> {
        let fail = || Error::Signature(format!("receipt of {} for {}", self.holder, self.cid));
        let key = ed25519_dalek::VerifyingKey::from_bytes(holder_key).map_err(|_| fail())?;
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.signature)
                .map_err(|_| fail())?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| fail())?;
        key.verify_strict(
            &Self::signing_bytes(&self.holder, &self.cid, self.at_ms),
            &sig,
        )
        .map_err(|_| fail())
    }
}

/// A store of blobs under an access-control list. Every backend (memory, file, IndexedDB,
/// the network of peers) has the same semantics, which `conformance` checks:
///
/// - `store` names the blob by its [`Cid`]; storing the same bytes again for the same owner
///   is a no-op that updates the list, for another owner it is [`Error::Denied`].
/// - `retrieve` and `delete` check the list for `who`, and `retrieve` checks the bytes
///   against the CID.
/// - Refusals lose nothing: a failed call leaves what was stored as it was.
#[cfg_attr(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    async_trait::async_trait
)]
#[cfg_attr(all(target_arch = "wasm32", target_os = "unknown"), async_trait::async_trait(?Send))]
pub trait StorageProvider: MaybeSendSync {
    /// A short name for logs and reports (`memory`, `file`, `network`, `indexeddb`).
    fn name(&self) -> &'static str;
    /// What it accepts.
    fn limits(&self) -> Limits;
    /// Stores `data` under `acl` (its owner is who stores).
    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid>;
    /// The bytes of `cid`, if `who` may read them.
    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>>;
    /// Deletes `cid`, if `who` owns it.
    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted>;
    /// The blobs `owner` stored here.
    async fn list(&self, owner: &str) -> Result<Vec<Cid>>;
}

/// `Send + Sync` natively (backends are shared across a node's tasks), nothing in a page
/// (IndexedDB handles are JavaScript objects).
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}
/// `Send + Sync` natively, nothing in a page.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub trait MaybeSendSync {}
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
impl<T: ?Sized> MaybeSendSync for T {}

/// The rule every backend's `store` applies once the list and size are checked: the same
/// bytes stay their first owner's ([`Error::Denied`] for another), and a new blob must fit
/// the quota (`held` bytes already). `Ok(true)` for a new blob, `Ok(false)` for the owner
/// storing their own bytes again (only the list is replaced).
pub fn admit(
    cid: &Cid,
    existing_owner: Option<&str>,
    acl: &Acl,
    held: u64,
    size: u64,
    limits: Limits,
) -> Result<bool> {
    match existing_owner {
        Some(owner) if owner != acl.owner => Err(Error::Denied {
            who: acl.owner.clone(),
            op: "overwrite",
            cid: cid.to_string(),
        }),
        Some(_) => Ok(false),
        None if held + size > limits.max_total => Err(Error::Quota(format!(
            "{held} of {} bytes used",
            limits.max_total
        ))),
        None => Ok(true),
    }
}

/// The CIDs among `entries` whose list names `owner` as owner, sorted (every backend's
/// `list`).
pub fn owned_by<'a>(entries: impl Iterator<Item = (&'a Cid, &'a Acl)>, owner: &str) -> Vec<Cid> {
    let mut cids: Vec<Cid> = entries
        .filter(|(_, acl)| acl.owner == owner)
        .map(|(cid, _)| *cid)
        .collect();
    cids.sort();
    cids
}

/// Checks the common preconditions of `store`: a valid list, a blob within `limits`.
pub fn check_store(data: &[u8], acl: &Acl, limits: Limits) -> Result<()> {
    acl.validate()?;
    if data.len() > limits.max_blob {
        return Err(Error::TooLarge {
            size: data.len(),
            limit: limits.max_blob,
        });
    }
    Ok(())
}
