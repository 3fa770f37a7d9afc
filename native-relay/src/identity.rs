//! Passkeys on the node (`kwaainet-identity`'s WebAuthn relying party): a page's identity
//! (its did:key) links a passkey at its own signed request, and later signs in with it from
//! any browser, getting its identity back: progressive authentication from anonymous to
//! passkey without moving its data (what it owns stays under the same did:key).
//!
//! Routes (JSON, 30 requests a minute per address (bursts of 12), challenges single-use
//! and valid 2 minutes, at most 1,000 pending):
//! - `POST /api/v1/identity/passkey/register/options`: a signed request (action
//!   `passkey_register`, `kwaainet_p2p::request`) → `navigator.credentials.create` options;
//! - `POST /api/v1/identity/passkey/register`: `{ id, clientDataJSON, attestationObject }`
//!   (base64url) → `{ subject, level, permissions, statement }`, the node's signed link;
//! - `POST /api/v1/identity/passkey/login/options` → `navigator.credentials.get` options;
//! - `POST /api/v1/identity/passkey/login`: `{ id, clientDataJSON, authenticatorData,
//!   signature }` → `{ subject, level, permissions }`.
//!
//! Identities are kept in `identity/<peer id>/identities.json` beside the node's key (0600).

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
use kwaainet_identity::webauthn::{Credential, RelyingParty, from_b64url};
use kwaainet_identity::{Level, Link, LinkStatement, level_of};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_p2p::request::SignedRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{Recorder, now_ms};
use crate::data::{Failure, NodeData};

/// The folder beside the identity key.
pub const IDENTITY_DIR: &str = "identity";
const CHALLENGE_MS: u64 = 2 * 60 * 1000;
const MAX_PENDING: usize = 1000;
const MAX_BODY: usize = 64 << 10;
/// Passkeys one identity may link.
const MAX_PASSKEYS: usize = 16;

/// The folder of the node `peer`'s identities.
pub fn dir_of(data_dir: &Path, peer: &kwaainet_p2p::libp2p::PeerId) -> PathBuf {
    data_dir.join(IDENTITY_DIR).join(peer.to_string())
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    passkeys: Vec<Credential>,
    links: Vec<LinkStatement>,
    /// The links, parsed (not stored: derived from `links`).
    #[serde(skip)]
    parsed: Vec<Link>,
}

enum Pending {
    /// A registration for this subject, asked by this signed request (its text).
    Register {
        subject: String,
        request: String,
    },
    Login,
}

/// The node's identity service.
pub struct Identities {
    rp: RelyingParty,
    did: String,
    key: Keypair,
    file: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
    pending: Mutex<HashMap<Vec<u8>, (Pending, u64)>>,
    data: Arc<NodeData>,
    recorder: Recorder,
    limits: RateLimit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Identities {
    /// Opens the identities in `dir`; passkeys are for pages on `origins` under RP ID `rp_id`.
    pub fn open(
        dir: &Path,
        key: &Keypair,
        rp_id: String,
        origins: Vec<String>,
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
        let node_key = kwaainet_p2p::did::ed25519_of_peer(&key.public().to_peer_id())?;
        let node_key = ed25519_dalek::VerifyingKey::from_bytes(&node_key.to_bytes())
            .context("the node key")?;
        for r in records.values_mut() {
            r.parsed = r
                .links
                .iter()
                .filter_map(|s| s.verify(&node_key).ok())
                .collect();
        }
        Ok(Arc::new(Self {
            rp: RelyingParty {
                id: rp_id,
                name: "KwaaiNet".into(),
                origins,
                require_user_verification: true,
            },
            did: kwaainet_p2p::did::from_peer_id(&key.public().to_peer_id())?,
            key: key.clone(),
            file,
            records: Mutex::new(records),
            pending: Mutex::new(HashMap::new()),
            data,
            recorder,
            limits: RateLimit::new(30, 12),
        }))
    }

    fn challenge(&self, what: Pending) -> Result<Vec<u8>, Failure> {
        let mut c = vec![0u8; 32];
        getrandom::fill(&mut c)
            .map_err(|e| Failure::internal(anyhow::anyhow!("no entropy: {e}")))?;
        let now = now_ms();
        let mut pending = lock(&self.pending);
        pending.retain(|_, (_, at)| now.saturating_sub(*at) <= CHALLENGE_MS);
        if pending.len() >= MAX_PENDING {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many passkey ceremonies in progress",
            ));
        }
        pending.insert(c.clone(), (what, now));
        Ok(c)
    }

    /// The pending ceremony whose challenge the client data names (taken: single use).
    fn take(&self, client_data: &[u8]) -> Result<(Vec<u8>, Pending), Failure> {
        #[derive(Deserialize)]
        struct C {
            challenge: String,
        }
        let c: C = serde_json::from_slice(client_data)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("clientDataJSON: {e}")))?;
        let challenge = from_b64url(&c.challenge, "challenge")
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let (what, at) = lock(&self.pending)
            .remove(&challenge)
            .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "unknown or used challenge"))?;
        if now_ms().saturating_sub(at) > CHALLENGE_MS {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "the challenge expired",
            ));
        }
        Ok((challenge, what))
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

    fn answer(subject: &str, r: &Record) -> serde_json::Value {
        let level = level_of(&r.parsed);
        json!({ "subject": subject, "level": level, "permissions": level.permissions() })
    }

    async fn register_options(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        let signed: SignedRequest = serde_json::from_slice(body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("not a signed request: {e}"),
            )
        })?;
        let r = self.data.verify_request(&signed)?;
        if r.action != "passkey_register" {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "the request's action must be passkey_register",
            ));
        }
        let known = lock(&self.records)
            .get(&r.subject)
            .map_or(0, |x| x.passkeys.len());
        if known >= MAX_PASSKEYS {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                format!("at most {MAX_PASSKEYS} passkeys per identity"),
            ));
        }
        let challenge = self.challenge(Pending::Register {
            subject: r.subject.clone(),
            request: signed.request.clone(),
        })?;
        let short: String = r.subject.chars().skip(8).take(12).collect();
        Ok(self.rp.registration_options(
            r.subject.as_bytes(),
            &format!("KwaaiNet {short}"),
            &challenge,
        ))
    }

    async fn register(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(rename = "clientDataJSON")]
            client_data_json: String,
            attestation_object: String,
        }
        let a: Answer = serde_json::from_slice(body)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let bad = |e: kwaainet_identity::webauthn::WebAuthnError| {
            Failure::new(StatusCode::BAD_REQUEST, e.to_string())
        };
        let client = from_b64url(&a.client_data_json, "clientDataJSON").map_err(bad)?;
        let att = from_b64url(&a.attestation_object, "attestationObject").map_err(bad)?;
        let (challenge, what) = self.take(&client)?;
        let Pending::Register { subject, request } = what else {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "this challenge was issued for a login",
            ));
        };
        let cred = match self.rp.verify_registration(&client, &att, &challenge) {
            Ok(c) => c,
            Err(e) => {
                self.audit(&subject, Op::Store, false, "passkey_register");
                return Err(Failure::new(StatusCode::FORBIDDEN, e.to_string()));
            }
        };
        let mut records = lock(&self.records);
        if records
            .values()
            .any(|r| r.passkeys.iter().any(|p| p.id == cred.id))
        {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "this passkey is already linked",
            ));
        }
        let link = Link {
            v: 1,
            node: self.did.clone(),
            subject: subject.clone(),
            credential: format!("passkey:{}", cred.id),
            level: Level::Passkey,
            at_ms: now_ms(),
            request,
        };
        let statement = LinkStatement::sign(&link, |b| self.key.sign(b).unwrap_or_default())
            .map_err(|e| Failure::internal(e.into()))?;
        let record = records.entry(subject.clone()).or_default();
        record.passkeys.push(cred);
        record.links.push(statement.clone());
        record.parsed.push(link);
        let mut out = Self::answer(&subject, record);
        self.save(&records)?;
        drop(records);
        self.audit(&subject, Op::Store, true, "passkey_register");
        out["statement"] = serde_json::to_value(statement).unwrap_or_default();
        Ok(out)
    }

    async fn login_options(&self) -> Result<serde_json::Value, Failure> {
        let challenge = self.challenge(Pending::Login)?;
        Ok(self.rp.login_options(&challenge))
    }

    async fn login(&self, body: &[u8]) -> Result<serde_json::Value, Failure> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            id: String,
            #[serde(rename = "clientDataJSON")]
            client_data_json: String,
            authenticator_data: String,
            signature: String,
        }
        let a: Answer = serde_json::from_slice(body)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let bad = |e: kwaainet_identity::webauthn::WebAuthnError| {
            Failure::new(StatusCode::BAD_REQUEST, e.to_string())
        };
        let client = from_b64url(&a.client_data_json, "clientDataJSON").map_err(bad)?;
        let auth = from_b64url(&a.authenticator_data, "authenticatorData").map_err(bad)?;
        let sig = from_b64url(&a.signature, "signature").map_err(bad)?;
        let (challenge, what) = self.take(&client)?;
        if !matches!(what, Pending::Login) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "this challenge was issued for a registration",
            ));
        }
        let mut records = lock(&self.records);
        let found = records.iter_mut().find_map(|(s, r)| {
            r.passkeys
                .iter_mut()
                .find(|p| p.id == a.id)
                .map(|p| (s.clone(), p))
        });
        let Some((subject, cred)) = found else {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "no identity has this passkey",
            ));
        };
        match self.rp.verify_login(cred, &client, &auth, &sig, &challenge) {
            Ok(count) => cred.sign_count = count,
            Err(e) => {
                drop(records);
                self.audit(&subject, Op::Read, false, "passkey_login");
                return Err(Failure::new(StatusCode::FORBIDDEN, e.to_string()));
            }
        }
        let out = records
            .get(&subject)
            .map(|r| Self::answer(&subject, r))
            .unwrap_or_default();
        self.save(&records)?;
        drop(records);
        self.audit(&subject, Op::Read, true, "passkey_login");
        Ok(out)
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/identity/passkey/register/options", post(route))
            .route("/api/v1/identity/passkey/register", post(route))
            .route("/api/v1/identity/passkey/login/options", post(route))
            .route("/api/v1/identity/passkey/login", post(route))
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
            "too many passkey requests: slow down",
        )
        .into_response();
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_BODY).await else {
        return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB").into_response();
    };
    let out = match path.rsplit_once("/passkey/").map(|(_, p)| p) {
        Some("register/options") => ids.register_options(&body).await,
        Some("register") => ids.register(&body).await,
        Some("login/options") => ids.login_options().await,
        Some("login") => ids.login(&body).await,
        _ => Err(Failure::new(StatusCode::NOT_FOUND, "no such route")),
    };
    match out {
        Ok(v) => axum::Json(v).into_response(),
        Err(f) => f.into_response(),
    }
}
