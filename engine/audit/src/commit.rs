//! Salted commitments: how the log names a person or a piece of data without holding it.
//!
//! A subject's commitment is SHA-256 over a domain tag, a random 32-byte salt kept for that
//! subject, and the subject's identifier. Without the salt nobody can test a guess ("is
//! alice@example.org in this log?"); with it the subject can prove which entries are theirs
//! (an export carries it); deleting it ([`Salts::forget`], crypto-shredding) unlinks the
//! entries for good while every checkpoint still verifies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const DOMAIN: &[u8] = b"kwaainet/audit/commitment/v1\0";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A random per-subject salt.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Salt([u8; 32]);

impl Salt {
    /// A fresh salt from the system's (or the page's) random source.
    pub fn random() -> Result<Self> {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(s))
    }

    /// The salt's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(…)") // never printed: it links entries to a person
    }
}

impl TryFrom<String> for Salt {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        unhex32(&s).map(Self).ok_or(Error::Commitment(s))
    }
}

impl From<Salt> for String {
    fn from(s: Salt) -> String {
        hex(&s.0)
    }
}

/// SHA-256(domain, salt, value), shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Commitment([u8; 32]);

impl Commitment {
    /// The commitment to `value` under `salt`.
    pub fn new(salt: &Salt, value: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(salt.0);
        h.update(value);
        Self(h.finalize().into())
    }

    /// Whether this commits to `value` under `salt` (a subject proving an entry is theirs).
    pub fn opens_to(&self, salt: &Salt, value: &[u8]) -> bool {
        Self::new(salt, value) == *self
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Commitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Commitment({})", hex(&self.0))
    }
}

impl std::fmt::Display for Commitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl TryFrom<String> for Commitment {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        unhex32(&s).map(Self).ok_or(Error::Commitment(s))
    }
}

impl From<Commitment> for String {
    fn from(c: Commitment) -> String {
        hex(&c.0)
    }
}

/// The salt of every subject the log has named, keyed by the SHA-256 of the subject's
/// identifier (so this table does not list identifiers in clear either).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Salts {
    salts: BTreeMap<String, Salt>,
}

impl Salts {
    fn key(subject: &str) -> String {
        hex(&Sha256::digest(subject.as_bytes()))
    }

    /// The commitment to `subject`, creating its salt on first use. Returns whether a salt
    /// was created (the table then needs saving).
    pub fn commit(&mut self, subject: &str) -> Result<(Commitment, bool)> {
        let key = Self::key(subject);
        if let Some(salt) = self.salts.get(&key) {
            return Ok((Commitment::new(salt, subject.as_bytes()), false));
        }
        let salt = Salt::random()?;
        let c = Commitment::new(&salt, subject.as_bytes());
        self.salts.insert(key, salt);
        Ok((c, true))
    }

    /// The subject's salt, if the log has named them (what their export carries).
    pub fn salt(&self, subject: &str) -> Option<&Salt> {
        self.salts.get(&Self::key(subject))
    }

    /// Forgets the subject's salt: their entries stay in the log, and verify, but nobody can
    /// link them to the subject any more. Returns whether there was one.
    pub fn forget(&mut self, subject: &str) -> bool {
        self.salts.remove(&Self::key(subject)).is_some()
    }

    /// How many subjects have a salt.
    pub fn len(&self) -> usize {
        self.salts.len()
    }

    /// Whether no subject has a salt.
    pub fn is_empty(&self) -> bool {
        self.salts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commitments_hide_and_open() {
        let mut salts = Salts::default();
        let (a, created) = salts.commit("alice@example.org").unwrap();
        assert!(created);
        let (a2, created) = salts.commit("alice@example.org").unwrap();
        assert!(!created);
        assert_eq!(a, a2, "one subject, one commitment");
        let (b, _) = salts.commit("bob@example.org").unwrap();
        assert_ne!(a, b);
        let salt = salts.salt("alice@example.org").unwrap().clone();
        assert!(a.opens_to(&salt, b"alice@example.org"));
        assert!(!a.opens_to(&salt, b"bob@example.org"));
        // Without the salt a guess cannot be tested: an unsalted hash is not the commitment.
        assert_ne!(a.as_bytes()[..], Sha256::digest(b"alice@example.org")[..]);
        // Forgotten: a fresh salt, a commitment unlinkable to the old one.
        assert!(salts.forget("alice@example.org"));
        let (a3, created) = salts.commit("alice@example.org").unwrap();
        assert!(created);
        assert_ne!(a, a3);
        // Round trips through its text form; garbage is an error.
        let s: String = a.into();
        assert_eq!(Commitment::try_from(s).unwrap(), a);
        assert!(Commitment::try_from("zz".to_string()).is_err());
        assert!(format!("{salt:?}").contains('…'));
    }
}
