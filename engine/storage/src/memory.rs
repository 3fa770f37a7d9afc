//! The memory backend: blobs in a map, gone when the process ends (tests, a page without
//! persistent storage, a cache in front of another backend).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    Access, Acl, Cid, Deleted, Error, Limits, Result, StorageProvider, admit, check_store, owned_by,
};

/// Blobs held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    blobs: HashMap<Cid, (Arc<Vec<u8>>, Acl)>,
    total: u64,
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below is a single map operation, so a panic elsewhere cannot leave
        // the map half-changed.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the stored bytes of `cid` without changing its CID (tests: what a corrupted
    /// or malicious holder would hand out). `false` if there is no such blob.
    pub fn corrupt(&self, cid: &Cid, bytes: Vec<u8>) -> bool {
        let mut inner = self.lock();
        match inner.blobs.get_mut(cid) {
            Some((b, _)) => {
                let (old, new) = (b.len() as u64, bytes.len() as u64);
                *b = Arc::new(bytes);
                inner.total = inner.total - old + new;
                true
            }
            None => false,
        }
    }
}

#[cfg_attr(
    not(all(target_arch = "wasm32", target_os = "unknown")),
    async_trait::async_trait
)]
#[cfg_attr(all(target_arch = "wasm32", target_os = "unknown"), async_trait::async_trait(?Send))]
impl StorageProvider for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid> {
        check_store(&data, acl, self.limits)?;
        let cid = Cid::of(&data);
        let size = data.len() as u64;
        let mut inner = self.lock();
        let existing = inner.blobs.get(&cid).map(|(_, a)| a.owner.clone());
        if admit(
            &cid,
            existing.as_deref(),
            acl,
            inner.total,
            size,
            self.limits,
        )? {
            inner.total += size;
            inner.blobs.insert(cid, (Arc::new(data), acl.clone()));
        } else if let Some((_, old)) = inner.blobs.get_mut(&cid) {
            *old = acl.clone();
        }
        Ok(cid)
    }

    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        let (bytes, acl) = self
            .lock()
            .blobs
            .get(cid)
            .cloned()
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Read, cid)?;
        cid.verify(&bytes)?;
        Ok(bytes.to_vec())
    }

    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        let mut inner = self.lock();
        let (_, acl) = inner
            .blobs
            .get(cid)
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Delete, cid)?;
        if let Some((bytes, _)) = inner.blobs.remove(cid) {
            inner.total -= bytes.len() as u64;
        }
        Ok(Deleted::default())
    }

    async fn list(&self, owner: &str) -> Result<Vec<Cid>> {
        Ok(owned_by(
            self.lock().blobs.iter().map(|(c, (_, a))| (c, a)),
            owner,
        ))
    }
}
