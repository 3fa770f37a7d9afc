//! Who may do what with a blob: its owner (who stored it, and alone may delete it) and the
//! identities it is shared with (who may read it). Identities are `did:key`s, so a page, a
//! node and a person's passkey-backed identity are named the same way.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most readers one blob is shared with.
pub const MAX_READERS: usize = 32;
/// Longest identity accepted (an Ed25519 did:key is 56 characters).
pub const MAX_DID: usize = 128;

/// What an identity asks to do with a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read its bytes.
    Read,
    /// Delete it.
    Delete,
}

impl Access {
    /// The verb, for errors.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Delete => "delete",
        }
    }
}

/// A blob's access-control list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// Who stored it: may read and delete it.
    pub owner: String,
    /// Who else may read it.
    #[serde(default)]
    pub readers: Vec<String>,
}

impl Acl {
    /// Only `owner` may read or delete.
    pub fn private(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            readers: Vec::new(),
        }
    }

    /// Also readable by `reader`.
    #[must_use]
    pub fn with_reader(mut self, reader: impl Into<String>) -> Self {
        self.readers.push(reader.into());
        self
    }

    /// Refuses an owner or reader that is not a did:key, and too many readers.
    pub fn validate(&self) -> Result<()> {
        check_did(&self.owner)?;
        if self.readers.len() > MAX_READERS {
            return Err(Error::Invalid(format!(
                "{} readers (at most {MAX_READERS})",
                self.readers.len()
            )));
        }
        self.readers.iter().try_for_each(|r| check_did(r))
    }

    /// Whether `who` may do `access`.
    pub fn permits(&self, who: &str, access: Access) -> bool {
        who == self.owner || (access == Access::Read && self.readers.iter().any(|r| r == who))
    }

    /// `Ok` if `who` may do `access` to `cid`, else [`Error::Denied`].
    pub fn check(&self, who: &str, access: Access, cid: &crate::Cid) -> Result<()> {
        if self.permits(who, access) {
            Ok(())
        } else {
            Err(Error::Denied {
                who: who.to_owned(),
                op: access.verb(),
                cid: cid.to_string(),
            })
        }
    }
}

/// A syntactic check of a `did:key` (base58btc multibase): the cryptographic one is made
/// where a signature is verified (`kwaainet_p2p::did`).
pub fn check_did(did: &str) -> Result<()> {
    let ok = did.len() <= MAX_DID
        && did.strip_prefix("did:key:z").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{did:?} is not a did:key")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
    const B: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

    #[test]
    fn owners_read_and_delete_readers_only_read() {
        let acl = Acl::private(A).with_reader(B);
        assert!(acl.validate().is_ok());
        assert!(acl.permits(A, Access::Delete) && acl.permits(B, Access::Read));
        assert!(!acl.permits(B, Access::Delete));
        assert!(!Acl::private(A).permits(B, Access::Read));
    }

    #[test]
    fn malformed_identities_are_refused() {
        for bad in [
            "",
            "alice",
            "did:web:example.com",
            "did:key:z",
            "did:key:z0OIl",
            "did:key:z6Mk\n",
        ] {
            assert!(Acl::private(bad).validate().is_err(), "{bad:?}");
        }
        let many = (0..=MAX_READERS).fold(Acl::private(A), |acl, _| acl.with_reader(B));
        assert!(many.validate().is_err());
    }
}
