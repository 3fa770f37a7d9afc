//! Checkpoints: a log's size and root in the C2SP `tlog-checkpoint` format, signed as a C2SP
//! `signed-note` with an Ed25519 key (the node's own key, the one behind its peer id).
//!
//! ```text
//! kwaainet/audit/12D3KooW…          origin: names the log, and the signing key
//! 42                                tree size
//! qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=    root hash, base64
//!
//! — kwaainet/audit/12D3KooW… <base64(key id ‖ Ed25519 signature of the three lines)>
//! ```
//! The key id is the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key), as the
//! signed-note spec gives for Ed25519.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tree::Hash;

/// The largest signed note accepted.
pub const MAX_NOTE_BYTES: usize = 4096;

/// Whoever signs checkpoints: an Ed25519 key.
pub trait Signer {
    /// The 32-byte Ed25519 public key.
    fn public_key(&self) -> [u8; 32];
    /// The Ed25519 signature of `msg`.
    fn sign(&self, msg: &[u8]) -> [u8; 64];
}

/// The signed-note key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let h = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n\x01")
        .chain_update(public_key)
        .finalize();
    [h[0], h[1], h[2], h[3]]
}

/// A log's state at one moment: its origin, size and root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (also the key's name in the signature line).
    pub origin: String,
    /// How many entries.
    pub size: u64,
    /// The Merkle tree hash of those entries.
    pub root: Hash,
}

fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= 256
        && !origin.contains(['+', '\n'])
        && !origin.chars().any(char::is_whitespace)
}

impl Checkpoint {
    /// The checkpoint's text: the signed body.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The signed note of this checkpoint.
    pub fn sign(&self, signer: &dyn Signer) -> Result<String> {
        if !valid_origin(&self.origin) {
            return Err(Error::Checkpoint(format!("bad origin {:?}", self.origin)));
        }
        let body = self.body();
        let mut sig = key_id(&self.origin, &signer.public_key()).to_vec();
        sig.extend_from_slice(&signer.sign(body.as_bytes()));
        Ok(format!(
            "{body}\n\u{2014} {} {}\n",
            self.origin,
            B64.encode(sig)
        ))
    }

    /// Parses a signed note and checks its signature by `public_key` under the name
    /// `origin` (the log the caller expects). Any other signature lines are ignored.
    pub fn open(note: &str, origin: &str, public_key: &[u8; 32]) -> Result<Self> {
        let bad = |why: &str| Error::Checkpoint(why.to_owned());
        if note.len() > MAX_NOTE_BYTES {
            return Err(bad("larger than 4 KiB"));
        }
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let (Some(o), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(bad("fewer than three lines"));
        };
        if o != origin {
            return Err(Error::Checkpoint(format!(
                "origin {o:?}, expected {origin:?}"
            )));
        }
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| !size.starts_with('+') && (size == "0" || !size.starts_with('0')))
            .ok_or_else(|| bad("size is not a decimal number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?;
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::Signature)?;
        let id = key_id(origin, public_key);
        let prefix = format!("\u{2014} {origin} ");
        let signed = sigs
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|b| B64.decode(b).ok())
            .filter(|b| b.len() == 68 && b[..4] == id)
            .any(|b| {
                Signature::from_slice(&b[4..])
                    .is_ok_and(|s| key.verify_strict(body.as_bytes(), &s).is_ok())
            });
        if !signed {
            return Err(Error::Signature);
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A test signer over a fixed seed.
    pub(crate) struct TestKey(pub ed25519_dalek::SigningKey);

    impl TestKey {
        pub(crate) fn new(seed: u8) -> Self {
            Self(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
        }
    }

    impl Signer for TestKey {
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, msg: &[u8]) -> [u8; 64] {
            use ed25519_dalek::Signer as _;
            self.0.sign(msg).to_bytes()
        }
    }

    #[test]
    fn signed_checkpoints_open_and_forgeries_do_not() {
        let key = TestKey::new(7);
        let cp = Checkpoint {
            origin: "kwaainet/audit/test".into(),
            size: 42,
            root: [9; 32],
        };
        let note = cp.sign(&key).unwrap();
        assert!(note.starts_with("kwaainet/audit/test\n42\nCQkJ"));
        assert!(note.contains("\n\n\u{2014} kwaainet/audit/test "));
        let pk = key.public_key();
        assert_eq!(Checkpoint::open(&note, &cp.origin, &pk).unwrap(), cp);

        // Another size or root under the same signature; another key; another log's name.
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            Checkpoint::open(&forged, &cp.origin, &pk),
            Err(Error::Signature)
        ));
        let other = TestKey::new(8).public_key();
        assert!(Checkpoint::open(&note, &cp.origin, &other).is_err());
        assert!(Checkpoint::open(&note, "kwaainet/audit/other", &pk).is_err());
        // Garbage is an error, never a panic.
        for junk in [
            "",
            "\n\n",
            "a\nb\nc\n\n\u{2014} a AAAA\n",
            &"x".repeat(5000),
        ] {
            assert!(Checkpoint::open(junk, &cp.origin, &pk).is_err());
        }
        let leading_zero = note.replacen("\n42\n", "\n042\n", 1);
        assert!(Checkpoint::open(&leading_zero, &cp.origin, &pk).is_err());
        // A second signer's line does not get in the way.
        let cosigned = format!("{note}\u{2014} witness AAAA\n");
        assert_eq!(Checkpoint::open(&cosigned, &cp.origin, &pk).unwrap(), cp);
        assert!(
            Checkpoint {
                origin: "has space".into(),
                ..cp
            }
            .sign(&key)
            .is_err()
        );
    }
}
