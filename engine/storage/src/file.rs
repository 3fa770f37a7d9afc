//! The file backend: one directory, two files per blob (`<cid>.blob`, its bytes, and
//! `<cid>.acl`, its access-control list as JSON), each written to a temporary file, synced
//! and renamed into place, so a crash leaves the old state or the new one. An index of
//! sizes and lists is kept in memory, built when the store is opened (which also removes
//! what a crash left half-written).
//!
//! The calls do blocking file I/O of at most one blob ([`crate::MAX_BLOB`] by default): a
//! node calls them from its tokio runtime as it does for its other small files.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{
    Access, Acl, Cid, Deleted, Error, Limits, Result, StorageProvider, admit, check_store, owned_by,
};

/// Blobs in a directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    limits: Limits,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    blobs: HashMap<Cid, (u64, Acl)>,
    total: u64,
}

impl FileStore {
    /// Opens (creating it if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>, limits: Limits) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut index = Index::default();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if name.ends_with(".tmp") {
                // A write that did not finish.
                let _ = fs::remove_file(&path);
            } else {
                names.push(name);
            }
        }
        for stem in names.iter().filter_map(|n| n.strip_suffix(".acl")) {
            let (list, blob) = (
                dir.join(format!("{stem}.acl")),
                dir.join(format!("{stem}.blob")),
            );
            let parsed = Cid::parse(stem).ok().and_then(|cid| {
                let acl: Acl = serde_json::from_slice(&fs::read(&list).ok()?).ok()?;
                Some((cid, acl, fs::metadata(&blob).ok()?.len()))
            });
            match parsed {
                Some((cid, acl, size)) => {
                    index.total += size;
                    index.blobs.insert(cid, (size, acl));
                }
                None => {
                    tracing::warn!(path = %list.display(), "unreadable blob list or missing blob: skipped")
                }
            }
        }
        // Blobs whose list was never written (a crash between the two renames).
        for stem in names.iter().filter_map(|n| n.strip_suffix(".blob")) {
            if Cid::parse(stem).is_ok_and(|c| !index.blobs.contains_key(&c))
                && !dir.join(format!("{stem}.acl")).exists()
            {
                let _ = fs::remove_file(dir.join(format!("{stem}.blob")));
            }
        }
        Ok(Self {
            dir,
            limits,
            index: Mutex::new(index),
        })
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `cid`'s bytes (tests corrupt it to check that it is noticed).
    pub fn blob_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(format!("{cid}.blob"))
    }

    /// Every blob held: its CID, owner and when it was written (the file's modification
    /// time), for retention.
    pub fn held(&self) -> Vec<(Cid, String, std::time::SystemTime)> {
        let blobs: Vec<(Cid, String)> = (self.lock().blobs.iter())
            .map(|(cid, (_, acl))| (*cid, acl.owner.clone()))
            .collect();
        blobs
            .into_iter()
            .map(|(cid, owner)| {
                let at = fs::metadata(self.blob_path(&cid))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (cid, owner, at)
            })
            .collect()
    }

    /// Bytes held for `owner` (from the index: no file is read).
    pub fn held_by(&self, owner: &str) -> u64 {
        (self.lock().blobs.values())
            .filter(|(_, acl)| acl.owner == owner)
            .map(|(size, _)| size)
            .sum()
    }

    fn acl_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(format!("{cid}.acl"))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[async_trait::async_trait]
impl StorageProvider for FileStore {
    fn name(&self) -> &'static str {
        "file"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid> {
        check_store(&data, acl, self.limits)?;
        let cid = Cid::of(&data);
        let size = data.len() as u64;
        let list = serde_json::to_vec(acl).map_err(|e| Error::Invalid(e.to_string()))?;
        // The index lock is held across the writes: one writer at a time keeps the quota
        // and the files in step.
        let mut index = self.lock();
        let existing = index.blobs.get(&cid).map(|(_, a)| a.owner.clone());
        if admit(
            &cid,
            existing.as_deref(),
            acl,
            index.total,
            size,
            self.limits,
        )? {
            write_atomic(&self.blob_path(&cid), &data)?;
            if let Err(e) = write_atomic(&self.acl_path(&cid), &list) {
                let _ = fs::remove_file(self.blob_path(&cid));
                return Err(e.into());
            }
            index.total += size;
        } else {
            write_atomic(&self.acl_path(&cid), &list)?;
        }
        index.blobs.insert(cid, (size, acl.clone()));
        Ok(cid)
    }

    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        let acl = (self.lock().blobs.get(cid).map(|(_, acl)| acl.clone()))
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Read, cid)?;
        let bytes = fs::read(self.blob_path(cid)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(cid.to_string()),
            _ => e.into(),
        })?;
        cid.verify(&bytes)?;
        Ok(bytes)
    }

    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        let mut index = self.lock();
        let (size, acl) = index
            .blobs
            .get(cid)
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        acl.check(who, Access::Delete, cid)?;
        let size = *size;
        // The list first: a crash after it leaves an orphan blob that `open` removes.
        fs::remove_file(self.acl_path(cid))?;
        index.blobs.remove(cid);
        index.total -= size;
        if let Err(e) = fs::remove_file(self.blob_path(cid))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%cid, error = %e, "blob list removed but its bytes remain");
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
