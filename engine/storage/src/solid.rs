//! The Solid backend: blobs in a container of the user's Solid pod, reached over HTTP(S) as
//! an authenticated Solid client.
//!
//! Layout: `<pod><container>` (by default `<pod>kwaainet/`) holds, per blob, `<cid>` (its
//! bytes, `application/octet-stream`) and `<cid>.meta.json` (its [`Acl`] and size; not
//! `<cid>.acl`, which is the pod's own access-control resource). The pod's access control
//! decides who reaches the container at all (a pod created by its server's account API is
//! private to its owner's WebID); the blob's [`Acl`] then applies exactly as in every other
//! backend, through the shared rules ([`check_store`], [`admit`], [`owned_by`]).
//!
//! Authentication is Solid-OIDC with client credentials and DPoP, as the Community Solid
//! Server documents it: the account's client id and secret (HTTP Basic) are exchanged at the
//! issuer's token endpoint (`grant_type=client_credentials&scope=webid`) for an access token
//! bound to a P-256 key generated for this client; every request then carries
//! `Authorization: DPoP <token>` and a fresh ES256 proof of that key for its method and URL
//! (with `ath`, the token's hash). The token is renewed before it expires, and once more on a
//! 401.
//!
//! HTTP: `ureq` 3, blocking, run on tokio's blocking pool. It is already in the workspace's
//! lock (with rustls and ring, which the workspace builds anyway), it is small (no async
//! runtime of its own, no hyper/tower stack to configure for a client), and a bounded read
//! and a global timeout are one call each. Every call has the configured timeout, every body
//! read a limit (the blob limit, 64 KiB for metadata and tokens, [`MAX_LISTING`] for the
//! container's listing); redirects are not followed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    Access, Acl, Cid, Deleted, Error, Limits, Result, StorageProvider, admit, check_store, owned_by,
};

/// Largest container listing read (JSON-LD, about 200 bytes per resource).
pub const MAX_LISTING: u64 = 16 << 20;
/// Largest metadata resource, token or discovery document read.
const MAX_SMALL: u64 = 64 << 10;
/// The LDP containment predicate, as a JSON-LD listing spells it.
const LDP_CONTAINS: &str = "http://www.w3.org/ns/ldp#contains";
const META_SUFFIX: &str = ".meta.json";

/// Where the pod is and how to sign in to it.
#[derive(Clone)]
pub struct SolidConfig {
    /// The pod's root URL (`https://pod.example/alice/`), ending with `/`.
    pub pod: String,
    /// The OIDC issuer that knows the client (the Community Solid Server's root URL).
    pub issuer: String,
    /// Client credentials: the id…
    pub client_id: String,
    /// …and the secret.
    pub client_secret: String,
    /// The container for the blobs, relative to the pod, ending with `/`.
    pub container: String,
    /// What the store accepts.
    pub limits: Limits,
    /// The limit on every HTTP call (connection, request and response).
    pub timeout: Duration,
}

impl SolidConfig {
    /// A pod, its issuer and client credentials, with the default container (`kwaainet/`),
    /// limits and a 30-second timeout.
    pub fn new(
        pod: impl Into<String>,
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            pod: pod.into(),
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            container: "kwaainet/".into(),
            limits: Limits::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for SolidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolidConfig")
            .field("pod", &self.pod)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("container", &self.container)
            .field("limits", &self.limits)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An HTTP answer: its status and its body (read within a limit).
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An access token and when to renew it.
struct Token {
    value: String,
    renew_at: Instant,
}

/// A Solid client authenticated by client credentials and DPoP (blocking calls).
pub struct SolidClient {
    agent: ureq::Agent,
    issuer: String,
    client_id: String,
    client_secret: String,
    key: p256::ecdsa::SigningKey,
    /// The key's public JWK, as it goes in every proof's header.
    jwk: serde_json::Value,
    token_endpoint: Mutex<Option<String>>,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for SolidClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolidClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn check_url(what: &str, url: &str) -> Result<()> {
    if (url.starts_with("http://") || url.starts_with("https://"))
        && url.ends_with('/')
        && !url.contains(['?', '#', ' '])
    {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} {url:?}: an http(s) URL ending with '/', without query or fragment"
        )))
    }
}

/// `application/x-www-form-urlencoded` of one value (what the client credentials are before
/// they go into HTTP Basic, RFC 6749 §2.3.1).
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn network(e: impl std::fmt::Display) -> Error {
    Error::Network(format!("solid pod: {e}"))
}

/// An error for an answer the caller did not expect, with the start of its body.
fn unexpected(what: &str, url: &str, reply: &Reply) -> Error {
    let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).into_owned();
    match reply.status {
        401 | 403 => network(format!(
            "{what} {url}: refused (HTTP {}): the credentials do not give access: {body}",
            reply.status
        )),
        s => network(format!("{what} {url}: HTTP {s}: {body}")),
    }
}

impl SolidClient {
    /// A client for `issuer` with these credentials and a fresh DPoP key. Nothing is sent
    /// before the first request.
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
    ) -> Result<Self> {
        check_url("issuer", issuer)?;
        let key = loop {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut_slice())
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            // A seed that is zero or above the curve order (about 2^-128): draw again.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(seed.as_slice()) {
                break key;
            }
        };
        let point = key.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(Error::Invalid("P-256 key without coordinates".into()));
        };
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            // The pod is named by the user: reached directly, never through a proxy from the
            // environment.
            .proxy(None)
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            key,
            jwk,
            token_endpoint: Mutex::new(None),
            token: Mutex::new(None),
        })
    }

    /// A DPoP proof (RFC 9449) for `method` on `url`, bound to `token` when there is one.
    fn proof(&self, method: &str, url: &str, token: Option<&str>) -> Result<String> {
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({ "alg": "ES256", "typ": "dpop+jwt", "jwk": self.jwk });
        let mut claims = serde_json::json!({
            "htu": url,
            "htm": method,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": iat,
        });
        if let Some(token) = token {
            claims["ath"] = URL_SAFE_NO_PAD
                .encode(Sha256::digest(token.as_bytes()))
                .into();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// One HTTP exchange, its body read up to `limit` bytes.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        limit: u64,
    ) -> Result<Reply> {
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = match body {
            Some(body) => self.agent.run(
                request
                    .body(body)
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            ),
            None => self.agent.run(
                request
                    .body(())
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            ),
        };
        let mut response = response.map_err(|e| network(format!("{method} {url}: {e}")))?;
        let status = response.status().as_u16();
        let body = match response.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(body) => body,
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                return Err(network(format!(
                    "{method} {url}: the answer is over {limit} bytes"
                )));
            }
            Err(e) => return Err(network(format!("{method} {url}: {e}"))),
        };
        Ok(Reply { status, body })
    }

    /// The issuer's token endpoint, from its OpenID configuration (once).
    fn token_endpoint(&self) -> Result<String> {
        if let Some(url) = lock(&self.token_endpoint).clone() {
            return Ok(url);
        }
        let url = format!("{}.well-known/openid-configuration", self.issuer);
        let reply = self.send(
            "GET",
            &url,
            &[("accept", "application/json")],
            None,
            MAX_SMALL,
        )?;
        if !reply.ok() {
            return Err(unexpected("discovery", &url, &reply));
        }
        #[derive(Deserialize)]
        struct Discovery {
            token_endpoint: String,
        }
        let endpoint = serde_json::from_slice::<Discovery>(&reply.body)
            .map_err(|e| network(format!("{url}: {e}")))?
            .token_endpoint;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(network(format!("{url}: token endpoint {endpoint:?}")));
        }
        *lock(&self.token_endpoint) = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// A valid access token, requested when there is none or it is about to expire.
    fn token(&self) -> Result<String> {
        let mut token = lock(&self.token);
        if let Some(t) = token.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.value.clone());
        }
        let endpoint = self.token_endpoint()?;
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_encode(&self.client_id),
            form_encode(&self.client_secret)
        ));
        let reply = self.send(
            "POST",
            &endpoint,
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
                ("dpop", &self.proof("POST", &endpoint, None)?),
            ],
            Some(b"grant_type=client_credentials&scope=webid"),
            MAX_SMALL,
        )?;
        if !reply.ok() {
            return Err(unexpected("token request", &endpoint, &reply));
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            token_type: String,
            expires_in: Option<u64>,
        }
        let grant: Grant =
            serde_json::from_slice(&reply.body).map_err(|e| network(format!("{endpoint}: {e}")))?;
        if !grant.token_type.eq_ignore_ascii_case("dpop") {
            return Err(network(format!(
                "{endpoint}: a {:?} token, expected a DPoP-bound one",
                grant.token_type
            )));
        }
        // Renewed a minute early (a quarter of the lifetime when that is shorter).
        let life = grant.expires_in.unwrap_or(300);
        let renew_at = Instant::now() + Duration::from_secs(life - (life / 4).min(60));
        tracing::debug!(issuer = %self.issuer, expires_in = life, "solid: access token");
        *token = Some(Token {
            value: grant.access_token.clone(),
            renew_at,
        });
        Ok(grant.access_token)
    }

    /// An authenticated request: `Authorization: DPoP` and a proof for this method and URL.
    /// A 401 renews the token and tries once more (the server may have restarted or revoked
    /// it early).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        limit: u64,
    ) -> Result<Reply> {
        for attempt in 0..2 {
            let token = self.token()?;
            let authorization = format!("DPoP {token}");
            let proof = self.proof(method, url, Some(&token))?;
            let mut all = vec![("authorization", authorization.as_str()), ("dpop", &proof)];
            all.extend_from_slice(headers);
            let reply = self.send(method, url, &all, body, limit)?;
            if reply.status != 401 || attempt == 1 {
                return Ok(reply);
            }
            *lock(&self.token) = None;
        }
        unreachable!("the second attempt returns")
    }
}

/// What `<cid>.meta.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    acl: Acl,
    size: u64,
}

/// Blobs in a Solid pod.
#[derive(Debug, Clone)]
pub struct SolidStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: SolidClient,
    container: String,
    limits: Limits,
    /// Bytes held in the container, counted from its listing at the first `store`, then
    /// kept in step; the lock makes this instance's writes one at a time.
    held: Mutex<Option<u64>>,
}

impl SolidStore {
    /// A store in `config.container` of the pod. Nothing is sent before the first call.
    pub fn new(config: SolidConfig) -> Result<Self> {
        check_url("pod", &config.pod)?;
        let container = format!("{}{}", config.pod, config.container);
        check_url("container", &container)?;
        let client = SolidClient::new(
            &config.issuer,
            &config.client_id,
            &config.client_secret,
            config.timeout,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                container,
                limits: config.limits,
                held: Mutex::new(None),
            }),
        })
    }

    /// The authenticated client (tests tamper with blobs through it).
    pub fn client(&self) -> &SolidClient {
        &self.inner.client
    }

    /// The container's URL.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The resource holding `cid`'s bytes.
    pub fn blob_url(&self, cid: &Cid) -> String {
        self.inner.blob_url(cid)
    }

    /// Runs `f` on tokio's blocking pool (the HTTP calls block).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }
}

impl Inner {
    fn blob_url(&self, cid: &Cid) -> String {
        format!("{}{cid}", self.container)
    }

    fn meta_url(&self, cid: &Cid) -> String {
        format!("{}{cid}{META_SUFFIX}", self.container)
    }

    /// The blob's metadata, `None` if it is not in the pod.
    fn meta(&self, cid: &Cid) -> Result<Option<Meta>> {
        let url = self.meta_url(cid);
        let reply = self.client.request(
            "GET",
            &url,
            &[("accept", "application/json")],
            None,
            MAX_SMALL,
        )?;
        match reply.status {
            404 | 410 => Ok(None),
            _ if reply.ok() => serde_json::from_slice(&reply.body)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{url}: {e}"))),
            _ => Err(unexpected("GET", &url, &reply)),
        }
    }

    fn put(&self, url: &str, content_type: &str, body: &[u8]) -> Result<()> {
        let reply = self.client.request(
            "PUT",
            url,
            &[("content-type", content_type)],
            Some(body),
            MAX_SMALL,
        )?;
        if reply.ok() {
            Ok(())
        } else {
            Err(unexpected("PUT", url, &reply))
        }
    }

    /// Deletes `url`; `Ok(false)` if it was not there.
    fn remove(&self, url: &str) -> Result<bool> {
        let reply = self.client.request("DELETE", url, &[], None, MAX_SMALL)?;
        match reply.status {
            404 | 410 => Ok(false),
            _ if reply.ok() => Ok(true),
            _ => Err(unexpected("DELETE", url, &reply)),
        }
    }

    /// The CIDs with a metadata resource in the container (empty before the first store).
    fn listed(&self) -> Result<Vec<Cid>> {
        let url = &self.container;
        let reply = self.client.request(
            "GET",
            url,
            &[("accept", "application/ld+json")],
            None,
            MAX_LISTING,
        )?;
        if reply.status == 404 {
            return Ok(Vec::new());
        }
        if !reply.ok() {
            return Err(unexpected("GET", url, &reply));
        }
        let doc: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| network(format!("{url}: listing: {e}")))?;
        let mut members = Vec::new();
        contained(&doc, &mut members);
        let mut cids: Vec<Cid> = members
            .iter()
            .filter_map(|iri| {
                let name = iri.strip_prefix(url.as_str()).unwrap_or(iri);
                let name = name.strip_prefix("./").unwrap_or(name);
                Cid::parse(name.strip_suffix(META_SUFFIX)?).ok()
            })
            .collect();
        cids.sort();
        cids.dedup();
        Ok(cids)
    }

    /// Every blob's metadata (unreadable ones are skipped, with a warning).
    fn metas(&self) -> Result<Vec<(Cid, Meta)>> {
        let mut out = Vec::new();
        for cid in self.listed()? {
            match self.meta(&cid) {
                Ok(Some(meta)) => out.push((cid, meta)),
                Ok(None) => {} // deleted since the listing
                Err(Error::Invalid(why)) => {
                    tracing::warn!(%cid, %why, "solid: unreadable blob metadata: skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `store` once [`check_store`] passed.
    fn store(&self, data: &[u8], acl: &Acl) -> Result<Cid> {
        let cid = Cid::of(data);
        let size = data.len() as u64;
        let meta = serde_json::to_vec(&Meta {
            acl: acl.clone(),
            size,
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut held = lock(&self.held);
        let total = match *held {
            Some(total) => total,
            None => self.metas()?.iter().map(|(_, m)| m.size).sum(),
        };
        *held = Some(total);
        let existing = self.meta(&cid)?;
        let owner = existing.as_ref().map(|m| m.acl.owner.as_str());
        if admit(&cid, owner, acl, total, size, self.limits)? {
            // The bytes first: metadata never names a blob that is not there.
            self.put(&self.blob_url(&cid), "application/octet-stream", data)?;
            if let Err(e) = self.put(&self.meta_url(&cid), "application/json", &meta) {
                let _ = self.remove(&self.blob_url(&cid));
                return Err(e);
            }
            *held = Some(total + size);
        } else {
            self.put(&self.meta_url(&cid), "application/json", &meta)?;
        }
        Ok(cid)
    }

    fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        let meta = self
            .meta(cid)?
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        meta.acl.check(who, Access::Read, cid)?;
        let url = self.blob_url(cid);
        let reply = self.client.request(
            "GET",
            &url,
            &[("accept", "application/octet-stream")],
            None,
            self.limits.max_blob as u64,
        )?;
        match reply.status {
            404 | 410 => Err(Error::NotFound(cid.to_string())),
            _ if reply.ok() => {
                cid.verify(&reply.body)?;
                Ok(reply.body)
            }
            _ => Err(unexpected("GET", &url, &reply)),
        }
    }

    fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        let mut held = lock(&self.held);
        let meta = self
            .meta(cid)?
            .ok_or_else(|| Error::NotFound(cid.to_string()))?;
        meta.acl.check(who, Access::Delete, cid)?;
        // The metadata first: without it the bytes are unlisted and unreadable.
        if !self.remove(&self.meta_url(cid))? {
            return Err(Error::NotFound(cid.to_string()));
        }
        if let Some(total) = held.as_mut() {
            *total = total.saturating_sub(meta.size);
        }
        if let Err(e) = self.remove(&self.blob_url(cid)) {
            tracing::warn!(%cid, error = %e, "solid: blob metadata removed but its bytes remain");
        }
        Ok(Deleted::default())
    }

    fn list(&self, owner: &str) -> Result<Vec<Cid>> {
        let metas = self.metas()?;
        Ok(owned_by(metas.iter().map(|(c, m)| (c, &m.acl)), owner))
    }
}

/// The IRIs an `ldp:contains` names anywhere in a JSON-LD document (expanded or compacted:
/// `{"@id": …}` objects or plain strings).
fn contained(doc: &serde_json::Value, out: &mut Vec<String>) {
    match doc {
        serde_json::Value::Array(items) => items.iter().for_each(|v| contained(v, out)),
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == LDP_CONTAINS || key == "ldp:contains" || key == "contains" {
                    let items = match value {
                        serde_json::Value::Array(items) => items.as_slice(),
                        one => std::slice::from_ref(one),
                    };
                    out.extend(items.iter().filter_map(|item| {
                        item.as_str()
                            .or_else(|| item.get("@id").and_then(|id| id.as_str()))
                            .map(str::to_owned)
                    }));
                } else {
                    contained(value, out);
                }
            }
        }
        _ => {}
    }
}

#[async_trait::async_trait]
impl StorageProvider for SolidStore {
    fn name(&self) -> &'static str {
        "solid"
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid> {
        // Refused here, before a thread is taken or a byte is sent.
        check_store(&data, acl, self.inner.limits)?;
        let acl = acl.clone();
        self.blocking(move |s| s.store(&data, &acl)).await
    }

    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        let (cid, who) = (*cid, who.to_owned());
        self.blocking(move |s| s.retrieve(&cid, &who)).await
    }

    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        let (cid, who) = (*cid, who.to_owned());
        self.blocking(move |s| s.delete(&cid, &who)).await
    }

    async fn list(&self, owner: &str) -> Result<Vec<Cid>> {
        let owner = owner.to_owned();
        self.blocking(move |s| s.list(&owner)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_es256_jwts_over_this_method_and_url() -> Result<()> {
        use p256::ecdsa::signature::Verifier as _;
        let client = SolidClient::new("http://127.0.0.1:1/", "id", "secret", Duration::ZERO)?;
        let jwt = client.proof("PUT", "http://127.0.0.1:1/pod/x", Some("tok"))?;
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap_or_default())
                .unwrap_or_default()
        };
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["crv"], "P-256");
        assert_eq!(claims["htm"], "PUT");
        assert_eq!(claims["htu"], "http://127.0.0.1:1/pod/x");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok")).as_str()
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
        let sig =
            p256::ecdsa::Signature::from_slice(&sig).map_err(|e| Error::Invalid(e.to_string()))?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(
            client
                .key
                .verifying_key()
                .verify(signed.as_bytes(), &sig)
                .is_ok()
        );
        // A fresh jti each time.
        assert_ne!(
            jwt,
            client.proof("PUT", "http://127.0.0.1:1/pod/x", Some("tok"))?
        );
        Ok(())
    }

    #[test]
    fn listings_name_their_members_in_either_json_ld_form() {
        let expanded = serde_json::json!([{
            "@id": "http://p/c/",
            LDP_CONTAINS: [{ "@id": "http://p/c/a.meta.json" }, { "@id": "http://p/c/a" }],
        }]);
        let compacted = serde_json::json!({ "@graph": [{ "ldp:contains": "b.meta.json" }] });
        let mut out = Vec::new();
        contained(&expanded, &mut out);
        contained(&compacted, &mut out);
        assert_eq!(
            out,
            ["http://p/c/a.meta.json", "http://p/c/a", "b.meta.json"]
        );
    }

    #[test]
    fn credentials_are_form_encoded_and_urls_checked() {
        assert_eq!(form_encode("a b:c/é_~"), "a%20b%3Ac%2F%C3%A9_~");
        assert!(check_url("pod", "http://127.0.0.1:3000/alice/").is_ok());
        for bad in ["ftp://x/", "http://x/alice", "http://x/?q=1/", "x/"] {
            assert!(check_url("pod", bad).is_err(), "{bad}");
        }
    }
}
