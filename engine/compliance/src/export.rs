//! Export bundles and erasure receipts.
//!
//! A bundle is JSON: `manifest` (the [`Manifest`] as JSON text), `signature` (the node's
//! Ed25519 signature over `kwaainet/export/v1\n` ‖ manifest, base58btc), `blobs` (each
//! listed blob's bytes, base64, by CID) and `plaintext` (the decrypted content of the
//! subject's sealed items, base64, by CID: their data in a portable form).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kwaainet_audit::{Checkpoint, Entry, Salt, Tree, proof};
use kwaainet_p2p::consent::SignedConsent;
use kwaainet_p2p::did;
use kwaainet_storage::{Cid, Receipt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version.
pub const EXPORT_VERSION: u8 = 1;
/// Largest bundle [`verify`] reads.
pub const MAX_BUNDLE: usize = 256 << 20;

/// Why a bundle or receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Not a bundle of this version.
    #[error("malformed export: {0}")]
    Malformed(String),
    /// The node's signature does not verify.
    #[error("the manifest is not signed by {0}")]
    Signature(String),
    /// A part does not match what the manifest says.
    #[error("{0}")]
    Mismatch(String),
}

type Result<T> = std::result::Result<T, ExportError>;

/// One item of the subject's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The stored blob (ciphertext, for sealed items).
    pub cid: Cid,
    /// What it is: the operator's vault subject it is sealed under; `consent` (a consent
    /// record), `identity-link` (a node's signed link of a credential), `sealed` (a blob the
    /// subject sealed with its own key) or `replica` (anything else held for the subject).
    pub label: String,
    /// When it was stored, Unix milliseconds.
    pub stored_ms: u64,
    /// SHA-256 of the plaintext, hex (sealed items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
}

/// One audit entry about the subject, with its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditItem {
    /// Its index in the log.
    pub index: u64,
    /// Its stored bytes (one JSON line).
    pub entry: String,
    /// Inclusion proof against the manifest's checkpoint, base64.
    pub proof: String,
}

/// The audit part of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPart {
    /// The log's name.
    pub origin: String,
    /// The signed checkpoint the proofs are against.
    pub checkpoint: String,
    /// The subject's salt: it opens the commitments in their entries (none if the log never
    /// named them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<Salt>,
    /// The entries whose subject commitment opens to the subject.
    pub entries: Vec<AuditItem>,
}

/// What a node declares it holds about a subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`EXPORT_VERSION`].
    pub v: u8,
    /// The node (its did:key), who signs.
    pub node: String,
    /// Whose data.
    pub subject: String,
    /// When the export was made, Unix milliseconds.
    pub created_ms: u64,
    /// Their stored data.
    pub items: Vec<Item>,
    /// Their audit entries.
    pub audit: AuditPart,
}

/// A bundle as handed out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The manifest's JSON text (signed as is).
    pub manifest: String,
    /// The node's signature, base58btc.
    pub signature: String,
    /// Every item's stored bytes, base64, by CID.
    pub blobs: BTreeMap<String, String>,
    /// Sealed items' plaintext, base64, by CID.
    #[serde(default)]
    pub plaintext: BTreeMap<String, String>,
}

/// What a verified bundle holds.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The subject's consent records, checked.
    pub consents: Vec<SignedConsent>,
    /// The audit entries, parsed and proven.
    pub entries: Vec<Entry>,
    /// The checkpoint's size.
    pub log_size: u64,
}

fn manifest_bytes(text: &str) -> Vec<u8> {
    [b"kwaainet/export/v1\n".as_slice(), text.as_bytes()].concat()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of plaintext as manifests carry it.
pub fn plain_digest(plain: &[u8]) -> String {
    sha256_hex(plain)
}

/// Signs `manifest` with `sign` (the node's key: returns its 64-byte signature) into a
/// bundle with these blobs and plaintexts.
pub fn seal(
    manifest: &Manifest,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
    blobs: BTreeMap<String, String>,
    plaintext: BTreeMap<String, String>,
) -> Result<Bundle> {
    let text =
        serde_json::to_string(manifest).map_err(|e| ExportError::Malformed(e.to_string()))?;
    let signature = bs58::encode(sign(&manifest_bytes(&text))).into_string();
    Ok(Bundle {
        manifest: text,
        signature,
        blobs,
        plaintext,
    })
}

/// Checks a bundle offline: the node's signature on the manifest; every blob against its
/// CID; every plaintext against its digest; every consent record's signature by its
/// subject (the bundle's); the checkpoint's signature by the node, every entry's
/// inclusion proof against it, and that each entry's subject commitment opens to the
/// subject with the given salt.
pub fn verify(bundle: &Bundle) -> Result<Verified> {
    let bad = |m: String| ExportError::Mismatch(m);
    let manifest: Manifest = serde_json::from_str(&bundle.manifest)
        .map_err(|e| ExportError::Malformed(e.to_string()))?;
    if manifest.v != EXPORT_VERSION {
        return Err(ExportError::Malformed(format!("version {}", manifest.v)));
    }
    let node_key =
        did::to_ed25519(&manifest.node).map_err(|e| ExportError::Malformed(e.to_string()))?;
    let sig = bs58::decode(&bundle.signature)
        .into_vec()
        .map_err(|_| ExportError::Signature(manifest.node.clone()))?;
    if !node_key.verify(&manifest_bytes(&bundle.manifest), &sig) {
        return Err(ExportError::Signature(manifest.node.clone()));
    }
    let mut consents = Vec::new();
    for item in &manifest.items {
        let key = item.cid.to_string();
        let b64 = bundle
            .blobs
            .get(&key)
            .ok_or_else(|| bad(format!("blob {key} is missing")))?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| bad(format!("blob {key} is not base64")))?;
        item.cid.verify(&bytes).map_err(|e| bad(e.to_string()))?;
        if let Some(digest) = &item.plain_sha256 {
            let plain = bundle
                .plaintext
                .get(&key)
                .and_then(|p| B64.decode(p).ok())
                .ok_or_else(|| bad(format!("plaintext of {key} is missing")))?;
            if sha256_hex(&plain) != *digest {
                return Err(bad(format!(
                    "plaintext of {key} is not what the manifest says"
                )));
            }
        }
        if item.label == "consent" {
            let signed: SignedConsent =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("consent {key}: {e}")))?;
            kwaainet_p2p::consent::verify(&signed, signed.record.issued_at_ms)
                .map_err(|e| bad(format!("consent {key}: {e}")))?;
            if signed.record.subject != manifest.subject {
                return Err(bad(format!("consent {key} is another subject's")));
            }
            consents.push(signed);
        }
    }
    let audit = &manifest.audit;
    let cp = Checkpoint::open(&audit.checkpoint, &audit.origin, &node_key.to_bytes())
        .map_err(|e| bad(format!("checkpoint: {e}")))?;
    let mut entries = Vec::new();
    for item in &audit.entries {
        let entry =
            Entry::parse(item.index, item.entry.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let proof = B64
            .decode(&item.proof)
            .map_err(|_| bad(format!("entry {}: proof is not base64", item.index)))?;
        proof::verify_inclusion(
            &Tree::leaf(item.entry.as_bytes()),
            item.index,
            cp.size,
            &cp.root,
            &proof,
        )
        .map_err(|e| bad(e.to_string()))?;
        let salt = audit
            .salt
            .as_ref()
            .ok_or_else(|| bad("entries without the salt that links them".into()))?;
        if !entry
            .subject
            .is_some_and(|c| c.opens_to(salt, manifest.subject.as_bytes()))
        {
            return Err(bad(format!(
                "entry {} is not about {}",
                item.index, manifest.subject
            )));
        }
        entries.push(entry);
    }
    Ok(Verified {
        manifest,
        consents,
        entries,
        log_size: cp.size,
    })
}

/// Checks a holder's receipt for a deleted blob: its signature by the holder's key.
pub fn verify_peer_receipt(r: &Receipt) -> Result<()> {
    let key = did::to_ed25519(&r.holder).map_err(|e| ExportError::Malformed(e.to_string()))?;
    r.verify(&key.to_bytes())
        .map_err(|_| ExportError::Signature(r.holder.clone()))
}

/// What an erasure did, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    /// [`EXPORT_VERSION`].
    pub v: u8,
    /// The node.
    pub node: String,
    /// Whose data.
    pub subject: String,
    /// When.
    pub at_ms: u64,
    /// Data keys destroyed (vault subjects): what was sealed under them is unreadable
    /// everywhere.
    pub keys_shredded: Vec<String>,
    /// Blobs deleted from this node.
    pub deleted: Vec<Cid>,
    /// Peers' signed receipts for the copies they held.
    pub receipts: Vec<Receipt>,
    /// Peers that held a copy and did not confirm.
    pub unconfirmed: Vec<String>,
    /// Whether the audit salt linking the subject to log entries was destroyed.
    pub audit_unlinked: bool,
}

/// An erasure and the node's signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureReceipt {
    /// The [`Erasure`] as JSON text.
    pub erasure: String,
    /// The node's signature over `kwaainet/erasure/v1\n` ‖ erasure, base58btc.
    pub signature: String,
}

fn erasure_bytes(text: &str) -> Vec<u8> {
    [b"kwaainet/erasure/v1\n".as_slice(), text.as_bytes()].concat()
}

impl ErasureReceipt {
    /// Signs `erasure` with the node's `sign`.
    pub fn sign(erasure: &Erasure, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<Self> {
        let text =
            serde_json::to_string(erasure).map_err(|e| ExportError::Malformed(e.to_string()))?;
        let signature = bs58::encode(sign(&erasure_bytes(&text))).into_string();
        Ok(Self {
            erasure: text,
            signature,
        })
    }

    /// Checks the node's signature and returns what it states.
    pub fn verify(&self) -> Result<Erasure> {
        let e: Erasure = serde_json::from_str(&self.erasure)
            .map_err(|e| ExportError::Malformed(e.to_string()))?;
        let key = did::to_ed25519(&e.node).map_err(|e| ExportError::Malformed(e.to_string()))?;
        let sig = bs58::decode(&self.signature)
            .into_vec()
            .map_err(|_| ExportError::Signature(e.node.clone()))?;
        if !key.verify(&erasure_bytes(&self.erasure), &sig) {
            return Err(ExportError::Signature(e.node));
        }
        Ok(e)
    }
}
