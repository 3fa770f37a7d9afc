//! The network backend: blobs held by peers, over `/kwaainet/blob/1.0.0`.
//!
//! - A node that stores a blob keeps a copy in its local backend, registers as a provider
//!   of `/kwaainet/blob/<cid>` in the DHT, and pushes replicas to the blob's holders so
//!   far and then to the peers of its routing table closest to that key, until
//!   [`NetConfig::replicas`] peers hold one. Each holder registers too.
//! - Reading looks locally, then asks the key's providers in turn: a copy is accepted only
//!   if it hashes to its CID, so a tampered replica is skipped, never returned.
//! - Deleting sends every holder a deletion request signed by the owner's key; each
//!   answers with a receipt signed by its own key ([`Receipt`]), which the owner keeps.
//! - Every peer is authenticated by the connection (noise): a holder stores a blob only
//!   for the peer that owns it, serves it only to identities its list names, and a
//!   deletion needs the owner's signature, fresh within [`MAX_SKEW_MS`].
//!
//! One request per stream: a frame of a JSON header (≤ [`MAX_HEADER`]) and a body (≤ the
//! local backend's `max_blob`), each length-prefixed and checked before anything is
//! allocated; every exchange has a timeout.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kwaainet_p2p::NodeHandle;
use kwaainet_p2p::did;
use kwaainet_p2p::record::blob_key;
use kwaainet_p2p::region::AllowedRegions;
use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::{Acl, Cid, Deleted, Error, Limits, Receipt, Result, StorageProvider, check_store};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kwaainet/blob/1.0.0");
/// Largest JSON header of a request or response.
pub const MAX_HEADER: usize = 16 << 10;
/// How far a deletion request's time may be from the holder's clock.
pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;

/// Replication, placement, timeouts and caps.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Peers that should hold a copy besides this node.
    pub replicas: usize,
    /// One exchange (stream opened, request sent, answer read) takes at most this long.
    pub timeout: Duration,
    /// Inbound requests served at once; more are refused.
    pub max_streams: usize,
    /// As a holder: most blobs held for one peer (its share of the local quota).
    pub max_blobs_per_peer: usize,
    /// Replicas go only to peers whose declared region this allows (data residency).
    pub placement: AllowedRegions,
    /// As a holder: accept only sealed blobs ([`crate::SEALED_MAGIC`]), when the node's
    /// policy requires encryption.
    pub sealed_only: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            replicas: 2,
            timeout: Duration::from_secs(10),
            max_streams: 32,
            max_blobs_per_peer: 4096,
            placement: AllowedRegions::anywhere(),
            sealed_only: false,
        }
    }
}

/// An owner's signed request that holders delete a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The blob.
    pub cid: Cid,
    /// Its owner (did:key), who signs.
    pub owner: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Ed25519 signature over [`DeleteRequest::signing_bytes`], base64.
    pub signature: String,
}

impl DeleteRequest {
    /// The bytes the owner signs.
    pub fn signing_bytes(owner: &str, cid: &Cid, at_ms: u64) -> Vec<u8> {
        format!("kwaainet/storage/delete/v1\n{owner}\n{cid}\n{at_ms}\n").into_bytes()
    }

    /// A request signed with `key` (an Ed25519 identity).
    pub fn sign(key: &Keypair, cid: Cid, at_ms: u64) -> Result<Self> {
        let owner = did_of(key)?;
        let signature = sign(key, &Self::signing_bytes(&owner, &cid, at_ms))?;
        Ok(Self {
            cid,
            owner,
            at_ms,
            signature,
        })
    }

    /// Checks the owner's signature and the time against `now_ms`.
    pub fn verify(&self, now_ms: u64) -> Result<()> {
        if self.at_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Error::Signature(format!(
                "deletion request of {} is {} ms from now (at most {MAX_SKEW_MS})",
                self.cid,
                self.at_ms.abs_diff(now_ms)
            )));
        }
        verify(
            &self.owner,
            &Self::signing_bytes(&self.owner, &self.cid, self.at_ms),
            &self.signature,
        )
    }
}

/// Signs a receipt for `cid` with the holder's `key`.
pub fn sign_receipt(key: &Keypair, cid: Cid, at_ms: u64) -> Result<Receipt> {
    let holder = did_of(key)?;
    let signature = sign(key, &Receipt::signing_bytes(&holder, &cid, at_ms))?;
    Ok(Receipt {
        holder,
        cid,
        at_ms,
        signature,
    })
}

/// Checks a receipt's signature with the key its holder's did:key names.
pub fn verify_receipt(r: &Receipt) -> Result<()> {
    let key =
        did::to_ed25519(&r.holder).map_err(|e| Error::Signature(format!("{}: {e}", r.holder)))?;
    r.verify(&key.to_bytes())
}

fn did_of(key: &Keypair) -> Result<String> {
    let public = key
        .public()
        .try_into_ed25519()
        .map_err(|_| Error::Invalid("storage identities are Ed25519 keys".into()))?;
    Ok(did::from_ed25519(&public))
}

fn sign(key: &Keypair, bytes: &[u8]) -> Result<String> {
    key.sign(bytes)
        .map(|s| B64.encode(s))
        .map_err(|e| Error::Signature(e.to_string()))
}

fn verify(signer: &str, bytes: &[u8], signature: &str) -> Result<()> {
    let key = did::to_ed25519(signer).map_err(|e| Error::Signature(format!("{signer}: {e}")))?;
    let sig = B64
        .decode(signature)
        .map_err(|_| Error::Signature("signature is not base64".into()))?;
    if key.verify(bytes, &sig) {
        Ok(())
    } else {
        Err(Error::Signature(format!("not signed by {signer}")))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request's header (its body, for `put`, follows).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Put { acl: Acl },
    Get { cid: Cid },
    Delete { request: DeleteRequest },
}

/// A response's header (its body, for `blob`, follows).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Response {
    Stored { cid: Cid },
    Blob { cid: Cid },
    Deleted { receipt: Receipt },
    Error { kind: Kind, message: String },
}

/// An error's kind on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    NotFound,
    Denied,
    TooLarge,
    Quota,
    Tampered,
    Invalid,
    Signature,
    Busy,
    Internal,
}

fn to_wire(e: &Error) -> Response {
    let kind = match e {
        Error::NotFound(_) => Kind::NotFound,
        Error::Denied { .. } => Kind::Denied,
        Error::TooLarge { .. } => Kind::TooLarge,
        Error::Quota(_) => Kind::Quota,
        Error::Tampered(_) => Kind::Tampered,
        Error::BadCid(_) | Error::Invalid(_) | Error::NoKey(_) => Kind::Invalid,
        Error::Signature(_) => Kind::Signature,
        Error::Network(_) | Error::Io(_) => Kind::Internal,
    };
    Response::Error {
        kind,
        // Holders say what went wrong, never their paths.
        message: match e {
            Error::Io(_) => "the holder's storage failed".into(),
            e => e.to_string(),
        },
    }
}

fn from_wire(
    peer: &PeerId,
    kind: Kind,
    message: String,
    cid: &Cid,
    who: &str,
    op: &'static str,
) -> Error {
    match kind {
        Kind::NotFound => Error::NotFound(cid.to_string()),
        Kind::Denied => Error::Denied {
            who: who.to_owned(),
            op,
            cid: cid.to_string(),
        },
        Kind::TooLarge => Error::TooLarge { size: 0, limit: 0 },
        Kind::Quota => Error::Quota(format!("{peer}: {message}")),
        Kind::Tampered => Error::Tampered(format!("{peer}: {message}")),
        Kind::Invalid => Error::Invalid(format!("{peer}: {message}")),
        Kind::Signature => Error::Signature(format!("{peer}: {message}")),
        Kind::Busy | Kind::Internal => Error::Network(format!("{peer}: {message}")),
    }
}

async fn write_msg<T: AsyncWrite + Unpin, H: Serialize>(
    io: &mut T,
    header: &H,
    body: &[u8],
) -> std::io::Result<()> {
    let head = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    for part in [&head[..], body] {
        let len = u32::try_from(part.len()).map_err(|_| std::io::Error::other("part too large"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(part).await?;
    }
    io.flush().await
}

/// Reads a header of at most [`MAX_HEADER`] bytes and a body of at most `max_body`.
async fn read_msg<T: AsyncRead + Unpin, H: for<'de> Deserialize<'de>>(
    io: &mut T,
    max_body: usize,
) -> std::result::Result<(H, Vec<u8>), Error> {
    let head = read_part(io, MAX_HEADER, "header").await?;
    let header = serde_json::from_slice(&head)
        .map_err(|e| Error::Invalid(format!("malformed message: {e}")))?;
    let body = read_part(io, max_body, "blob").await?;
    Ok((header, body))
}

async fn read_part<T: AsyncRead + Unpin>(io: &mut T, max: usize, what: &str) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(if what == "blob" {
            Error::TooLarge {
                size: len,
                limit: max,
            }
        } else {
            Error::Invalid(format!("{what} of {len} bytes exceeds {max}"))
        });
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Answers inbound `/kwaainet/blob/1.0.0` requests from `local` until the node stops:
/// stores replicas for their owners, serves them to the identities their lists name, and
/// deletes them on their owner's signed request, registering and withdrawing this node as
/// their provider. `key` is the node's identity (it signs the receipts).
pub async fn serve(
    node: NodeHandle,
    key: Keypair,
    local: Arc<dyn StorageProvider>,
    config: NetConfig,
) -> Result<()> {
    let mut control = node.stream_control();
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(|_| Error::Network(format!("{PROTOCOL} is already served on this node")))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_streams));
    let key = Arc::new(key);
    let (sealed_only, per_peer) = (config.sealed_only, config.max_blobs_per_peer);
    let seen = Arc::new(SeenDeletions::default());
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            let busy = Response::Error {
                kind: Kind::Busy,
                message: format!("all {} slots busy", config.max_streams),
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    write_msg(&mut stream, &busy, &[]),
                )
                .await;
            });
            continue;
        };
        let (node, key, local) = (node.clone(), Arc::clone(&key), Arc::clone(&local));
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let _permit = permit;
            let answered = tokio::time::timeout(config.timeout, async {
                let response =
                    match read_msg::<_, Request>(&mut stream, local.limits().max_blob).await {
                        Ok((req, body)) => {
                            let limits = Holding {
                                sealed_only,
                                per_peer,
                                seen,
                            };
                            answer(&node, &key, &*local, peer, req, body, limits).await
                        }
                        Err(e) => Err(e),
                    };
                let (header, body) = match response {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "blob request refused");
                        (to_wire(&e), Vec::new())
                    }
                };
                write_msg(&mut stream, &header, &body).await?;
                stream.close().await
            })
            .await;
            if !matches!(answered, Ok(Ok(()))) {
                tracing::debug!(%peer, "blob stream ended early");
            }
        });
    }
    Ok(())
}

/// What a holder accepts.
#[derive(Debug, Clone)]
struct Holding {
    sealed_only: bool,
    per_peer: usize,
    seen: Arc<SeenDeletions>,
}

/// Deletion requests already carried out, kept while they are fresh: a request replayed
/// within its window (to delete the same bytes stored again since) is refused.
#[derive(Debug, Default)]
struct SeenDeletions(std::sync::Mutex<std::collections::HashMap<String, u64>>);

/// Deletion requests remembered at most (beyond that, new ones are refused as busy until
/// old ones expire: a flood cannot grow the holder's memory).
const MAX_SEEN_DELETIONS: usize = 100_000;

impl SeenDeletions {
    /// Records `request`; `false` if it was seen.
    fn first(&self, request: &DeleteRequest, now: u64) -> Result<bool> {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|_, at| now.saturating_sub(*at) <= 2 * MAX_SKEW_MS);
        if seen.contains_key(&request.signature) {
            return Ok(false);
        }
        if seen.len() >= MAX_SEEN_DELETIONS {
            return Err(Error::Network(
                "too many deletions in progress: try again later".into(),
            ));
        }
        seen.insert(request.signature.clone(), request.at_ms);
        Ok(true)
    }
}

async fn answer(
    node: &NodeHandle,
    key: &Keypair,
    local: &dyn StorageProvider,
    peer: PeerId,
    req: Request,
    body: Vec<u8>,
    holding: Holding,
) -> Result<(Response, Vec<u8>)> {
    let asker = did::from_peer_id(&peer).map_err(|e| Error::Invalid(e.to_string()))?;
    match req {
        Request::Put { acl } => {
            // Replicas are stored only for the peer that owns them.
            if acl.owner != asker {
                return Err(Error::Denied {
                    who: asker,
                    op: "store for another owner",
                    cid: Cid::of(&body).to_string(),
                });
            }
            if holding.sealed_only && !body.starts_with(crate::SEALED_MAGIC) {
                return Err(Error::Invalid(
                    "this node holds only encrypted (sealed) blobs: its policy requires encryption"
                        .into(),
                ));
            }
            let cid = Cid::of(&body);
            let theirs = local.list(&asker).await?;
            if theirs.len() >= holding.per_peer && !theirs.contains(&cid) {
                return Err(Error::Quota(format!(
                    "{} blobs held for this peer already (at most {})",
                    theirs.len(),
                    holding.per_peer
                )));
            }
            let cid = local.store(body, &acl).await?;
            node.provide(blob_key(&cid.to_string()), true)
                .await
                .map_err(|e| Error::Network(e.to_string()))?;
            Ok((Response::Stored { cid }, Vec::new()))
        }
        Request::Get { cid } => {
            let bytes = local.retrieve(&cid, &asker).await?;
            Ok((Response::Blob { cid }, bytes))
        }
        Request::Delete { request } => {
            request.verify(now_ms())?;
            if !holding.seen.first(&request, now_ms())? {
                return Err(Error::Denied {
                    who: request.owner.clone(),
                    op: "replay a deletion request",
                    cid: request.cid.to_string(),
                });
            }
            local.delete(&request.cid, &request.owner).await?;
            let _ = node
                .provide(blob_key(&request.cid.to_string()), false)
                .await;
            let receipt = sign_receipt(key, request.cid, now_ms())?;
            Ok((Response::Deleted { receipt }, Vec::new()))
        }
    }
}

/// Blobs on the network, acting as this node's identity: a local copy, replicas on peers.
pub struct NetworkStore {
    node: NodeHandle,
    key: Keypair,
    did: String,
    local: Arc<dyn StorageProvider>,
    config: NetConfig,
}

impl std::fmt::Debug for NetworkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkStore")
            .field("did", &self.did)
            .field("local", &self.local.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NetworkStore {
    /// The network store of `node`, whose identity is `key`, keeping its copies (and the
    /// replicas it holds for others, through [`serve`]) in `local`.
    pub fn new(
        node: NodeHandle,
        key: Keypair,
        local: Arc<dyn StorageProvider>,
        config: NetConfig,
    ) -> Result<Self> {
        let did = did_of(&key)?;
        Ok(Self {
            node,
            key,
            did,
            local,
            config,
        })
    }

    /// This node's did:key: the only identity it stores, reads and deletes as.
    pub fn did(&self) -> &str {
        &self.did
    }

    /// The local backend.
    pub fn local(&self) -> &Arc<dyn StorageProvider> {
        &self.local
    }

    fn only_as_self(&self, who: &str, op: &'static str, cid: &Cid) -> Result<()> {
        if who == self.did {
            Ok(())
        } else {
            // A node cannot speak for another identity: peers authenticate it as itself.
            Err(Error::Denied {
                who: who.to_owned(),
                op,
                cid: cid.to_string(),
            })
        }
    }

    /// The peers holding `cid`, from the DHT (an unreachable DHT is no holder).
    async fn holders(&self, cid: &Cid) -> Vec<PeerId> {
        let me = self.node.peer_id();
        match self.node.providers(blob_key(&cid.to_string())).await {
            Ok(peers) => peers.into_iter().filter(|p| *p != me).collect(),
            Err(e) => {
                tracing::debug!(%cid, error = %e, "provider lookup failed");
                Vec::new()
            }
        }
    }

    async fn exchange(
        &self,
        peer: PeerId,
        req: &Request,
        body: &[u8],
        max_body: usize,
    ) -> Result<(Response, Vec<u8>)> {
        let mut control = self.node.stream_control();
        let go = async {
            let mut stream = control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| Error::Network(format!("{peer}: {e}")))?;
            write_msg(&mut stream, req, body).await?;
            let answer = read_msg::<_, Response>(&mut stream, max_body).await;
            let _ = stream.close().await;
            answer
        };
        tokio::time::timeout(self.config.timeout, go)
            .await
            .map_err(|_| {
                Error::Network(format!(
                    "{peer}: no answer within {:?}",
                    self.config.timeout
                ))
            })?
    }
}

#[async_trait::async_trait]
impl StorageProvider for NetworkStore {
    fn name(&self) -> &'static str {
        "network"
    }

    fn limits(&self) -> Limits {
        self.local.limits()
    }

    async fn store(&self, data: Vec<u8>, acl: &Acl) -> Result<Cid> {
        let cid = Cid::of(&data);
        check_store(&data, acl, self.limits())?;
        self.only_as_self(&acl.owner, "store as", &cid)?;
        let new_here = matches!(
            self.local.retrieve(&cid, &self.did).await,
            Err(Error::NotFound(_))
        );
        self.local.store(data.clone(), acl).await?;
        let key = blob_key(&cid.to_string());
        // The blob's holders so far all get the new list (and say if the bytes are someone
        // else's); then the closest peers, until enough hold a copy.
        let holders = self.holders(&cid).await;
        let closest = self
            .node
            .closest_peers(key.clone(), 20)
            .await
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for p in closest {
            if holders.contains(&p) || p == self.node.peer_id() {
                continue;
            }
            if self.config.placement.is_constrained() {
                // Residency: only peers that declare an allowed region (in their signed
                // record) get a copy.
                let region = match self.node.get_node_record(p).await {
                    Ok(Some(r)) => r.region,
                    _ => None,
                };
                if !self.config.placement.allows(region.as_deref()) {
                    continue;
                }
            }
            fresh.push(p);
        }
        let targets: Vec<(PeerId, bool)> = holders
            .iter()
            .map(|p| (*p, true))
            .chain(fresh.into_iter().map(|p| (p, false)))
            .collect();
        let (mut held, mut failures) = (0usize, Vec::new());
        let put = Request::Put { acl: acl.clone() };
        for (peer, holds) in targets {
            if !holds && held >= self.config.replicas {
                break;
            }
            match self.exchange(peer, &put, &data, 0).await {
                Ok((Response::Stored { cid: got }, _)) if got == cid => held += 1,
                Ok((
                    Response::Error {
                        kind: Kind::Denied, ..
                    },
                    _,
                )) => {
                    if new_here {
                        let _ = self.local.delete(&cid, &self.did).await;
                    }
                    return Err(Error::Denied {
                        who: self.did.clone(),
                        op: "overwrite",
                        cid: cid.to_string(),
                    });
                }
                Ok((Response::Error { kind, message }, _)) => {
                    failures.push(format!("{peer}: {kind:?}: {message}"))
                }
                Ok(_) => failures.push(format!("{peer}: unexpected answer")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        self.node
            .provide(key, true)
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        if held == 0 && self.config.replicas > 0 {
            // The local copy stays (nothing is lost); storing again retries the replicas.
            return Err(Error::Network(format!(
                "{cid} is stored on this node only: no peer took a replica ({})",
                if failures.is_empty() {
                    "no peers known".to_owned()
                } else {
                    failures.join("; ")
                }
            )));
        }
        if held < self.config.replicas {
            tracing::warn!(%cid, held, wanted = self.config.replicas, "fewer replicas than configured");
        }
        Ok(cid)
    }

    async fn retrieve(&self, cid: &Cid, who: &str) -> Result<Vec<u8>> {
        self.only_as_self(who, "read as", cid)?;
        let mut tampered = None;
        match self.local.retrieve(cid, who).await {
            Ok(bytes) => return Ok(bytes),
            Err(Error::NotFound(_)) => {}
            Err(e @ Error::Tampered(_)) => tampered = Some(e),
            Err(e) => return Err(e),
        }
        let (mut denied, mut failures) = (false, Vec::new());
        let get = Request::Get { cid: *cid };
        for peer in self.holders(cid).await {
            match self.exchange(peer, &get, &[], self.limits().max_blob).await {
                Ok((Response::Blob { cid: got }, bytes)) if got == *cid => match cid.verify(&bytes)
                {
                    Ok(()) => return Ok(bytes),
                    Err(e) => tampered = Some(Error::Tampered(format!("{peer}: {e}"))),
                },
                Ok((Response::Error { kind, message }, _)) => {
                    match from_wire(&peer, kind, message, cid, who, "read") {
                        Error::Denied { .. } => denied = true,
                        e @ Error::Tampered(_) => tampered = Some(e),
                        Error::NotFound(_) => {}
                        e => failures.push(e.to_string()),
                    }
                }
                Ok(_) => failures.push(format!("{peer}: unexpected answer")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if denied {
            return Err(Error::Denied {
                who: who.to_owned(),
                op: "read",
                cid: cid.to_string(),
            });
        }
        if let Some(e) = tampered {
            return Err(e);
        }
        if failures.is_empty() {
            Err(Error::NotFound(cid.to_string()))
        } else {
            Err(Error::Network(format!(
                "{cid}: no holder answered ({})",
                failures.join("; ")
            )))
        }
    }

    async fn delete(&self, cid: &Cid, who: &str) -> Result<Deleted> {
        self.only_as_self(who, "delete as", cid)?;
        let here = match self.local.delete(cid, who).await {
            Ok(_) => true,
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        let request = Request::Delete {
            request: DeleteRequest::sign(&self.key, *cid, now_ms())?,
        };
        let mut out = Deleted::default();
        let mut denied = false;
        for peer in self.holders(cid).await {
            match self.exchange(peer, &request, &[], 0).await {
                Ok((Response::Deleted { receipt }, _)) => {
                    let theirs = did::from_peer_id(&peer).is_ok_and(|d| d == receipt.holder);
                    if theirs && receipt.cid == *cid && verify_receipt(&receipt).is_ok() {
                        out.receipts.push(receipt);
                    } else {
                        out.unconfirmed.push(format!("{peer}: invalid receipt"));
                    }
                }
                Ok((
                    Response::Error {
                        kind: Kind::NotFound,
                        ..
                    },
                    _,
                )) => {}
                Ok((
                    Response::Error {
                        kind: Kind::Denied, ..
                    },
                    _,
                )) => denied = true,
                Ok((Response::Error { kind, message }, _)) => {
                    out.unconfirmed.push(format!("{peer}: {kind:?}: {message}"))
                }
                Ok(_) => out.unconfirmed.push(format!("{peer}: unexpected answer")),
                Err(e) => out.unconfirmed.push(e.to_string()),
            }
        }
        let _ = self.node.provide(blob_key(&cid.to_string()), false).await;
        if !here && out.receipts.is_empty() {
            return Err(if denied {
                Error::Denied {
                    who: who.to_owned(),
                    op: "delete",
                    cid: cid.to_string(),
                }
            } else {
                Error::NotFound(cid.to_string())
            });
        }
        Ok(out)
    }

    async fn list(&self, owner: &str) -> Result<Vec<Cid>> {
        self.local.list(owner).await
    }
}
