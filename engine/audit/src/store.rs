//! The log on disk, in a directory of its own:
//!
//! - `entries.jsonl`: one [`Entry`] per line, appended and synced;
//! - `checkpoints.jsonl`: after every append, a signed checkpoint of the whole log
//!   (`{"note": "<signed note>"}` per line), so every prefix of the log is signed;
//! - `salts.json` (mode 0600): the subjects' commitment salts ([`Salts`]).
//!
//! Opening the log checks all of it ([`load`]) and refuses a log whose entries disagree
//! with its signed checkpoints. A write torn by a crash (a last line without its newline)
//! is cut off on open; entries written after the last checkpoint (a crash in between, so at
//! most one append's [`MAX_BATCH`]) get a checkpoint, while more, or entries without any
//! checkpoint, mean checkpoints were removed and are refused. What a local check cannot see is a log cut back together with its
//! checkpoints by someone holding the key: clients that kept a later checkpoint see it, as
//! the consistency proof they ask for cannot exist.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, MAX_NOTE_BYTES, Signer};
use crate::commit::{Commitment, Salts};
use crate::entry::{Entry, MAX_ENTRY_BYTES};
use crate::error::{Error, Result};
use crate::tree::Tree;

/// The entries file.
pub const ENTRIES: &str = "entries.jsonl";
/// The checkpoints file.
pub const CHECKPOINTS: &str = "checkpoints.jsonl";
/// The salts file.
pub const SALTS: &str = "salts.json";
/// The lock file: one writer at a time.
pub const LOCK: &str = "lock";
/// Entries one append writes at most: a crash leaves at most this many after the last
/// checkpoint, so more unsigned entries than this are not a crash's doing.
pub const MAX_BATCH: usize = 1024;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct NoteLine {
    note: String,
}

/// A log read back and checked against its checkpoints.
#[derive(Debug)]
pub struct Loaded {
    /// The tree of every entry.
    pub tree: Tree,
    /// Where each entry starts in the entries file (and, last, where the file ends).
    pub offsets: Vec<u64>,
    /// The latest signed note, if any.
    pub latest: Option<(Checkpoint, String)>,
    /// How many checkpoints were checked.
    pub checkpoints: u64,
    /// Bytes of a torn last entry (no newline) that were not counted.
    pub torn: u64,
}

/// What [`verify`] found in a sound log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Entries in the log.
    pub entries: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// The size the latest checkpoint signs.
    pub signed_size: u64,
    /// Entries after the latest checkpoint (a crash between the two writes).
    pub unsigned: u64,
    /// Bytes of a torn last line.
    pub torn: u64,
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Reads the log in `dir` and checks every checkpoint's signature (by `public_key`, under
/// the name `origin`) and that the entries give the root it signed at its size.
pub fn load(dir: &Path, origin: &str, public_key: &[u8; 32]) -> Result<Loaded> {
    let entries = read_all(&dir.join(ENTRIES))?;
    let notes = read_all(&dir.join(CHECKPOINTS))?;
    let mut signed = Vec::new();
    for (i, line) in notes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if line.len() > 2 * MAX_NOTE_BYTES {
            return Err(Error::Tampered(format!(
                "checkpoint line {} is too long",
                i + 1
            )));
        }
        let n: NoteLine = serde_json::from_slice(line)
            .map_err(|e| Error::Tampered(format!("checkpoint line {}: {e}", i + 1)))?;
        let cp = Checkpoint::open(&n.note, origin, public_key)
            .map_err(|e| Error::Tampered(format!("checkpoint line {}: {e}", i + 1)))?;
        if let Some((prev, _)) = signed.last() {
            let prev: &Checkpoint = prev;
            if cp.size < prev.size {
                return Err(Error::Tampered(format!(
                    "checkpoint line {} signs {} entries after one that signed {}",
                    i + 1,
                    cp.size,
                    prev.size
                )));
            }
        }
        signed.push((cp, n.note));
    }

    let mut tree = Tree::new();
    let mut offsets = vec![0u64];
    let mut start = 0usize;
    let mut next_cp = signed.iter().peekable();
    let check = |tree: &Tree, cp: &Checkpoint| -> Result<()> {
        if tree.root() != cp.root {
            let last = cp.size.saturating_sub(1);
            return Err(Error::Tampered(format!(
                "the first {} entries do not match their signed checkpoint: entry {last} \
                 (or one before it) was edited, removed or moved",
                cp.size
            )));
        }
        Ok(())
    };
    while let Some(cp) = next_cp.next_if(|(cp, _)| cp.size == 0) {
        check(&tree, &cp.0)?;
    }
    let mut torn = 0u64;
    while start < entries.len() {
        let Some(len) = entries[start..].iter().position(|&b| b == b'\n') else {
            torn = (entries.len() - start) as u64;
            break;
        };
        let line = &entries[start..start + len];
        let index = tree.len();
        Entry::parse(index, line)?;
        tree.push(Tree::leaf(line));
        start += len + 1;
        offsets.push(start as u64);
        while let Some(cp) = next_cp.next_if(|(cp, _)| cp.size == tree.len()) {
            check(&tree, &cp.0)?;
        }
    }
    if let Some((cp, _)) = next_cp.next() {
        return Err(Error::Tampered(format!(
            "a checkpoint signs {} entries, the log has {}: entries were removed",
            cp.size,
            tree.len()
        )));
    }
    // A log is created with a checkpoint of size 0, and a crash leaves at most one batch
    // unsigned: more means checkpoints were removed.
    let signed_size = signed.last().map(|(c, _)| c.size);
    let unsigned = tree.len() - signed_size.unwrap_or(0);
    if signed_size.is_none() && !tree.is_empty() {
        return Err(Error::Tampered(format!(
            "{} entries and no checkpoint: the checkpoints were removed",
            tree.len()
        )));
    }
    if unsigned > MAX_BATCH as u64 {
        return Err(Error::Tampered(format!(
            "{unsigned} entries after the latest checkpoint, more than one write leaves: checkpoints were removed"
        )));
    }
    let checkpoints = signed.len() as u64;
    Ok(Loaded {
        tree,
        offsets,
        latest: signed.pop(),
        checkpoints,
        torn,
    })
}

/// Checks the log in `dir` without changing it.
pub fn verify(dir: &Path, origin: &str, public_key: &[u8; 32]) -> Result<Report> {
    let l = load(dir, origin, public_key)?;
    let signed_size = l.latest.as_ref().map_or(0, |(c, _)| c.size);
    Ok(Report {
        entries: l.tree.len(),
        checkpoints: l.checkpoints,
        signed_size,
        unsigned: l.tree.len() - signed_size,
        torn: l.torn,
    })
}

/// An open log that appends entries and signs a checkpoint after each.
pub struct AuditLog {
    dir: PathBuf,
    origin: String,
    signer: Box<dyn Signer + Send + Sync>,
    tree: Tree,
    offsets: Vec<u64>,
    entries: File,
    checkpoints: File,
    salts: Salts,
    latest: Checkpoint,
    latest_note: String,
    /// Held (an OS file lock) while the log is open.
    _lock: File,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .field("size", &self.tree.len())
            .finish_non_exhaustive()
    }
}

fn append_open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, named `origin`, signed by `signer`. Refuses a
    /// log that does not match its checkpoints ([`load`]).
    pub fn open(
        dir: &Path,
        origin: impl Into<String>,
        signer: Box<dyn Signer + Send + Sync>,
    ) -> Result<Self> {
        let origin = origin.into();
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(dir.to_owned()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let loaded = load(dir, &origin, &signer.public_key())?;
        let entries_path = dir.join(ENTRIES);
        if loaded.torn > 0 {
            let end = loaded.offsets.last().copied().unwrap_or(0);
            let f = OpenOptions::new()
                .write(true)
                .open(&entries_path)
                .map_err(io(&entries_path))?;
            f.set_len(end).map_err(io(&entries_path))?;
            f.sync_all().map_err(io(&entries_path))?;
        }
        let salts_path = dir.join(SALTS);
        let salts = match fs::read(&salts_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Io {
                path: salts_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Salts::default(),
            Err(e) => return Err(io(&salts_path)(e)),
        };
        let (latest, latest_note) = match loaded.latest {
            Some(l) => l,
            None => (
                Checkpoint {
                    origin: origin.clone(),
                    size: u64::MAX, // no checkpoint yet: signed below
                    root: [0; 32],
                },
                String::new(),
            ),
        };
        let checkpoints_path = dir.join(CHECKPOINTS);
        let mut log = Self {
            entries: append_open(&entries_path)?,
            checkpoints: append_open(&checkpoints_path)?,
            dir: dir.to_owned(),
            origin,
            signer,
            tree: loaded.tree,
            offsets: loaded.offsets,
            salts,
            latest,
            latest_note,
            _lock: lock,
        };
        if log.latest.size != log.tree.len() {
            log.sign()?;
        }
        Ok(log)
    }

    fn sign(&mut self) -> Result<()> {
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: self.tree.len(),
            root: self.tree.root(),
        };
        let note = cp.sign(self.signer.as_ref())?;
        let mut line = serde_json::to_vec(&NoteLine { note: note.clone() })
            .map_err(|e| Error::Checkpoint(e.to_string()))?;
        line.push(b'\n');
        let path = self.dir.join(CHECKPOINTS);
        self.checkpoints.write_all(&line).map_err(io(&path))?;
        self.checkpoints.sync_data().map_err(io(&path))?;
        self.latest = cp;
        self.latest_note = note;
        Ok(())
    }

    /// Appends `entry`, then signs a checkpoint of the log with it. Returns its index.
    pub fn append(&mut self, entry: &Entry) -> Result<u64> {
        self.append_all(std::slice::from_ref(entry))
            .map(|r| r.start)
    }

    /// Appends `entries` with one sync, then signs one checkpoint of the log with them
    /// (a writer draining a queue). Returns their indices. Nothing is written if one of
    /// them is too large.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<std::ops::Range<u64>> {
        let first = self.tree.len();
        if entries.len() > MAX_BATCH {
            return Err(Error::Entry {
                index: first,
                reason: format!(
                    "{} entries in one append, the limit is {MAX_BATCH}",
                    entries.len()
                ),
            });
        }
        let mut buf = Vec::new();
        let mut leaves = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let line = e.to_bytes();
            if line.len() > MAX_ENTRY_BYTES {
                return Err(Error::Entry {
                    index: first + i as u64,
                    reason: format!("{} bytes, the limit is {MAX_ENTRY_BYTES}", line.len()),
                });
            }
            leaves.push((Tree::leaf(&line), line.len() as u64 + 1));
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let path = self.dir.join(ENTRIES);
        self.entries.write_all(&buf).map_err(io(&path))?;
        self.entries.sync_data().map_err(io(&path))?;
        let mut end = self.offsets.last().copied().unwrap_or(0);
        for (leaf, len) in leaves {
            self.tree.push(leaf);
            end += len;
            self.offsets.push(end);
        }
        self.sign()?;
        Ok(first..self.tree.len())
    }

    /// The commitment naming `subject` in entries (its salt created and saved on first use).
    pub fn commit(&mut self, subject: &str) -> Result<Commitment> {
        let (c, created) = self.salts.commit(subject)?;
        if created {
            self.save_salts()?;
        }
        Ok(c)
    }

    /// The subject's salt, for their export.
    pub fn salt(&self, subject: &str) -> Option<&crate::Salt> {
        self.salts.salt(subject)
    }

    /// Forgets the subject's salt (erasure): their entries can no longer be linked to them.
    pub fn forget(&mut self, subject: &str) -> Result<bool> {
        let had = self.salts.forget(subject);
        if had {
            self.save_salts()?;
        }
        Ok(had)
    }

    fn save_salts(&self) -> Result<()> {
        let path = self.dir.join(SALTS);
        let tmp = self.dir.join(format!("{SALTS}.tmp"));
        let bytes = serde_json::to_vec(&self.salts).map_err(|e| Error::Random(e.to_string()))?;
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How many entries.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether the log has no entry.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The latest checkpoint and its signed note (it covers every entry).
    pub fn checkpoint(&self) -> (&Checkpoint, &str) {
        (&self.latest, &self.latest_note)
    }

    /// The stored bytes of entries `from..to` (clamped to the log), in order.
    pub fn entries(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        let to = to.min(self.len());
        if from >= to {
            return Ok(Vec::new());
        }
        let at = |i: u64| self.offsets[i as usize];
        let (a, b) = (at(from), at(to));
        let path = self.dir.join(ENTRIES);
        let mut f = File::open(&path).map_err(io(&path))?;
        f.seek(SeekFrom::Start(a)).map_err(io(&path))?;
        let mut buf = vec![0u8; (b - a) as usize];
        f.read_exact(&mut buf).map_err(io(&path))?;
        Ok((from..to)
            .map(|i| {
                let (s, e) = ((at(i) - a) as usize, (at(i + 1) - a) as usize);
                buf[s..e - 1].to_vec()
            })
            .collect())
    }

    /// The inclusion proof of entry `index` in the latest checkpoint.
    pub fn prove_inclusion(&self, index: u64) -> Result<Vec<u8>> {
        self.tree.prove_inclusion(index)
    }

    /// The proof that the log of `old_size` entries is a prefix of the latest checkpoint's.
    pub fn prove_consistency(&self, old_size: u64) -> Result<Vec<u8>> {
        self.tree.prove_consistency(old_size)
    }
}
