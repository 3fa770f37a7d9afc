//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the P2P layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A DHT record or wire message failed validation (bad size, version, signature, ...).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The configuration is inconsistent (bad address, zero limit, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Building the transports failed.
    #[error("transport setup: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: libp2p::Multiaddr,
        /// Why.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// Signing our own record failed.
    #[error("signing: {0}")]
    Signing(#[from] libp2p::identity::SigningError),
    /// The node's event loop has stopped.
    #[error("the node has stopped")]
    NodeStopped,
    /// A dial asked for (`NodeHandle::dial`) failed or timed out.
    #[error("dial {addr}: {reason}")]
    Dial {
        /// The address dialed.
        addr: libp2p::Multiaddr,
        /// Why it failed.
        reason: String,
    },
    /// A DHT query failed.
    #[error("DHT query failed: {0}")]
    Query(String),
    /// Reading or writing the identity key file.
    #[error("identity file {path}: {source}")]
    IdentityIo {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The identity key file exists but is not usable.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// I/O outside the identity file (HTTP listener, ...).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
