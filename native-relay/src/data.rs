//! The node's data service: storage through the node and the data subject's rights.
//!
//! - The node keeps blobs in a [`FileStore`] beside its identity key
//!   (`storage/<peer id>/blobs`), holds replicas for peers (`/kwaainet/blob/1.0.0`,
//!   `kwaainet_storage::net::serve`), and keeps its operator's data in a [`Vault`] over the
//!   network backend: sealed with keys derived from the node's own identity key, replicated
//!   to peers as ciphertext.
//! - Visitors' signed consent records are stored as blobs they own (see `consent.rs`).
//! - `POST /api/v1/data` takes one signed request (`kwaainet_p2p::request`): the subject
//!   proves who they are with the key their did:key names, for this node, now, once.
//!   Anyone may `export` or `erase` their own data; the operator (the node's own key) may
//!   also `put`, `get`, `list` and `delete` items of its vault. Every action is written to
//!   the audit log.
//!
//! Export (GDPR Art. 15/20) answers a bundle that verifies offline
//! (`kwaainet_compliance::export`): the subject's items with their plaintext, consent
//! records, audit entries with inclusion proofs, the salt that links them, all under a
//! manifest the node signs. Erasure (Art. 17) deletes the subject's blobs here, sends the
//! holders of the operator's replicas signed deletion requests (their receipts come back),
//! destroys the data keys (so any copy left anywhere is unreadable) and the audit salt,
//! and answers a receipt signed by the node.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use axum::Router;
use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kwaainet_api::guard::{Client, RateLimit};
use kwaainet_audit::store::AuditLog;
use kwaainet_audit::{Decision, Entry, Label, Op};
use kwaainet_compliance::export::{
    self, AuditItem, AuditPart, Erasure, ErasureReceipt, Item, Manifest,
};
use kwaainet_compliance::policy::Policy;
use kwaainet_p2p::NodeHandle;
use kwaainet_p2p::consent::SignedConsent;
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::request::{self, DataRequest, RequestError, SignedRequest};
use kwaainet_storage::net::{NetConfig, NetworkStore};
use kwaainet_storage::{
    Acl, Cid, Error as StoreError, FileStore, Keyring, Limits, StorageProvider, UserKey, Vault,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{Recorder, now_ms};

/// The storage folder beside the identity key.
pub const STORAGE_DIR: &str = "storage";
/// Largest request body: a blob of `MAX_BLOB` in base64 and its envelope.
const MAX_BODY: usize = kwaainet_p2p::request::MAX_REQUEST;
/// Nonces remembered (each for the request window).
const MAX_NONCES: usize = 100_000;
/// How often retention is applied (and once at start).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The folder of the node `peer`'s storage.
pub fn dir_of(data_dir: &Path, peer: &kwaainet_p2p::libp2p::PeerId) -> PathBuf {
    data_dir.join(STORAGE_DIR).join(peer.to_string())
}

/// One item of the operator's vault.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Indexed {
    cid: Cid,
    label: String,
    stored_ms: u64,
    plain_sha256: String,
}

/// The node's storage and data-rights service.
pub struct NodeData {
    did: String,
    key: Keypair,
    dir: PathBuf,
    local: Arc<FileStore>,
    vault: Vault<NetworkStore>,
    index: Mutex<Vec<Indexed>>,
    nonces: Mutex<HashMap<String, u64>>,
    recorder: Recorder,
    log: Arc<Mutex<AuditLog>>,
    limits: RateLimit,
    serving: tokio::task::JoinHandle<()>,
    policy: Policy,
    /// The last retention sweep: when, and how many blobs it deleted.
    swept: Mutex<Option<(u64, u64)>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Identities' levels and devices (filled by the identity service).
    directory: Arc<crate::identity::Directory>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `bytes` to `path` through a temporary file (owner-only on Unix) and a rename.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

impl NodeData {
    /// Opens the node's storage in `dir` and starts answering `/kwaainet/blob/1.0.0`.
    pub fn open(
        dir: &Path,
        node: &NodeHandle,
        key: &Keypair,
        recorder: Recorder,
        log: Arc<Mutex<AuditLog>>,
        policy: &Policy,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let local = Arc::new(
            FileStore::open(dir.join("blobs"), Limits::default())
                .with_context(|| format!("opening the blob store in {}", dir.display()))?,
        );
        let ed = key
            .clone()
            .try_into_ed25519()
            .context("storage keys derive from an Ed25519 identity")?;
        let seed: [u8; 32] = ed
            .secret()
            .as_ref()
            .try_into()
            .context("an Ed25519 secret key is 32 bytes")?;
        let user_key = UserKey::derive(&seed);
        let keyring = match std::fs::read_to_string(dir.join("keyring.json")) {
            Ok(json) => Keyring::from_json(&json).context("reading keyring.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Keyring::default(),
            Err(e) => return Err(e).context("reading keyring.json"),
        };
        let index: Vec<Indexed> = match std::fs::read(dir.join("items.json")) {
            Ok(b) => serde_json::from_slice(&b).context("reading items.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).context("reading items.json"),
        };
        let config = NetConfig {
            placement: policy.allowed_regions.clone(),
            sealed_only: policy.encryption_required,
            ..NetConfig::default()
        };
        let net = NetworkStore::new(node.clone(), key.clone(), local.clone(), config.clone())?;
        let did = net.did().to_owned();
        let serving = tokio::spawn({
            let (node, key, local) = (
                node.clone(),
                key.clone(),
                local.clone() as Arc<dyn StorageProvider>,
            );
            async move {
                if let Err(e) = kwaainet_storage::net::serve(node, key, local, config).await {
                    tracing::error!(error = %e, "blob protocol");
                }
            }
        });
        let data = Arc::new(Self {
            vault: Vault::with_keyring(net, user_key, keyring, did.clone()),
            did,
            key: key.clone(),
            dir: dir.to_owned(),
            local,
            index: Mutex::new(index),
            nonces: Mutex::new(HashMap::new()),
            recorder,
            log,
            limits: RateLimit::new(60, 20),
            serving,
            policy: policy.clone(),
            swept: Mutex::new(None),
            sweeper: Mutex::new(None),
            directory: Arc::default(),
        });
        if let Some(days) = policy.retention_days {
            let weak = Arc::downgrade(&data);
            let task = tokio::spawn(async move {
                loop {
                    let Some(data) = weak.upgrade() else { break };
                    data.sweep(days).await;
                    drop(data);
                    tokio::time::sleep(SWEEP_EVERY).await;
                }
            });
            *lock(&data.sweeper) = Some(task);
        }
        Ok(data)
    }

    /// Retention: deletes what is held for others (visitors' records, peers' replicas)
    /// longer than `days`, and logs each deletion.
    async fn sweep(&self, days: u32) {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(std::time::Duration::from_secs(u64::from(days) * 86_400))
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut deleted = 0u64;
        for (cid, owner, at) in self.local.held() {
            if owner == self.did || at > cutoff {
                continue;
            }
            match self.local.delete(&cid, &owner).await {
                Ok(_) => {
                    deleted += 1;
                    self.audit(&owner, Op::Delete, Decision::Allow, "retention");
                }
                Err(e) => tracing::warn!(%cid, error = %e, "retention: could not delete"),
            }
        }
        *lock(&self.swept) = Some((now_ms(), deleted));
    }

    /// The policy and how it is enforced, for `/api/v1/compliance`.
    pub fn policy_report(&self) -> serde_json::Value {
        let p = &self.policy;
        let swept = *lock(&self.swept);
        json!({
            "profiles": p.profiles,
            "consent_required": p.consent_required,
            "encryption_required": p.encryption_required,
            "retention_days": p.retention_days,
            "allowed_regions": p.allowed_regions.to_string(),
            "honour_gpc": p.honour_gpc,
            "enforcement": {
                "operator_data": "sealed (XChaCha20-Poly1305, keys derived from the node's identity)",
                "replicas_held": if p.encryption_required { "sealed blobs only" } else { "any" },
                "replica_placement": p.allowed_regions.to_string(),
                "api_routes": p.allowed_regions.to_string(),
                "retention_last_sweep_ms": swept.map(|s| s.0),
                "retention_deleted": swept.map(|s| s.1),
            },
        })
    }

    /// The blob store (consent records are written to it).
    pub fn local(&self) -> &Arc<FileStore> {
        &self.local
    }

    /// Identities' levels and devices.
    pub fn directory(&self) -> Arc<crate::identity::Directory> {
        Arc::clone(&self.directory)
    }

    /// Stops answering the blob protocol and sweeping.
    pub fn stop(&self) {
        self.serving.abort();
        if let Some(t) = lock(&self.sweeper).take() {
            t.abort();
        }
    }

    fn save(&self, index: &[Indexed]) -> std::io::Result<()> {
        write_private(
            &self.dir.join("keyring.json"),
            self.vault.keyring().to_json().as_bytes(),
        )?;
        write_private(
            &self.dir.join("items.json"),
            &serde_json::to_vec(index).map_err(std::io::Error::other)?,
        )
    }

    fn audit(&self, subject: &str, op: Op, decision: Decision, reason: &str) {
        let mut e = Entry::new(now_ms(), op);
        e.purpose = Label::new("storage").ok();
        e.decision = Some(decision);
        e.reason = Label::new(reason).ok();
        if !self.recorder.record(subject, vec![e]) {
            tracing::warn!("audit queue full: a data operation was not recorded");
        }
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).unwrap_or_default()
    }

    /// A fresh nonce (false: seen within the request window).
    fn fresh(&self, r: &DataRequest) -> bool {
        let now = now_ms();
        let mut seen = lock(&self.nonces);
        seen.retain(|_, t| now.saturating_sub(*t) <= 2 * request::MAX_SKEW_MS);
        if seen.len() >= MAX_NONCES || seen.contains_key(&r.nonce) {
            return false;
        }
        seen.insert(r.nonce.clone(), now);
        true
    }

    /// Checks a signed request for this node (signature, audience, time) and that its
    /// nonce is new.
    pub fn verify_request(&self, signed: &SignedRequest) -> Result<DataRequest, Failure> {
        let r = match request::verify(signed, &self.did, now_ms()) {
            Ok(r) => r,
            Err(e @ RequestError::Signature) => {
                return Err(Failure(StatusCode::FORBIDDEN, e.to_string()));
            }
            Err(e) => return Err(Failure(StatusCode::BAD_REQUEST, e.to_string())),
        };
        if !self.fresh(&r) {
            return Err(Failure(
                StatusCode::CONFLICT,
                "this request was already used (replayed nonce)".into(),
            ));
        }
        // A page that signed in for an identity acts for it.
        let subject = self.directory.acting_for(&r.subject);
        Ok(DataRequest { subject, ..r })
    }

    /// Runs a verified request.
    pub async fn handle(&self, r: &DataRequest) -> Result<serde_json::Value, Failure> {
        let operator = r.subject == self.did;
        match r.action.as_str() {
            "export" => self.export(&r.subject).await,
            "erase" => self.erase(&r.subject).await,
            "put" | "get" | "list" | "delete" if !operator => self.own(r).await,
            "put" => self.put(&r.params).await,
            "get" => self.get(&r.params).await,
            "list" => Ok(json!({ "items": *lock(&self.index) })),
            "delete" => self.delete(&r.params).await,
            other => Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("unknown action {other:?}"),
            )),
        }
    }

    /// A visitor's own blobs: sealed in their page by keys only they hold (the node refuses
    /// plaintext), stored here under their name, within what their level permits.
    async fn own(&self, r: &DataRequest) -> Result<serde_json::Value, Failure> {
        let who = r.subject.as_str();
        let level = self.directory.level(who);
        let allowed = level.permissions();
        if !allowed.store {
            self.audit(who, Op::Store, Decision::Deny, "level");
            return Err(Failure(
                StatusCode::FORBIDDEN,
                format!(
                    "an identity at level {level:?} may not store data on this node: \
                     link an email address or a passkey first"
                ),
            ));
        }
        match r.action.as_str() {
            "put" => {
                let data = B64.decode(str_param(&r.params, "data")?).map_err(|_| {
                    Failure(StatusCode::BAD_REQUEST, "data: base64 expected".into())
                })?;
                if !data.starts_with(kwaainet_storage::SEALED_MAGIC) {
                    self.audit(who, Op::Store, Decision::Deny, "not_sealed");
                    return Err(Failure(
                        StatusCode::BAD_REQUEST,
                        "data must be sealed by your own key (kwaainet-storage's Vault): \
                         this node keeps no visitor's plaintext"
                            .into(),
                    ));
                }
                let held = self.local.held_by(who);
                if held + data.len() as u64 > allowed.quota_bytes {
                    self.audit(who, Op::Store, Decision::Deny, "quota");
                    return Err(Failure(
                        StatusCode::INSUFFICIENT_STORAGE,
                        format!(
                            "{held} of {} bytes used at level {level:?}",
                            allowed.quota_bytes
                        ),
                    ));
                }
                let cid = self.local.store(data, &Acl::private(who)).await?;
                self.audit(who, Op::Store, Decision::Allow, "put");
                Ok(json!({ "cid": cid }))
            }
            "get" => {
                let cid = cid_param(&r.params)?;
                let data = self.local.retrieve(&cid, who).await;
                let decision = if data.is_ok() {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                self.audit(who, Op::Read, decision, "get");
                Ok(json!({ "cid": cid, "data": B64.encode(data?) }))
            }
            "list" => Ok(json!({ "items": self.local.list(who).await? })),
            _ => {
                let cid = cid_param(&r.params)?;
                self.local.delete(&cid, who).await?;
                self.audit(who, Op::Delete, Decision::Allow, "delete");
                Ok(json!({ "deleted": cid }))
            }
        }
    }

    async fn put(&self, p: &serde_json::Value) -> Result<serde_json::Value, Failure> {
        let label = str_param(p, "label")?;
        let data = B64
            .decode(str_param(p, "data")?)
            .map_err(|_| Failure(StatusCode::BAD_REQUEST, "data: base64 expected".into()))?;
        let digest = export::plain_digest(&data);
        let cid = match self.vault.put(label, &data, Acl::private(&self.did)).await {
            Ok(c) => c,
            Err(e) => {
                self.audit(&self.did, Op::Store, Decision::Deny, reason_of(&e));
                return Err(e.into());
            }
        };
        let mut index = lock(&self.index);
        index.push(Indexed {
            cid,
            label: label.to_owned(),
            stored_ms: now_ms(),
            plain_sha256: digest,
        });
        self.save(&index).map_err(|e| Failure::internal(e.into()))?;
        drop(index);
        self.audit(&self.did, Op::Store, Decision::Allow, "put");
        Ok(json!({ "cid": cid }))
    }

    async fn get(&self, p: &serde_json::Value) -> Result<serde_json::Value, Failure> {
        let cid = cid_param(p)?;
        let label = (lock(&self.index).iter())
            .find(|i| i.cid == cid)
            .map(|i| i.label.clone())
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no item {cid}")))?;
        let data = self.vault.get(&label, &cid).await;
        self.audit(
            &self.did,
            Op::Read,
            if data.is_ok() {
                Decision::Allow
            } else {
                Decision::Deny
            },
            "get",
        );
        Ok(json!({ "cid": cid, "label": label, "data": B64.encode(data?) }))
    }

    async fn delete(&self, p: &serde_json::Value) -> Result<serde_json::Value, Failure> {
        let cid = cid_param(p)?;
        let deleted = self.vault.delete(&cid).await?;
        let mut index = lock(&self.index);
        index.retain(|i| i.cid != cid);
        self.save(&index).map_err(|e| Failure::internal(e.into()))?;
        drop(index);
        self.audit(&self.did, Op::Delete, Decision::Allow, "delete");
        Ok(serde_json::to_value(deleted).unwrap_or_default())
    }

    async fn export(&self, subject: &str) -> Result<serde_json::Value, Failure> {
        let (mut items, mut blobs, mut plaintext) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
        let vault_items: Vec<Indexed> = if subject == self.did {
            lock(&self.index).clone()
        } else {
            Vec::new()
        };
        for i in &vault_items {
            let sealed = self.vault.store().retrieve(&i.cid, &self.did).await?;
            let plain = self.vault.open(&i.label, &i.cid, &sealed)?;
            blobs.insert(i.cid.to_string(), B64.encode(&sealed));
            plaintext.insert(i.cid.to_string(), B64.encode(&plain));
            items.push(Item {
                cid: i.cid,
                label: i.label.clone(),
                stored_ms: i.stored_ms,
                plain_sha256: Some(i.plain_sha256.clone()),
            });
        }
        // Everything else held here under the subject's name: consent records, link
        // statements, sealed blobs, replicas.
        for cid in self.local.list(subject).await? {
            if vault_items.iter().any(|i| i.cid == cid) {
                continue;
            }
            let bytes = self.local.retrieve(&cid, subject).await?;
            let label = if serde_json::from_slice::<SignedConsent>(&bytes)
                .is_ok_and(|c| c.record.subject == subject)
            {
                "consent"
            } else if serde_json::from_slice::<kwaainet_identity::LinkStatement>(&bytes).is_ok() {
                "identity-link"
            } else if bytes.starts_with(kwaainet_storage::SEALED_MAGIC) {
                "sealed"
            } else {
                "replica"
            };
            blobs.insert(cid.to_string(), B64.encode(&bytes));
            items.push(Item {
                cid,
                label: label.into(),
                stored_ms: 0,
                plain_sha256: None,
            });
        }
        let audit = {
            let log = lock(&self.log);
            let salt = log.salt(subject).cloned();
            let mut entries = Vec::new();
            if let Some(salt) = &salt {
                let lines = log
                    .entries(0, log.len())
                    .map_err(|e| Failure::internal(e.into()))?;
                for (i, line) in lines.iter().enumerate() {
                    let index = i as u64;
                    let mine = Entry::parse(index, line)
                        .ok()
                        .and_then(|e| e.subject)
                        .is_some_and(|c| c.opens_to(salt, subject.as_bytes()));
                    if mine {
                        let proof = log
                            .prove_inclusion(index)
                            .map_err(|e| Failure::internal(e.into()))?;
                        entries.push(AuditItem {
                            index,
                            entry: String::from_utf8_lossy(line).into_owned(),
                            proof: B64.encode(proof),
                        });
                    }
                }
            }
            AuditPart {
                origin: log.origin().to_owned(),
                checkpoint: log.checkpoint().1.to_owned(),
                salt,
                entries,
            }
        };
        let manifest = Manifest {
            v: export::EXPORT_VERSION,
            node: self.did.clone(),
            subject: subject.to_owned(),
            created_ms: now_ms(),
            items,
            audit,
        };
        let bundle = export::seal(&manifest, |b| self.sign(b), blobs, plaintext)
            .map_err(|e| Failure::internal(e.into()))?;
        self.audit(subject, Op::Export, Decision::Allow, "gdpr_art15_20");
        Ok(serde_json::to_value(bundle).unwrap_or_default())
    }

    async fn erase(&self, subject: &str) -> Result<serde_json::Value, Failure> {
        let mut erasure = Erasure {
            v: export::EXPORT_VERSION,
            node: self.did.clone(),
            subject: subject.to_owned(),
            at_ms: now_ms(),
            keys_shredded: Vec::new(),
            deleted: Vec::new(),
            receipts: Vec::new(),
            unconfirmed: Vec::new(),
            audit_unlinked: false,
        };
        if subject == self.did {
            // The operator's vault: every copy on peers, then the keys.
            let items: Vec<Indexed> = lock(&self.index).clone();
            for i in &items {
                match self.vault.delete(&i.cid).await {
                    Ok(d) => {
                        erasure.deleted.push(i.cid);
                        erasure.receipts.extend(d.receipts);
                        erasure.unconfirmed.extend(d.unconfirmed);
                    }
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => erasure.unconfirmed.push(format!("{}: {e}", i.cid)),
                }
            }
            for s in self.vault.keyring().subjects() {
                self.vault.keyring().forget(&s);
                erasure.keys_shredded.push(s);
            }
            let mut index = lock(&self.index);
            index.clear();
            self.save(&index).map_err(|e| Failure::internal(e.into()))?;
        }
        for cid in self.local.list(subject).await? {
            self.local.delete(&cid, subject).await?;
            erasure.deleted.push(cid);
        }
        // Its identity: links, devices, level.
        self.directory.forget(subject);
        // The erasure itself is logged without naming the subject, then the salt that
        // links their past entries to them is destroyed.
        let mut e = Entry::new(now_ms(), Op::Erase);
        e.purpose = Label::new("storage").ok();
        e.decision = Some(Decision::Allow);
        e.reason = Label::new("gdpr_art17").ok();
        if !self.recorder.record_anonymous(vec![e]) {
            tracing::warn!("audit queue full: an erasure was not recorded");
        }
        // Through the writer, after everything queued about them (this request's own entries
        // included), so no entry written later brings the salt back.
        let recorder = self.recorder.clone();
        let who = subject.to_owned();
        erasure.audit_unlinked = tokio::task::spawn_blocking(move || recorder.forget(&who))
            .await
            .map_err(|e| Failure::internal(e.into()))?
            .map_err(Failure::internal)?;
        let receipt = ErasureReceipt::sign(&erasure, |b| self.sign(b))
            .map_err(|e| Failure::internal(e.into()))?;
        Ok(serde_json::to_value(receipt).unwrap_or_default())
    }

    /// The route.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/data", post(route))
            .with_state(Arc::clone(self))
    }
}

fn str_param<'a>(p: &'a serde_json::Value, name: &str) -> Result<&'a str, Failure> {
    p.get(name).and_then(|v| v.as_str()).ok_or_else(|| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("params.{name}: a string is required"),
        )
    })
}

fn cid_param(p: &serde_json::Value) -> Result<Cid, Failure> {
    Ok(Cid::parse(str_param(p, "cid")?)?)
}

fn reason_of(e: &StoreError) -> &'static str {
    match e {
        StoreError::TooLarge { .. } => "too_large",
        StoreError::Quota(_) => "quota",
        StoreError::Network(_) => "network",
        StoreError::Denied { .. } => "denied",
        _ => "error",
    }
}

/// An answer other than 200.
#[derive(Debug)]
pub struct Failure(StatusCode, String);

impl Failure {
    /// A status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }

    /// A 500 whose cause is logged, not sent.
    pub fn internal(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "data request");
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the node could not complete the request".into(),
        )
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::BadCid(_) | StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Denied { .. } | StoreError::Signature(_) => StatusCode::FORBIDDEN,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::Quota(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::Tampered(_) | StoreError::NoKey(_) => StatusCode::CONFLICT,
            StoreError::Network(_) => StatusCode::BAD_GATEWAY,
            StoreError::Io(_) => return Self::internal(e.into()),
        };
        Self(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn route(State(data): State<Arc<NodeData>>, req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.ip());
    if data.limits.take(Client::Addr(addr)).is_err() {
        return Failure(
            StatusCode::TOO_MANY_REQUESTS,
            "too many data requests: slow down".into(),
        )
        .into_response();
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_BODY).await else {
        return Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a data request is at most {MAX_BODY} bytes"),
        )
        .into_response();
    };
    let signed: SignedRequest = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return Failure(
                StatusCode::BAD_REQUEST,
                format!("not a signed request: {e}"),
            )
            .into_response();
        }
    };
    let r = match data.verify_request(&signed) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    match data.handle(&r).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(f) => f.into_response(),
    }
}
