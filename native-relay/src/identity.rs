//! Identities on the node: `kwaainet-identity`'s providers (an email token, passkeys, a key
//! held outside the browser) behind one set of routes, and the directory the data routes
//! ask for an identity's level. Progressive authentication: a page's identity (its did:key,
//! level `anonymous`) links credentials at its own signed request and its level is the
//! highest it linked; its did:key never changes, so what it owns stays its own.
//!
//! Routes (JSON, 60 requests a minute per address (bursts of 24); `{kind}` is `email`,
//! `passkey` or `did`):
//! - `POST /api/v1/identity/{kind}/link/options`: a signed request (action `link_{kind}`,
//!   `kwaainet_p2p::request`; params `{ address }` for email, `{ did }` for did) → what
//!   the client answers (passkey options, a message to sign; email sends a token);
//! - `POST /api/v1/identity/{kind}/link`: the answer (`{ token }`, the browser's passkey
//!   fields, `{ challenge, signature }`) → `{ subject, level, permissions, statement }`,
//!   the node's signed link statement;
//! - `POST /api/v1/identity/{kind}/signin/options`: `{ did }` for did, `{}` for passkey;
//! - `POST /api/v1/identity/{kind}/signin`: the answer, and optionally `device`, the signed
//!   request (action `sign_in`) of the page signing in → `{ subject, level, permissions }`;
//!   with `device`, that page's key is linked (`key:did:key:…`) and acts for the identity;
//! - `POST /api/v1/identity/status`: a signed request (action `identity_status`) →
//!   `{ subject, level, permissions, links, next }`.
//!
//! Link statements are also stored as blobs the identity owns, so its export carries them
//! and its erasure removes them. Identities are kept in `identity/<peer id>/identities.json`
//! beside the node's key (0600); email tokens go to the outbox folder (`outbox/`, one
//! `.eml` file per message) unless `--email-outbox` names another.

use std::collections::{BTreeMap, HashMap};
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
use kwaainet_api::guard::{Client, RateLimit};
use kwaainet_audit::{Decision, Entry, Label, Op};
use kwaainet_identity::did::DidProvider;
use kwaainet_identity::email::{EmailProvider, FileOutbox};
use kwaainet_identity::passkey::PasskeyProvider;
use kwaainet_identity::webauthn::{Credential, RelyingParty};
use kwaainet_identity::{
    IdError, IdentityProvider, Intent, Level, Link, LinkStatement, Proof, Registry, level_of,
};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::request::SignedRequest;
use kwaainet_storage::{Acl, StorageProvider as _};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{Recorder, now_ms};
use crate::data::{Failure, NodeData};

/// The folder beside the identity key.
pub const IDENTITY_DIR: &str = "identity";
const MAX_BODY: usize = 64 << 10;
/// Credentials one identity may link (passkeys, addresses, keys, devices together).
const MAX_LINKS: usize = 32;

/// The folder of the node `peer`'s identities.
pub fn dir_of(data_dir: &Path, peer: &kwaainet_p2p::libp2p::PeerId) -> PathBuf {
    data_dir.join(IDENTITY_DIR).join(peer.to_string())
}

/// Who acts for whom and at which level: what the data routes ask. Filled by
/// [`Identities`]; an identity it does not know is `anonymous` and acts for itself.
#[derive(Default)]
pub struct Directory {
    levels: Mutex<HashMap<String, Level>>,
    devices: Mutex<HashMap<String, String>>,
    forget: std::sync::OnceLock<Forget>,
}

/// What an erasure calls to drop an identity's record.
type Forget = Box<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// The level of `subject`.
    pub fn level(&self, subject: &str) -> Level {
        lock(&self.levels)
            .get(subject)
            .copied()
            .unwrap_or(Level::Anonymous)
    }

    /// The identity a signer acts for: the one its key was linked to when it signed in,
    /// else itself.
    pub fn acting_for(&self, signer: &str) -> String {
        lock(&self.devices)
            .get(signer)
            .cloned()
            .unwrap_or_else(|| signer.to_owned())
    }

    /// Forgets `subject` (its erasure): its links, its devices, its level.
    pub fn forget(&self, subject: &str) {
        lock(&self.levels).remove(subject);
        lock(&self.devices).retain(|_, s| s != subject);
        if let Some(f) = self.forget.get() {
            f(subject);
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    passkeys: Vec<Credential>,
    links: Vec<LinkStatement>,
    /// The links, parsed (not stored: derived from `links`).
    #[serde(skip)]
    parsed: Vec<Link>,
}

#[derive(Debug, Default)]
struct Records(BTreeMap<String, Record>);

impl Registry for Records {
    fn subject_of(&self, credential: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(_, r)| r.parsed.iter().any(|l| l.credential == credential))
            .map(|(s, _)| s.clone())
    }

    fn passkey(&mut self, id: &str) -> Option<&mut Credential> {
        self.0
            .values_mut()
            .find_map(|r| r.passkeys.iter_mut().find(|p| p.id == id))
    }
}

/// The node's identity service.
pub struct Identities {
    did: String,
    key: Keypair,
    file: PathBuf,
    providers: Vec<Box<dyn IdentityProvider>>,
    records: Mutex<Records>,
    directory: Arc<Directory>,
    data: Arc<NodeData>,
    recorder: Recorder,
    limits: RateLimit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn failure(e: IdError) -> Failure {
    let status = match &e {
        IdError::Malformed(_) | IdError::Unsupported(_) => StatusCode::BAD_REQUEST,
        IdError::Rejected(_) => StatusCode::FORBIDDEN,
        IdError::Unknown(_) => StatusCode::NOT_FOUND,
        IdError::Conflict(_) => StatusCode::CONFLICT,
        IdError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        IdError::Delivery(_) => StatusCode::BAD_GATEWAY,
    };
    Failure::new(status, e.to_string())
}

fn resolve_did(did: &str) -> Option<[u8; 32]> {
    kwaainet_p2p::did::to_ed25519(did)
        .ok()
        .map(|k| k.to_bytes())
}

/// Where passkeys are accepted and where email tokens go.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The WebAuthn RP ID.
    pub rp_id: String,
    /// The page origins passkeys are made on.
    pub origins: Vec<String>,
    /// The outbox folder (default: `outbox/` in the identities' folder).
    pub outbox: Option<PathBuf>,
}

impl Identities {
    /// Opens the identities in `dir`.
    pub fn open(
        dir: &Path,
        key: &Keypair,
        settings: Settings,
        data: Arc<NodeData>,
        recorder: Recorder,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("identities.json");
        let mut records: BTreeMap<String, Record> = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).context("reading identities.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).context("reading identities.json"),
        };
        let did = kwaainet_p2p::did::from_peer_id(&key.public().to_peer_id())?;
        let outbox_dir = settings.outbox.unwrap_or_else(|| dir.join("outbox"));
        let outbox = FileOutbox::open(
            &outbox_dir,
            format!(
                "KwaaiNet node <{}@kwaainet.invalid>",
                key.public().to_peer_id()
            ),
        )
        .with_context(|| format!("opening the email outbox {}", outbox_dir.display()))?;
        let providers: Vec<Box<dyn IdentityProvider>> = vec![
            Box::new(EmailProvider::new(did.clone(), Box::new(outbox))),
            Box::new(PasskeyProvider::new(RelyingParty {
                id: settings.rp_id,
                name: "KwaaiNet".into(),
                origins: settings.origins,
                require_user_verification: true,
            })),
            Box::new(DidProvider::new(did.clone(), resolve_did)),
        ];
        let node_key = kwaainet_p2p::did::ed25519_of_peer(&key.public().to_peer_id())?;
        let node_key = ed25519_dalek::VerifyingKey::from_bytes(&node_key.to_bytes())
            .context("the node key")?;
        // Only links this node signed, that a provider (or a device sign-in) makes, for the
        // record they sit in, count.
        let valid = |subject: &str, l: &Link| {
            l.subject == subject
                && (l.credential.starts_with("key:did:key:")
                    || providers.iter().any(|p| p.verify(l).is_ok()))
        };
        let directory = data.directory();
        for (subject, r) in &mut records {
            r.parsed = r
                .links
                .iter()
                .filter_map(|s| s.verify(&node_key).ok())
                .filter(|l| valid(subject, l))
                .collect();
        }
        let ids = Arc::new(Self {
            did,
            key: key.clone(),
            file,
            providers,
            records: Mutex::new(Records(records)),
            directory: Arc::clone(&directory),
            data,
            recorder,
            limits: RateLimit::new(60, 24),
        });
        for (subject, r) in &lock(&ids.records).0 {
            ids.publish(subject, r);
        }
        let weak = Arc::downgrade(&ids);
        let _ = directory.forget.set(Box::new(move |subject| {
            if let Some(ids) = weak.upgrade() {
                ids.erase(subject);
            }
        }));
        Ok(ids)
    }

    /// Tells the directory an identity's level and devices.
    fn publish(&self, subject: &str, r: &Record) {
        lock(&self.directory.levels).insert(subject.to_owned(), level_of(&r.parsed));
        let mut devices = lock(&self.directory.devices);
        for l in &r.parsed {
            if let Some(device) = l.credential.strip_prefix("key:") {
                devices.insert(device.to_owned(), subject.to_owned());
            }
        }
    }

    fn erase(&self, subject: &str) {
        let mut records = lock(&self.records);
        // The erasure itself is logged anonymously by the data service.
        if records.0.remove(subject).is_some()
            && let Err(e) = self.save(&records.0)
        {
            tracing::warn!("saving identities after an erasure: {e:?}");
        }
    }

    fn provider(&self, kind: &str) -> Result<&dyn IdentityProvider, Failure> {
        self.providers
            .iter()
            .find(|p| p.kind() == kind)
            .map(AsRef::as_ref)
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::NOT_FOUND,
                    format!("no identity provider {kind:?}"),
                )
            })
    }

    fn save(&self, records: &BTreeMap<String, Record>) -> Result<(), Failure> {
        let bytes = serde_json::to_vec(records).map_err(|e| Failure::internal(e.into()))?;
        crate::data::write_private(&self.file, &bytes).map_err(|e| Failure::internal(e.into()))
    }

    fn audit(&self, subject: &str, op: Op, allowed: bool, reason: &str) {
        let mut e = Entry::new(now_ms(), op);
        e.purpose = Label::new("identity").ok();
        e.decision = Some(if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        });
        e.reason = Label::new(reason).ok();
        if !self.recorder.record(subject, vec![e]) {
            tracing::warn!("audit queue full: an identity event was not recorded");
        }
    }

    fn answer(subject: &str, r: Option<&Record>) -> serde_json::Value {
        let level = level_of(r.map(|r| r.parsed.as_slice()).unwrap_or_default());
        json!({ "subject": subject, "level": level, "permissions": level.permissions() })
    }

    /// Verifies a signed request for `action`; its subject (the identity the signer acts
    /// for) and the request's text.
    fn signed(&self, body: &[u8], action: &str) -> Result<(String, String), Failure> {
        let signed: SignedRequest = serde_json::from_slice(body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("not a signed request: {e}"),
            )
        })?;
        self.verify(&signed, action)
    }

    fn verify(&self, signed: &SignedRequest, action: &str) -> Result<(String, String), Failure> {
        let r = self.data.verify_request(signed)?;
        if r.action != action {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                format!("the request's action must be {action}"),
            ));
        }
        Ok((r.subject, signed.request.clone()))
    }

    fn params(body: &[u8]) -> Result<serde_json::Value, Failure> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("not JSON: {e}")))
    }

    /// `{ request, signature }` (the signed request), and for email the `address`, which the
    /// signed request names only by its hash (so the link statement carries no address).
    fn link_options(&self, kind: &str, body: &[u8]) -> Result<serde_json::Value, Failure> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ask {
            request: String,
            signature: String,
            #[serde(default)]
            address: Option<String>,
        }
        let p = self.provider(kind)?;
        let ask: Ask = serde_json::from_slice(body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("not a signed request: {e}"),
            )
        })?;
        let signed = SignedRequest {
            request: ask.request,
            signature: ask.signature,
        };
        let (subject, request) = self.verify(&signed, &format!("link_{kind}"))?;
        let count = lock(&self.records)
            .0
            .get(&subject)
            .map_or(0, |r| r.parsed.len());
        if count >= MAX_LINKS {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                format!("at most {MAX_LINKS} credentials per identity"),
            ));
        }
        let mut params = serde_json::from_str::<kwaainet_p2p::request::DataRequest>(&request)
            .map(|r| r.params)
            .unwrap_or_default();
        if let (Some(address), Some(p)) = (ask.address, params.as_object_mut()) {
            p.insert("address".into(), address.into());
        }
        let out = p
            .begin(
                Intent::Link {
                    subject: subject.clone(),
                    request,
                },
                &params,
                now_ms(),
            )
            .map_err(failure);
        if kind == "email" {
            self.audit(&subject, Op::Store, out.is_ok(), "email_token_sent");
        }
        out
    }

    fn link_statement(&self, link: &Link) -> Result<LinkStatement, Failure> {
        LinkStatement::sign(link, |b| self.key.sign(b).unwrap_or_default())
            .map_err(|e| Failure::internal(e.into()))
    }

    /// Records a proven link; the answer with its statement.
    async fn record_link(&self, proof: Proof) -> Result<serde_json::Value, Failure> {
        let link = Link {
            v: 1,
            node: self.did.clone(),
            subject: proof.subject.clone(),
            credential: proof.credential,
            level: proof.level,
            at_ms: now_ms(),
            request: proof.request,
        };
        let statement = self.link_statement(&link)?;
        let out = {
            let mut records = lock(&self.records);
            let record = records.0.entry(proof.subject.clone()).or_default();
            if !record
                .parsed
                .iter()
                .any(|l| l.credential == link.credential)
            {
                record.links.push(statement.clone());
                record.parsed.push(link.clone());
                record.passkeys.extend(proof.passkey);
            }
            let out = Self::answer(&proof.subject, Some(record));
            let record = record.clone();
            self.save(&records.0)?;
            self.publish(&proof.subject, &record);
            out
        };
        // The identity's own copy: in its export, gone with its erasure.
        let bytes = serde_json::to_vec(&statement).map_err(|e| Failure::internal(e.into()))?;
        if let Err(e) = self
            .data
            .local()
            .store(bytes, &Acl::private(&proof.subject))
            .await
        {
            tracing::warn!("keeping a link statement for its subject: {e}");
        }
        let reason = match link.level {
            Level::Anonymous => "device_link",
            Level::Email => "email_link",
            Level::Passkey => "passkey_link",
            Level::Did => "did_link",
        };
        self.audit(&proof.subject, Op::Store, true, reason);
        let mut out = out;
        out["statement"] = serde_json::to_value(statement).unwrap_or_default();
        Ok(out)
    }

    async fn link(&self, kind: &str, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let p = self.provider(kind)?;
        let answer = Self::params(body)?;
        let proof = {
            let mut records = lock(&self.records);
            p.authenticate(&answer, &mut *records, now_ms())
        };
        let proof = match proof {
            Ok(proof) if proof.is_link() => proof,
            Ok(_) => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "this answer is a sign-in: post it to signin",
                ));
            }
            Err(e) => {
                tracing::info!("refused a {kind} link: {e}");
                return Err(failure(e));
            }
        };
        self.record_link(proof).await
    }

    fn signin_options(&self, kind: &str, body: &[u8]) -> Result<serde_json::Value, Failure> {
        self.provider(kind)?
            .begin(Intent::SignIn, &Self::params(body)?, now_ms())
            .map_err(failure)
    }

    async fn signin(&self, kind: &str, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let p = self.provider(kind)?;
        let answer = Self::params(body)?;
        // The page signing in, checked before the ceremony is spent.
        let device = match answer.get("device") {
            Some(d) => {
                let text = serde_json::to_vec(d).map_err(|e| Failure::internal(e.into()))?;
                Some(self.signed(&text, "sign_in")?)
            }
            None => None,
        };
        let proof = {
            let mut records = lock(&self.records);
            let proof = p.authenticate(&answer, &mut *records, now_ms());
            if proof.is_ok() {
                self.save(&records.0)?; // the passkey's counter
            }
            proof
        };
        let proof = match proof {
            Ok(proof) if !proof.is_link() => proof,
            Ok(_) => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "this answer is a link: post it to link",
                ));
            }
            Err(e) => {
                if let IdError::Rejected(_) = e {
                    let mut entry = Entry::new(now_ms(), Op::Read);
                    entry.purpose = Label::new("identity").ok();
                    entry.decision = Some(Decision::Deny);
                    entry.reason = Label::new(format!("{kind}_signin")).ok();
                    let _ = self.recorder.record_anonymous(vec![entry]);
                }
                return Err(failure(e));
            }
        };
        self.audit(&proof.subject, Op::Read, true, &format!("{kind}_signin"));
        let Some((signer, request)) = device else {
            let records = lock(&self.records);
            return Ok(Self::answer(&proof.subject, records.0.get(&proof.subject)));
        };
        if signer == proof.subject {
            let records = lock(&self.records);
            return Ok(Self::answer(&proof.subject, records.0.get(&proof.subject)));
        }
        if lock(&self.records).0.contains_key(&signer) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "this page's key is an identity of its own: sign in from a fresh page identity",
            ));
        }
        self.record_link(Proof {
            subject: proof.subject,
            credential: format!("key:{signer}"),
            level: Level::Anonymous,
            request,
            passkey: None,
        })
        .await
    }

    fn status(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let (subject, _) = self.signed(body, "identity_status")?;
        let records = lock(&self.records);
        let r = records.0.get(&subject);
        let mut out = Self::answer(&subject, r);
        out["links"] = serde_json::to_value(r.map(|r| r.links.clone()).unwrap_or_default())
            .unwrap_or_default();
        let level = level_of(r.map(|r| r.parsed.as_slice()).unwrap_or_default());
        out["next"] = json!(self
            .providers
            .iter()
            .filter(|p| p.level() > level)
            .map(|p| json!({ "kind": p.kind(), "level": p.level(), "permissions": p.permissions() }))
            .collect::<Vec<_>>());
        Ok(out)
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/identity/status", post(route))
            .route("/api/v1/identity/{kind}/link/options", post(route))
            .route("/api/v1/identity/{kind}/link", post(route))
            .route("/api/v1/identity/{kind}/signin/options", post(route))
            .route("/api/v1/identity/{kind}/signin", post(route))
            .with_state(Arc::clone(self))
    }
}

async fn route(State(ids): State<Arc<Identities>>, req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.ip());
    let path = req.uri().path().to_owned();
    if ids.limits.take(Client::Addr(addr)).is_err() {
        return Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many identity requests: slow down",
        )
        .into_response();
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_BODY).await else {
        return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB").into_response();
    };
    let rest = path.strip_prefix("/api/v1/identity/").unwrap_or_default();
    let out = match rest.split_once('/') {
        None if rest == "status" => ids.status(&body),
        Some((kind, "link/options")) => ids.link_options(kind, &body),
        Some((kind, "link")) => ids.link(kind, &body).await,
        Some((kind, "signin/options")) => ids.signin_options(kind, &body),
        Some((kind, "signin")) => ids.signin(kind, &body).await,
        _ => Err(Failure::new(StatusCode::NOT_FOUND, "no such route")),
    };
    match out {
        Ok(v) => axum::Json(v).into_response(),
        Err(f) => f.into_response(),
    }
}
