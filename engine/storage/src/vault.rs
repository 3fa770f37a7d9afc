//! The encryption layer: what a [`Vault`] stores is sealed with XChaCha20-Poly1305 under the
//! data key of its subject (a person, or a kind of data: `chats`, `profile`), and each data
//! key is random and kept only wrapped by the user's key-encryption key ([`UserKey`]),
//! itself derived from the user's Ed25519 identity key. Backends and peers see ciphertext
//! and CIDs of ciphertext; forgetting a subject's wrapped key in the [`Keyring`] (or the
//! identity key itself) makes every copy of that subject's data unreadable, wherever it
//! was replicated: crypto-shredding, how erasure reaches copies nobody can reach.
//!
//! Sealed blob: `KWV1` ‖ 24-byte nonce ‖ ciphertext ‖ 16-byte tag, with `KWV1` ‖ subject as
//! associated data, so a blob moved to another subject fails to open.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{Acl, Cid, Deleted, Error, Result, StorageProvider};

const MAGIC: &[u8; 4] = crate::SEALED_MAGIC;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Longest subject name.
const MAX_SUBJECT: usize = 128;

/// The user's key-encryption key. Never stored: derived from their identity key each time.
#[derive(Clone)]
pub struct UserKey([u8; 32]);

impl Drop for UserKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKey(..)")
    }
}

impl UserKey {
    /// The key derived (HKDF-SHA256) from a 32-byte Ed25519 secret key (seed): the same
    /// identity always gives the same key, and nothing about the identity key can be
    /// learnt from it.
    pub fn derive(ed25519_secret: &[u8; 32]) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"kwaainet/storage/v1"), ed25519_secret);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        hk.expand(b"key-encryption key", &mut out)
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
        Self(out)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// One subject's data key, wrapped by the user's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wrapped {
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    key: String,
}

/// The subjects' wrapped data keys. It holds nothing secret (without the [`UserKey`] the
/// wrapped keys are noise), so it can be saved anywhere: JSON through serde.
#[derive(Debug, Default)]
pub struct Keyring(Mutex<BTreeMap<String, Wrapped>>);

impl Keyring {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Wrapped>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Erases `subject`'s data key: everything sealed for it can no longer be opened, by
    /// anyone. `false` if there was no such key.
    pub fn forget(&self, subject: &str) -> bool {
        self.lock().remove(subject).is_some()
    }

    /// The subjects with a key.
    pub fn subjects(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The keyring as JSON (for the owner to keep; it carries only wrapped keys).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&*self.lock()).unwrap_or_else(|_| "{}".into())
    }

    /// A keyring saved by [`Keyring::to_json`].
    pub fn from_json(json: &str) -> Result<Self> {
        let map: BTreeMap<String, Wrapped> =
            serde_json::from_str(json).map_err(|e| Error::Invalid(format!("keyring: {e}")))?;
        map.keys().try_for_each(|s| check_subject(s))?;
        Ok(Self(Mutex::new(map)))
    }

    /// `subject`'s data key, created if `create`.
    fn data_key(&self, user: &UserKey, subject: &str, create: bool) -> Result<Zeroizing<[u8; 32]>> {
        let aad = wrap_aad(subject);
        let mut ring = self.lock();
        if let Some(w) = ring.get(subject) {
            let raw = B64
                .decode(&w.key)
                .map_err(|_| Error::Tampered(format!("wrapped key of {subject:?}")))?;
            let plain = open_with(&user.cipher(), &raw, &aad).map_err(|_| {
                Error::Tampered(format!(
                    "wrapped key of {subject:?} does not open with this user's key"
                ))
            })?;
            let key: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| Error::Tampered(format!("wrapped key of {subject:?}")))?;
            return Ok(Zeroizing::new(key));
        }
        if !create {
            return Err(Error::NoKey(subject.to_owned()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        random(key.as_mut())?;
        let sealed = seal_with(&user.cipher(), key.as_ref(), &aad)?;
        ring.insert(
            subject.to_owned(),
            Wrapped {
                key: B64.encode(sealed),
            },
        );
        Ok(key)
    }
}

/// A subject's data key sealed for one reader: what the owner hands a reader (another
/// person, or the owner's own other device) so that they can open that subject's blobs. It
/// holds nothing secret for anyone else, so it may travel by any channel.
///
/// X25519 between a fresh ephemeral key and the reader's Ed25519 key in Montgomery form
/// (the standard birational map); HKDF-SHA256 over the shared secret, bound to both public
/// keys and the subject; XChaCha20-Poly1305 around the data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedKey {
    /// Format version (1).
    pub v: u8,
    /// The subject whose key this is.
    pub subject: String,
    /// The reader's Ed25519 public key, base64.
    pub to: String,
    /// The ephemeral X25519 public key, base64.
    pub ephemeral: String,
    /// nonce ‖ sealed data key ‖ tag, base64.
    pub key: String,
}

fn share_cipher(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    reader: &[u8; 32],
    subject: &str,
) -> Result<XChaCha20Poly1305> {
    if shared.iter().all(|b| *b == 0) {
        return Err(Error::Invalid(
            "the reader's key is a low-order point".into(),
        ));
    }
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"kwaainet/storage/share/v1"), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    let info = [ephemeral.as_slice(), reader, subject.as_bytes()].concat();
    hk.expand(&info, out.as_mut())
        .map_err(|_| Error::Invalid("HKDF length".into()))?;
    Ok(XChaCha20Poly1305::new(out.as_ref().into()))
}

fn b64_32(s: &str, what: &str) -> Result<[u8; 32]> {
    B64.decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Invalid(format!("shared key: {what} is not 32 bytes of base64")))
}

impl Keyring {
    /// `subject`'s data key sealed for the reader whose Ed25519 public key is `reader`.
    pub fn share(&self, user: &UserKey, subject: &str, reader: &[u8; 32]) -> Result<SharedKey> {
        check_subject(subject)?;
        let key = self.data_key(user, subject, false)?;
        let reader_x = ed25519_dalek::VerifyingKey::from_bytes(reader)
            .map_err(|_| Error::Invalid("the reader's key is not an Ed25519 point".into()))?
            .to_montgomery();
        let mut secret = Zeroizing::new([0u8; 32]);
        random(secret.as_mut())?;
        let ephemeral = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        let shared = Zeroizing::new(reader_x.mul_clamped(*secret).to_bytes());
        let cipher = share_cipher(&shared, &ephemeral, reader_x.as_bytes(), subject)?;
        Ok(SharedKey {
            v: 1,
            subject: subject.to_owned(),
            to: B64.encode(reader),
            ephemeral: B64.encode(ephemeral),
            key: B64.encode(seal_with(&cipher, key.as_ref(), &wrap_aad(subject))?),
        })
    }

    /// Takes a key shared with the holder of the Ed25519 seed `seed` into this keyring,
    /// wrapped by `user`. Refused when it is not for this key, does not open, or this
    /// keyring already holds another key for that subject (which would lose its data).
    pub fn accept(&self, user: &UserKey, seed: &[u8; 32], shared: &SharedKey) -> Result<()> {
        check_subject(&shared.subject)?;
        if shared.v != 1 {
            return Err(Error::Invalid(format!("shared key version {}", shared.v)));
        }
        let me = ed25519_dalek::SigningKey::from_bytes(seed);
        if b64_32(&shared.to, "to")? != me.verifying_key().to_bytes() {
            return Err(Error::Denied {
                who: "this identity".into(),
                op: "accept a key shared with another identity: subject",
                cid: shared.subject.clone(),
            });
        }
        let ephemeral = curve25519_dalek::MontgomeryPoint(b64_32(&shared.ephemeral, "ephemeral")?);
        let scalar = Zeroizing::new(me.to_scalar_bytes());
        let shared_secret = Zeroizing::new(ephemeral.mul_clamped(*scalar).to_bytes());
        let mine = me.verifying_key().to_montgomery();
        let cipher = share_cipher(
            &shared_secret,
            ephemeral.as_bytes(),
            mine.as_bytes(),
            &shared.subject,
        )?;
        let raw = B64
            .decode(&shared.key)
            .map_err(|_| Error::Invalid("shared key: key is not base64".into()))?;
        let plain = Zeroizing::new(
            open_with(&cipher, &raw, &wrap_aad(&shared.subject))
                .map_err(|_| Error::Tampered(format!("the key shared for {:?}", shared.subject)))?,
        );
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::Tampered(format!("the key shared for {:?}", shared.subject)))?;
        match self.data_key(user, &shared.subject, false) {
            Ok(held) if *held == key => return Ok(()),
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "this keyring already holds another key for {:?}: forget it first",
                    shared.subject
                )));
            }
            Err(Error::NoKey(_)) => {}
            Err(e) => return Err(e),
        }
        let sealed = seal_with(&user.cipher(), &key, &wrap_aad(&shared.subject))?;
        self.lock().insert(
            shared.subject.clone(),
            Wrapped {
                key: B64.encode(sealed),
            },
        );
        Ok(())
    }
}

fn wrap_aad(subject: &str) -> Vec<u8> {
    [b"kwaainet/storage/dek\0".as_slice(), subject.as_bytes()].concat()
}

fn blob_aad(subject: &str) -> Vec<u8> {
    [MAGIC.as_slice(), subject.as_bytes()].concat()
}

fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Io(std::io::Error::other(format!("no entropy: {e}"))))
}

/// nonce ‖ ciphertext ‖ tag.
fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE];
    random(&mut nonce)?;
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| Error::Invalid("plaintext too long to seal".into()))?;
    Ok([nonce.as_slice(), &ct].concat())
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    sealed: &[u8],
    aad: &[u8],
) -> std::result::Result<Vec<u8>, ()> {
    if sealed.len() < NONCE + TAG {
        return Err(());
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| ())
}

fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT || subject.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "subject {subject:?}: 1 to {MAX_SUBJECT} bytes, no control characters"
        )));
    }
    Ok(())
}

/// Sealed storage over any backend, for one user.
#[derive(Debug)]
pub struct Vault<S> {
    store: S,
    key: UserKey,
    keyring: Keyring,
    owner: String,
}

impl<S: StorageProvider> Vault<S> {
    /// A vault of `owner` (their did:key) with a new keyring.
    pub fn new(store: S, key: UserKey, owner: impl Into<String>) -> Self {
        Self::with_keyring(store, key, Keyring::default(), owner)
    }

    /// A vault with a keyring saved before.
    pub fn with_keyring(
        store: S,
        key: UserKey,
        keyring: Keyring,
        owner: impl Into<String>,
    ) -> Self {
        Self {
            store,
            key,
            keyring,
            owner: owner.into(),
        }
    }

    /// The backend.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The subjects' wrapped keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Whose vault this is.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Seals `plain` under `subject`'s data key (created on first use) and stores it under
    /// `acl`, whose owner must be this vault's. The CID is the ciphertext's.
    pub async fn put(&self, subject: &str, plain: &[u8], acl: Acl) -> Result<Cid> {
        check_subject(subject)?;
        if acl.owner != self.owner {
            return Err(Error::Invalid(format!(
                "a vault of {} stores only under its own name, not {}",
                self.owner, acl.owner
            )));
        }
        let key = self.keyring.data_key(&self.key, subject, true)?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let sealed = [
            MAGIC.as_slice(),
            &seal_with(&cipher, plain, &blob_aad(subject))?,
        ]
        .concat();
        self.store.store(sealed, &acl).await
    }

    /// Retrieves `cid` and opens it with `subject`'s data key: [`Error::NoKey`] once the key
    /// was erased, [`Error::Tampered`] if the ciphertext was changed (or is another
    /// subject's).
    pub async fn get(&self, subject: &str, cid: &Cid) -> Result<Vec<u8>> {
        check_subject(subject)?;
        let sealed = self.store.retrieve(cid, &self.owner).await?;
        self.open(subject, cid, &sealed)
    }

    /// Opens a sealed blob of `subject` fetched some other way (an export bundle).
    pub fn open(&self, subject: &str, cid: &Cid, sealed: &[u8]) -> Result<Vec<u8>> {
        cid.verify(sealed)?;
        let key = self.keyring.data_key(&self.key, subject, false)?;
        let body = sealed
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| Error::Tampered(format!("{cid} is not a sealed blob")))?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        open_with(&cipher, body, &blob_aad(subject)).map_err(|_| {
            Error::Tampered(format!(
                "{cid} fails authentication under subject {subject:?}"
            ))
        })
    }

    /// `subject`'s data key sealed for the reader with Ed25519 public key `reader`.
    pub fn share(&self, subject: &str, reader: &[u8; 32]) -> Result<SharedKey> {
        self.keyring.share(&self.key, subject, reader)
    }

    /// Takes a key shared with the holder of `seed` (this vault's identity seed).
    pub fn accept(&self, seed: &[u8; 32], shared: &SharedKey) -> Result<()> {
        self.keyring.accept(&self.key, seed, shared)
    }

    /// Deletes `cid` from the backend (and, for the network backend, from its peers).
    pub async fn delete(&self, cid: &Cid) -> Result<Deleted> {
        self.store.delete(cid, &self.owner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    const OWNER: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
            .block_on(f)
    }

    #[test]
    fn a_shared_key_opens_the_subject_for_its_reader_only() -> Result<()> {
        block_on(async {
            let owner = Vault::new(MemoryStore::default(), UserKey::derive(&[1; 32]), OWNER);
            let cid = owner
                .put("notes", b"shared notes", Acl::private(OWNER))
                .await?;
            let sealed = owner.store().retrieve(&cid, OWNER).await?;
            let reader_seed = [9u8; 32];
            let reader_pub = ed25519_dalek::SigningKey::from_bytes(&reader_seed)
                .verifying_key()
                .to_bytes();
            let shared = owner.share("notes", &reader_pub)?;
            let reader = Vault::new(
                MemoryStore::default(),
                UserKey::derive(&reader_seed),
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            );
            assert!(matches!(
                reader.open("notes", &cid, &sealed),
                Err(Error::NoKey(_))
            ));
            reader.accept(&reader_seed, &shared)?;
            assert_eq!(reader.open("notes", &cid, &sealed)?, b"shared notes");
            // Accepting again is a no-op; the keyring survives a save and reload.
            reader.accept(&reader_seed, &shared)?;
            let again = Vault::with_keyring(
                MemoryStore::default(),
                UserKey::derive(&reader_seed),
                Keyring::from_json(&reader.keyring().to_json())?,
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            );
            assert_eq!(again.open("notes", &cid, &sealed)?, b"shared notes");
            // Another key cannot accept it; a bent key does not open; no other subject.
            let stranger = Vault::new(
                MemoryStore::default(),
                UserKey::derive(&[5; 32]),
                "did:key:s",
            );
            assert!(matches!(
                stranger.accept(&[5; 32], &shared),
                Err(Error::Denied { .. })
            ));
            let mut bent = shared.clone();
            let mut raw = B64.decode(&bent.key).unwrap_or_default();
            raw[30] ^= 1;
            bent.key = B64.encode(raw);
            let fresh = Vault::new(
                MemoryStore::default(),
                UserKey::derive(&reader_seed),
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            );
            assert!(matches!(
                fresh.accept(&reader_seed, &bent),
                Err(Error::Tampered(_))
            ));
            let mut moved = shared.clone();
            moved.subject = "other".into();
            assert!(matches!(
                fresh.accept(&reader_seed, &moved),
                Err(Error::Tampered(_))
            ));
            assert!(matches!(
                owner.share("nobody", &reader_pub),
                Err(Error::NoKey(_))
            ));
            // A reader holding another key for the subject is not overwritten.
            let busy = Vault::new(
                MemoryStore::default(),
                UserKey::derive(&reader_seed),
                "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            );
            busy.put(
                "notes",
                b"mine",
                Acl::private("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
            )
            .await?;
            assert!(matches!(
                busy.accept(&reader_seed, &shared),
                Err(Error::Invalid(_))
            ));
            // Forgetting the owner's key does not take the reader's copy (shredding is per holder).
            owner.keyring().forget("notes");
            assert_eq!(reader.open("notes", &cid, &sealed)?, b"shared notes");
            Ok(())
        })
    }

    #[test]
    fn the_backend_holds_only_ciphertext_and_the_key_opens_it() -> Result<()> {
        block_on(async {
            let vault = Vault::new(MemoryStore::default(), UserKey::derive(&[1; 32]), OWNER);
            let cid = vault
                .put("notes", b"my secret note", Acl::private(OWNER))
                .await?;
            let raw = vault.store().retrieve(&cid, OWNER).await?;
            assert!(!raw.windows(6).any(|w| w == b"secret"));
            assert_eq!(raw.len(), 4 + 24 + 14 + 16);
            assert_eq!(vault.get("notes", &cid).await?, b"my secret note");
            // The same keyring with another user's key opens nothing.
            let json = vault.keyring().to_json();
            let thief = Vault::with_keyring(
                MemoryStore::default(),
                UserKey::derive(&[2; 32]),
                Keyring::from_json(&json)?,
                OWNER,
            );
            assert!(matches!(
                thief.open("notes", &cid, &raw),
                Err(Error::Tampered(_))
            ));
            // Moved to another subject: refused.
            assert!(vault.get("other", &cid).await.is_err());
            Ok(())
        })
    }

    #[test]
    fn forgetting_a_subject_shreds_its_data_only() -> Result<()> {
        block_on(async {
            let vault = Vault::new(MemoryStore::default(), UserKey::derive(&[3; 32]), OWNER);
            let a = vault.put("a", b"alpha", Acl::private(OWNER)).await?;
            let b = vault.put("b", b"beta", Acl::private(OWNER)).await?;
            assert!(vault.keyring().forget("a"));
            assert!(matches!(vault.get("a", &a).await, Err(Error::NoKey(_))));
            assert_eq!(vault.get("b", &b).await?, b"beta");
            Ok(())
        })
    }

    #[test]
    fn a_flipped_ciphertext_bit_fails_authentication_not_silently() -> Result<()> {
        block_on(async {
            let vault = Vault::new(MemoryStore::default(), UserKey::derive(&[4; 32]), OWNER);
            let cid = vault.put("s", b"payload", Acl::private(OWNER)).await?;
            let mut raw = vault.store().retrieve(&cid, OWNER).await?;
            raw[30] ^= 1;
            // Its CID no longer matches (the backend's check), and opening it under a
            // fresh CID fails the tag (the vault's).
            assert!(matches!(
                vault.open("s", &cid, &raw),
                Err(Error::Tampered(_))
            ));
            assert!(matches!(
                vault.open("s", &Cid::of(&raw), &raw),
                Err(Error::Tampered(_))
            ));
            Ok(())
        })
    }
}
