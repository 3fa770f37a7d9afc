//! Content identifiers: every blob is named by a CIDv1 with the `raw` codec and a SHA-256
//! multihash of its bytes (the ciphertext, when it went through the [`crate::Vault`]), the
//! form IPFS uses for raw blocks. Written in base32 (`bafkrei…`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Multicodec `raw`.
const RAW: u64 = 0x55;
/// Multihash `sha2-256`.
const SHA2_256: u64 = 0x12;

/// A blob's content identifier (CIDv1, raw, SHA-256).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(cid::Cid);

impl Cid {
    /// The identifier of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        // A 32-byte digest always fits the 64-byte multihash.
        let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest)
            .unwrap_or_else(|_| unreachable!("a 32-byte digest fits"));
        Self(cid::Cid::new_v1(RAW, hash))
    }

    /// Parses a CID string, accepting only what [`Cid::of`] makes: version 1, `raw`,
    /// SHA-256 (a CIDv0, a dag codec or another hash is refused, with the reason).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > 128 {
            return Err(Error::BadCid(format!("{} characters", s.len())));
        }
        let c = cid::Cid::try_from(s).map_err(|e| Error::BadCid(format!("{s:?}: {e}")))?;
        Self::check(c).map_err(|why| Error::BadCid(format!("{s}: {why}")))
    }

    /// The binary form (for keys and wire messages).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Parses the binary form, with [`Cid::parse`]'s rules.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let c = cid::Cid::try_from(b).map_err(|e| Error::BadCid(e.to_string()))?;
        Self::check(c).map_err(Error::BadCid)
    }

    fn check(c: cid::Cid) -> std::result::Result<Self, String> {
        if c.version() != cid::Version::V1 {
            return Err("only CIDv1 names a KwaaiNet blob".into());
        }
        if c.codec() != RAW {
            return Err(format!("codec 0x{:x}, expected raw (0x55)", c.codec()));
        }
        let h = c.hash();
        if h.code() != SHA2_256 || h.size() != 32 {
            return Err(format!(
                "multihash 0x{:x}/{}, expected sha2-256/32",
                h.code(),
                h.size()
            ));
        }
        Ok(Self(c))
    }

    /// Whether `bytes` are the content this identifier names; [`Error::Tampered`] if not.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if Self::of(bytes) == *self {
            Ok(())
        } else {
            Err(Error::Tampered(format!("content does not hash to {self}")))
        }
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CIDv1's default string form: multibase base32, lower case.
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_blob_has_ipfs_raw_cid() {
        // `ipfs add --raw-leaves --cid-version 1` of an empty file, and `echo -n hello`.
        assert_eq!(
            Cid::of(b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            Cid::of(b"hello").to_string(),
            "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
        );
    }

    #[test]
    fn parse_round_trips_and_refuses_other_cids() {
        let c = Cid::of(b"kwaainet");
        assert_eq!(Cid::parse(&c.to_string()).ok(), Some(c));
        assert_eq!(Cid::from_bytes(&c.to_bytes()).ok(), Some(c));
        // A CIDv0 (dag-pb), a dag-cbor CIDv1, garbage and an overlong string.
        for bad in [
            "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",
            "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "not a cid",
            &"b".repeat(200),
        ] {
            assert!(matches!(Cid::parse(bad), Err(Error::BadCid(_))), "{bad}");
        }
        assert!(c.verify(b"kwaainet").is_ok());
        assert!(matches!(c.verify(b"kwaainet!"), Err(Error::Tampered(_))));
    }
}
