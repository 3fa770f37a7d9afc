//! Identities on KwaaiNet: one identity per person, named by a `did:key`, that grows
//! stronger without moving its data (progressive authentication):
//!
//! | Level | Proven by | Gives |
//! |---|---|---|
//! | anonymous | a page's own key (its did:key) | contributing compute, consent records, their data rights |
//! | email | a token sent to an address | storing data through nodes |
//! | passkey | a WebAuthn credential ([`webauthn`]) | recovery on another device, larger quotas |
//! | did | a statement signed by a key the person holds outside the browser | everything, portable across nodes |
//!
//! Every upgrade is a [`LinkStatement`]: the node's signed record that a credential now
//! belongs to the identity, made only at the identity's own signed request. The identity's
//! did:key never changes, so what it owns (blobs, consent records, audit entries) stays
//! its own. Data rights (export, erasure) never depend on the level.

pub mod did;
pub mod email;
pub mod passkey;
pub mod provider;
pub mod webauthn;

pub use provider::{Challenges, IdError, IdentityProvider, Intent, Proof, Registry};

use serde::{Deserialize, Serialize};

/// How strongly an identity is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Only the page's own key.
    Anonymous,
    /// A verified email address.
    Email,
    /// A passkey.
    Passkey,
    /// A key held outside the browser.
    Did,
}

/// What an identity may do, by level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Contribute compute and record consent.
    pub contribute: bool,
    /// Store data through nodes.
    pub store: bool,
    /// Bytes it may store on one node.
    pub quota_bytes: u64,
    /// Sign in again from another device (a passkey or an outside key).
    pub recover: bool,
    /// Take the identity to other nodes by its own signature.
    pub portable: bool,
}

impl Level {
    /// Its permissions.
    pub fn permissions(self) -> Permissions {
        let (store, quota, recover, portable) = match self {
            Self::Anonymous => (false, 0, false, false),
            Self::Email => (true, 16 << 20, false, false),
            Self::Passkey => (true, 256 << 20, true, false),
            Self::Did => (true, 1 << 30, true, true),
        };
        Permissions {
            contribute: true,
            store,
            quota_bytes: quota,
            recover,
            portable,
        }
    }
}

/// A node's signed record that `credential` belongs to `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Format version (1).
    pub v: u8,
    /// The node that verified the credential (its did:key).
    pub node: String,
    /// The identity.
    pub subject: String,
    /// `passkey:<credential id>`, `email:<SHA-256 of the address>`, `did:key:…` (a key
    /// held outside the browser), `key:did:key:…` (another device's page key, linked when
    /// it signed in: it acts for the subject, at the subject's level).
    pub credential: String,
    /// The level it gives.
    pub level: Level,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The subject's signed request that asked for the link (its JSON text).
    pub request: String,
}

/// A link and the node's signature (base58btc over `kwaainet/link/v1\n` ‖ link JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStatement {
    /// The [`Link`] as JSON text.
    pub link: String,
    /// The node's signature.
    pub signature: String,
}

/// Why a statement does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Malformed.
    #[error("malformed link statement: {0}")]
    Malformed(String),
    /// Not signed by the node it names.
    #[error("the link statement is not signed by its node")]
    Signature,
}

fn link_bytes(text: &str) -> Vec<u8> {
    [b"kwaainet/link/v1\n".as_slice(), text.as_bytes()].concat()
}

impl LinkStatement {
    /// Signs `link` with the node's `sign` (its Ed25519 key: 64-byte signatures).
    pub fn sign(link: &Link, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<Self, LinkError> {
        let text = serde_json::to_string(link).map_err(|e| LinkError::Malformed(e.to_string()))?;
        let signature = bs58_encode(&sign(&link_bytes(&text)));
        Ok(Self {
            link: text,
            signature,
        })
    }

    /// Checks the signature with the node's Ed25519 public key (from its did:key, which
    /// the caller resolves) and returns the link.
    pub fn verify(&self, node_key: &ed25519_dalek::VerifyingKey) -> Result<Link, LinkError> {
        let link: Link =
            serde_json::from_str(&self.link).map_err(|e| LinkError::Malformed(e.to_string()))?;
        let sig = bs58_decode(&self.signature).ok_or(LinkError::Signature)?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| LinkError::Signature)?;
        node_key
            .verify_strict(&link_bytes(&self.link), &sig)
            .map_err(|_| LinkError::Signature)?;
        Ok(link)
    }
}

fn bs58_encode(b: &[u8]) -> String {
    bs58::encode(b).into_string()
}

fn bs58_decode(s: &str) -> Option<Vec<u8>> {
    (s.len() <= 100)
        .then(|| bs58::decode(s).into_vec().ok())
        .flatten()
}

/// The level of an identity with these links: the highest.
pub fn level_of<'a>(links: impl IntoIterator<Item = &'a Link>) -> Level {
    links
        .into_iter()
        .map(|l| l.level)
        .max()
        .unwrap_or(Level::Anonymous)
}
