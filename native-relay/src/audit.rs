//! The node's audit log (`kwaainet-audit`) in `<config dir>/audit/`, signed with the node's
//! own key: a writer thread that records the API's decisions, the read-only HTTP routes that
//! let anyone check it (`/api/v1/audit/…`), and `kwaainet audit verify`.
//!
//! Routes (JSON unless said; every one bounded):
//! - `GET /api/v1/audit/checkpoint`: the latest signed note (text/plain);
//! - `GET /api/v1/audit/entries?from=A&to=B`: entries `A..B` (at most 1,000) as the exact
//!   stored strings, whose SHA-256 are the tree's leaves;
//! - `GET /api/v1/audit/proof/inclusion?index=I`: entry `I`'s audit path in the latest
//!   checkpoint, with that checkpoint;
//! - `GET /api/v1/audit/proof/consistency?from=N`: the proof that the log of `N` entries is
//!   a prefix of the latest checkpoint's, with that checkpoint.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kwaainet_api::{AuditEvent, AuditHook};
use kwaainet_audit::store::AuditLog;
use kwaainet_audit::{Decision, Entry, Label, Op, Signer};
use kwaainet_p2p::libp2p::PeerId;
use kwaainet_p2p::libp2p::identity::Keypair;
use serde::Deserialize;
use serde_json::json;

/// The audit logs' folder beside the identity key: one log per node key, in a folder
/// named by its peer id (a new key starts a new log; the old one still verifies).
pub const AUDIT_DIR: &str = "audit";

/// The folder of the log of the node `peer` whose identity key is in `data_dir`.
pub fn dir_of(data_dir: &Path, peer: &PeerId) -> PathBuf {
    data_dir.join(AUDIT_DIR).join(peer.to_string())
}
/// Decisions waiting for the writer at most; more are dropped (and counted in the log's
/// warnings) rather than holding up the API.
const QUEUE: usize = 4096;
/// Entries written with one sync and one checkpoint at most.
const BATCH: usize = 256;
/// Entries one `entries` request returns at most.
const MAX_PAGE: u64 = 1000;
/// Entries `/api/v1/compliance` summarises at most (the latest).
const MAX_REPORT: u64 = 100_000;

/// The log's name for a node: its origin line and signing key name.
pub fn origin(peer: &PeerId) -> String {
    kwaainet_audit::node_origin(&peer.to_string())
}

/// Signs checkpoints with the node's libp2p Ed25519 key.
struct NodeKey(kwaainet_p2p::libp2p::identity::ed25519::Keypair);

impl NodeKey {
    fn new(key: &Keypair) -> anyhow::Result<Self> {
        Ok(Self(key.clone().try_into_ed25519().context(
            "the audit log is signed with an Ed25519 node key",
        )?))
    }
}

impl Signer for NodeKey {
    fn public_key(&self) -> [u8; 32] {
        self.0.public().to_bytes()
    }
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = self.0.sign(msg);
        let mut out = [0u8; 64];
        // An Ed25519 signature is 64 bytes.
        let n = sig.len().min(64);
        out[..n].copy_from_slice(&sig[..n]);
        out
    }
}

/// The public key inside an Ed25519 peer id.
pub(crate) fn public_key_of(peer: &PeerId) -> anyhow::Result<[u8; 32]> {
    Ok(kwaainet_p2p::did::ed25519_of_peer(peer)?.to_bytes())
}

enum Msg {
    /// An entry whose subject (if any) the writer commits to before writing it.
    Record(Option<String>, Entry),
    /// Forget a subject's salt once everything queued before is written (an erasure); the
    /// answer says whether there was one.
    Forget(String, SyncSender<Result<bool, String>>),
    Stop,
}

/// Queues entries for the audit log's writer.
#[derive(Clone)]
pub struct Recorder(SyncSender<Msg>);

impl Recorder {
    /// Queues entries about `subject` (committed to before they are written); false when
    /// the queue is full.
    pub fn record(&self, subject: &str, entries: Vec<Entry>) -> bool {
        entries.into_iter().all(|e| {
            self.0
                .try_send(Msg::Record(Some(subject.to_owned()), e))
                .is_ok()
        })
    }

    /// Forgets `subject`'s salt after every entry queued before this call is written, so
    /// none of them can bring it back; waits (bounded) for the writer. Whether there was one.
    pub fn forget(&self, subject: &str) -> anyhow::Result<bool> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.0
            .send(Msg::Forget(subject.to_owned(), tx))
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .context("the audit writer did not answer")?
            .map_err(anyhow::Error::msg)
    }

    /// Queues entries that name nobody.
    pub fn record_anonymous(&self, entries: Vec<Entry>) -> bool {
        entries
            .into_iter()
            .all(|e| self.0.try_send(Msg::Record(None, e)).is_ok())
    }
}

/// The node's open audit log and its writer.
pub struct NodeAudit {
    log: Arc<Mutex<AuditLog>>,
    tx: SyncSender<Msg>,
    writer: Option<std::thread::JoinHandle<()>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock(log: &Mutex<AuditLog>) -> MutexGuard<'_, AuditLog> {
    // A writer that panicked mid-append left the files as they were: keep going.
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The entry of an API decision (its subject is committed by the writer).
fn entry_of(ev: &AuditEvent, time_ms: u64) -> anyhow::Result<Entry> {
    let mut e = Entry::new(time_ms, if ev.allowed { Op::Process } else { Op::Policy });
    e.purpose = Some(Label::new("inference")?);
    e.decision = Some(if ev.allowed {
        Decision::Allow
    } else {
        Decision::Deny
    });
    e.reason = Some(Label::new(format!("{}:{}", ev.route, ev.reason))?);
    Ok(e)
}

fn write_loop(log: Arc<Mutex<AuditLog>>, rx: Receiver<Msg>) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut log = lock(&log);
        let mut entries = Vec::with_capacity(batch.len());
        let flush = |log: &mut AuditLog, entries: &mut Vec<Entry>| {
            if !entries.is_empty()
                && let Err(e) = log.append_all(entries)
            {
                tracing::error!(error = %e, "writing the audit log");
            }
            entries.clear();
        };
        for m in batch {
            match m {
                Msg::Record(subject, mut e) => match subject.map(|s| log.commit(&s)).transpose() {
                    Ok(c) => {
                        e.subject = c;
                        entries.push(e);
                    }
                    Err(err) => tracing::error!(error = %err, "audit entry"),
                },
                Msg::Forget(subject, reply) => {
                    flush(&mut log, &mut entries);
                    let _ = reply.send(log.forget(&subject).map_err(|e| e.to_string()));
                }
                Msg::Stop => stop = true,
            }
        }
        flush(&mut log, &mut entries);
    }
}

impl NodeAudit {
    /// Opens the log in `dir` for the node with `key` (refusing a tampered log) and starts
    /// its writer.
    pub fn open(dir: &Path, key: &Keypair) -> anyhow::Result<Self> {
        let origin = origin(&key.public().to_peer_id());
        let log = AuditLog::open(dir, origin, Box::new(NodeKey::new(key)?))
            .with_context(|| format!("opening the audit log in {}", dir.display()))?;
        let log = Arc::new(Mutex::new(log));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = {
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("audit-log".into())
                .spawn(move || write_loop(log, rx))
                .context("starting the audit writer")?
        };
        Ok(Self {
            log,
            tx,
            writer: Some(writer),
        })
    }

    /// The API's hook: decisions go to the writer without waiting.
    pub fn hook(&self) -> AuditHook {
        let recorder = self.recorder();
        AuditHook(Arc::new(move |ev| match entry_of(&ev, now_ms()) {
            Ok(e) => {
                if !recorder.record(&ev.client, vec![e]) {
                    tracing::warn!("audit queue full: a decision was not recorded");
                }
            }
            Err(e) => tracing::error!(error = %e, "audit entry"),
        }))
    }

    /// The open log (exports read it, erasures forget a subject's salt in it).
    pub fn log(&self) -> Arc<Mutex<AuditLog>> {
        Arc::clone(&self.log)
    }

    /// A handle that queues entries for the writer.
    pub fn recorder(&self) -> Recorder {
        Recorder(self.tx.clone())
    }

    /// Writes what is queued, then stops the writer (bounded: the queue is).
    pub fn close(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }

    /// The HTTP routes.
    pub fn router(&self, facts: Facts) -> Router {
        let compliance = {
            let log = Arc::clone(&self.log);
            move |q: Query<Span>| compliance(log, facts, q)
        };
        Router::new()
            .route("/api/v1/audit/checkpoint", get(checkpoint))
            .route("/api/v1/audit/entries", get(entries))
            .route("/api/v1/audit/proof/inclusion", get(inclusion))
            .route("/api/v1/audit/proof/consistency", get(consistency))
            .with_state(Arc::clone(&self.log))
            .route("/api/v1/compliance", get(compliance))
    }
}

type Shared = Arc<Mutex<AuditLog>>;

fn bad(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

async fn checkpoint(State(log): State<Shared>) -> Response {
    let note = lock(&log).checkpoint().1.to_owned();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response()
}

#[derive(Deserialize)]
struct Range {
    from: Option<u64>,
    to: Option<u64>,
}

async fn entries(State(log): State<Shared>, Query(q): Query<Range>) -> Response {
    let log = lock(&log);
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(u64::MAX).min(from.saturating_add(MAX_PAGE));
    match log.entries(from, to) {
        Ok(list) => {
            let list: Vec<String> = list
                .into_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect();
            axum::Json(json!({ "from": from, "size": log.len(), "entries": list })).into_response()
        }
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct Index {
    index: u64,
}

#[derive(Deserialize)]
struct Since {
    from: u64,
}

/// A proof as JSON, with the size and signed checkpoint it is against (taken under the
/// same lock, so they agree), or a 404 naming why no proof exists.
fn proof_answer(
    log: &AuditLog,
    key: &str,
    at: u64,
    proof: kwaainet_audit::Result<Vec<u8>>,
) -> Response {
    match proof {
        Ok(p) => axum::Json(json!({
            key: at,
            "size": log.len(),
            "proof": B64.encode(p),
            "checkpoint": log.checkpoint().1,
        }))
        .into_response(),
        Err(e) => bad(StatusCode::NOT_FOUND, e),
    }
}

async fn inclusion(State(log): State<Shared>, Query(q): Query<Index>) -> Response {
    let log = lock(&log);
    proof_answer(&log, "index", q.index, log.prove_inclusion(q.index))
}

async fn consistency(State(log): State<Shared>, Query(q): Query<Since>) -> Response {
    let log = lock(&log);
    proof_answer(&log, "from", q.from, log.prove_consistency(q.from))
}

#[derive(Deserialize)]
struct Span {
    from: Option<u64>,
    to: Option<u64>,
}

/// `/api/v1/compliance?from=MS&to=MS`: what the node declares (its region, the regions its
/// API may route to), its log (size, latest signed checkpoint) and the report of the
/// range (at most the latest 100,000 entries).
/// What the node declares, read at each request (the policy's live status changes).
pub type Facts = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

async fn compliance(log: Shared, facts: Facts, Query(q): Query<Span>) -> Response {
    let facts = facts();
    let log = lock(&log);
    let start = log.len().saturating_sub(MAX_REPORT);
    let lines = match log.entries(start, log.len()) {
        Ok(l) => l,
        Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let parsed = lines
        .iter()
        .zip(start..)
        .filter_map(|(b, i)| Entry::parse(i, b).ok().map(|e| (i, e)));
    let report =
        kwaainet_audit::report::summarize(parsed, q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    axum::Json(json!({
        "node": facts,
        "log": { "entries": log.len(), "summarised_from": start, "checkpoint": log.checkpoint().1 },
        "report": report,
    }))
    .into_response()
}
