//! The [`IdentityProvider`] seam: every way of proving an identity (an email token, a
//! passkey, a key held outside the browser) is a two-step ceremony — `begin` gives the
//! client what it must answer, `authenticate` checks the answer — whose result is a
//! [`Proof`] the node turns into a signed [`crate::LinkStatement`] (linking) or an identity
//! found again (signing in). Providers keep no identities: the node's [`Registry`] does.
//!
//! Pending ceremonies live in [`Challenges`]: single use, valid a bounded time, bounded in
//! number, so a flood of `begin` calls costs memory it cannot grow.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::webauthn::Credential;
use crate::{Level, Link, Permissions};

/// Why a ceremony fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Malformed input.
    #[error("malformed {0}")]
    Malformed(String),
    /// A check failed: the proof is not accepted.
    #[error("{0}")]
    Rejected(String),
    /// No identity has this credential, or it is already another's.
    #[error("{0}")]
    Unknown(String),
    /// The credential is already linked.
    #[error("{0}")]
    Conflict(String),
    /// Too many ceremonies in progress.
    #[error("too many {0} ceremonies in progress: try again shortly")]
    Busy(&'static str),
    /// This provider cannot do that (an email address does not sign in).
    #[error("{0}")]
    Unsupported(String),
    /// The token could not be delivered.
    #[error("could not deliver the token: {0}")]
    Delivery(String),
}

/// What a ceremony is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Link a credential to `subject`, asked by its signed request (`request`, its text).
    Link {
        /// The identity (its did:key).
        subject: String,
        /// The subject's signed request, kept in the link statement.
        request: String,
    },
    /// Find the identity a credential belongs to.
    SignIn,
}

/// What a ceremony proved.
#[derive(Debug, Clone)]
pub struct Proof {
    /// The identity: the one that asked to link, or the one signed in.
    pub subject: String,
    /// The credential (`passkey:<id>`, `email:<SHA-256 of the address>`, `did:key:…`).
    pub credential: String,
    /// The level it gives.
    pub level: Level,
    /// For a link, the subject's signed request; empty for a sign-in.
    pub request: String,
    /// A passkey's public key and counter, kept by the registry (registration only).
    pub passkey: Option<Credential>,
}

impl Proof {
    /// Whether it links a new credential (else it signs in).
    pub fn is_link(&self) -> bool {
        !self.request.is_empty()
    }
}

/// The node's identities, as providers need them.
pub trait Registry {
    /// The identity `credential` is linked to.
    fn subject_of(&self, credential: &str) -> Option<String>;
    /// A registered passkey by its id, to check a sign-in and advance its counter.
    fn passkey(&mut self, id: &str) -> Option<&mut Credential>;
}

/// One way of proving an identity.
pub trait IdentityProvider: Send + Sync {
    /// Its name in routes and links: `email`, `passkey`, `did`.
    fn kind(&self) -> &'static str;
    /// The level its credentials give.
    fn level(&self) -> Level;
    /// What that level may do.
    fn permissions(&self) -> Permissions {
        self.level().permissions()
    }
    /// Starts a ceremony; `params` are the client's (an address, a DID). Returns what the
    /// client needs to answer (passkey options, a message to sign, where a token went).
    fn begin(
        &self,
        intent: Intent,
        params: &serde_json::Value,
        now_ms: u64,
    ) -> Result<serde_json::Value, IdError>;
    /// Checks the client's answer to a ceremony this provider began.
    fn authenticate(
        &self,
        answer: &serde_json::Value,
        registry: &mut dyn Registry,
        now_ms: u64,
    ) -> Result<Proof, IdError>;
    /// Whether a (signature-checked) link is one this provider makes: its credential is of
    /// this kind and carries this level.
    fn verify(&self, link: &Link) -> Result<(), IdError> {
        let prefix = if self.kind() == "did" {
            "did:key:"
        } else {
            self.kind()
        };
        if link.credential.starts_with(prefix) && link.level == self.level() {
            Ok(())
        } else {
            Err(IdError::Rejected(format!(
                "{} is not a {} credential at level {:?}",
                link.credential,
                self.kind(),
                self.level()
            )))
        }
    }
}

/// Pending ceremonies: random 32-byte challenges, each taken once, within `ttl_ms`, at
/// most `max` at a time.
#[derive(Debug)]
pub struct Challenges<T> {
    what: &'static str,
    ttl_ms: u64,
    max: usize,
    pending: Mutex<HashMap<Vec<u8>, (T, u64)>>,
}

impl<T> Challenges<T> {
    /// Challenges for `what` (in errors), valid `ttl_ms`, at most `max` pending.
    pub fn new(what: &'static str, ttl_ms: u64, max: usize) -> Self {
        Self {
            what,
            ttl_ms,
            max,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, (T, u64)>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh challenge for `value`.
    pub fn issue(&self, value: T, now_ms: u64) -> Result<Vec<u8>, IdError> {
        let mut c = vec![0u8; 32];
        getrandom::fill(&mut c).map_err(|e| IdError::Delivery(format!("no entropy: {e}")))?;
        let mut pending = self.lock();
        let ttl = self.ttl_ms;
        pending.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= ttl);
        if pending.len() >= self.max {
            return Err(IdError::Busy(self.what));
        }
        pending.insert(c.clone(), (value, now_ms));
        Ok(c)
    }

    /// Takes the value of `challenge` (single use); refused when unknown, used or expired.
    pub fn take(&self, challenge: &[u8], now_ms: u64) -> Result<T, IdError> {
        let (value, at) = self
            .lock()
            .remove(challenge)
            .ok_or_else(|| IdError::Rejected(format!("unknown or used {} challenge", self.what)))?;
        if now_ms.saturating_sub(at) > self.ttl_ms {
            return Err(IdError::Rejected(format!(
                "the {} challenge expired",
                self.what
            )));
        }
        Ok(value)
    }

    /// How many are pending (expired ones included until the next issue).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A string field of `v`, at most `max` bytes.
pub(crate) fn field<'a>(
    v: &'a serde_json::Value,
    name: &str,
    max: usize,
) -> Result<&'a str, IdError> {
    let s = v
        .get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| IdError::Malformed(format!("missing {name}")))?;
    if s.len() > max {
        return Err(IdError::Malformed(format!(
            "{name} longer than {max} bytes"
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_challenge_is_single_use_expires_and_is_bounded() {
        let c = Challenges::new("test", 1000, 2);
        let a = c.issue(1, 0).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(c.take(&a, 10), Ok(1));
        assert!(
            matches!(c.take(&a, 10), Err(IdError::Rejected(_))),
            "reused"
        );
        let b = c.issue(2, 0).unwrap();
        assert!(matches!(c.take(&b, 1001), Err(IdError::Rejected(m)) if m.contains("expired")));
        c.issue(3, 0).unwrap();
        c.issue(4, 0).unwrap();
        assert_eq!(c.issue(5, 0), Err(IdError::Busy("test")));
        // Expired ones make room.
        assert!(c.issue(6, 5000).is_ok());
        assert!(matches!(c.take(&[0; 32], 0), Err(IdError::Rejected(_))));
    }
}
