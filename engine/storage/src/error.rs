//! Storage errors: one enum for every backend, so a caller (and the conformance suite) tells
//! "not there" from "not yours" from "tampered" whatever holds the blob.

/// What went wrong storing, retrieving or deleting a blob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string or bytes that are not a KwaaiNet blob's CID (CIDv1, raw, SHA-256).
    #[error("bad CID: {0}")]
    BadCid(String),
    /// No blob with this CID here (or anywhere the backend looked).
    #[error("no blob {0}")]
    NotFound(String),
    /// The access-control list does not let this identity do this.
    #[error("{who} may not {op} {cid}")]
    Denied {
        /// Who asked.
        who: String,
        /// What they asked to do.
        op: &'static str,
        /// The blob.
        cid: String,
    },
    /// A blob over the backend's size limit.
    #[error("blob of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The backend's quota (blobs or bytes, in total or for this owner) is used up.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// Content that does not match its CID, or ciphertext that fails authentication.
    #[error("tampered: {0}")]
    Tampered(String),
    /// Decryption is impossible: the subject's key was erased (crypto-shredded) or never
    /// existed in this keyring.
    #[error("no key for subject {0:?} (erased, or never created here)")]
    NoKey(String),
    /// A malformed access-control list, identity, subject or message.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A signed statement (deletion request or receipt) that does not verify.
    #[error("bad signature: {0}")]
    Signature(String),
    /// The network backend could not reach enough peers, or a peer failed; a remote store
    /// (a Solid pod) was unreachable, answered with an error or refused our credentials.
    #[error("network: {0}")]
    Network(String),
    /// The backend's own I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with the storage [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
