//! The audit log's errors.

use std::path::PathBuf;

/// What went wrong with an entry, a checkpoint, a proof or the stored log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A label that is empty, too long or has characters other than `[A-Za-z0-9._:-]`.
    #[error("bad label {0:?}: 1 to 64 characters of A-Z a-z 0-9 . _ : -")]
    Label(String),
    /// A commitment that is not 64 hex digits.
    #[error("bad commitment {0:?}: 64 hex digits expected")]
    Commitment(String),
    /// An entry line that does not parse.
    #[error("entry {index}: {reason}")]
    Entry {
        /// Its position in the log.
        index: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint or signed note that does not parse.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint whose signature does not verify with the log's key.
    #[error("checkpoint signature does not verify with the log's key")]
    Signature,
    /// A proof that does not verify, or arguments no proof can exist for.
    #[error("proof: {0}")]
    Proof(String),
    /// The stored log disagrees with what its signed checkpoints say.
    #[error("tampered log: {0}")]
    Tampered(String),
    /// Reading or writing the log's files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the log open.
    #[error(
        "{0}: another process (a second kwaainet with the same identity?) has this audit log open"
    )]
    Locked(PathBuf),
    /// No randomness for a salt.
    #[error("no randomness for a salt: {0}")]
    Random(String),
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
