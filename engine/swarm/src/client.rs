//! Generating through the swarm: a [`SwarmSession`] holds the embedding and the output head,
//! and runs every block on span servers along a route, one session per hop.
//!
//! It is a [`kwaainet_core::generate::Session`], so the engine's own generation loop
//! (sampling, stop strings, streaming) drives it unchanged.
//!
//! When a hop fails (the peer is gone, a timeout, `busy`, a malformed answer) the client bans
//! that server with exponential back-off, plans a new route for the failed hop's blocks
//! from the servers left, and replays the hop's input history into the new servers, step by
//! step as first sent, so their caches are rebuilt exactly: the generation goes on with the
//! tokens it would have produced. When no server covers some blocks, the request fails at
//! once with an error naming them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kwaainet_core::codec::Codec;
use kwaainet_core::generate::Session;
use kwaainet_core::{Error as CoreError, Llama};

use crate::link::{Connector, Link, LinkError};
use crate::protocol::{self, Fail, Message, Open, Step};

/// A server the client may route through (from the DHT's span records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// How the [`Connector`] reaches it.
    pub id: String,
    /// The blocks it serves.
    pub blocks: Range<usize>,
}

/// Which codec hidden states travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    /// Always this one.
    Fixed(Codec),
    /// By the size of each step ([`Codec::auto`]).
    Auto,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The model id the servers announce.
    pub model_id: String,
    /// Most positions of the session (prompt and answer).
    pub max_length: usize,
    /// Hidden-state codec.
    pub codec: CodecChoice,
    /// First ban of a failed server; doubles with each further failure.
    pub ban: Duration,
    /// Longest ban.
    pub max_ban: Duration,
    /// Failovers one forward pass may go through before it gives up.
    pub max_failovers: usize,
}

impl ClientConfig {
    /// Defaults for `model_id`: 2048 positions, f32, Petals' 15 s first ban.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            max_length: 2048,
            codec: CodecChoice::Fixed(Codec::F32),
            ban: Duration::from_secs(15),
            max_ban: Duration::from_secs(600),
            max_failovers: 8,
        }
    }
}

/// What went wrong generating through the swarm.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// No live, unbanned server covers these blocks.
    #[error("no server covers blocks {}..{} of the model", missing.start, missing.end)]
    NoRoute {
        /// The blocks nobody serves now.
        missing: Range<usize>,
    },
    /// Failover went on too long.
    #[error("gave up after {attempts} failovers (last: {last})")]
    Exhausted {
        /// Failovers tried.
        attempts: usize,
        /// The last failure.
        last: String,
    },
    /// The session is full.
    #[error("{needed} positions needed, the session holds {max}")]
    ContextFull {
        /// Positions the request needs.
        needed: usize,
        /// The session's limit.
        max: usize,
    },
    /// The local part (embedding, head) failed.
    #[error(transparent)]
    Local(#[from] CoreError),
}

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmStats {
    /// Steps answered by servers.
    pub steps: usize,
    /// Hops replaced after a failure.
    pub failovers: usize,
    /// Failovers that replayed history into the new servers.
    pub replays: usize,
    /// Payload bytes sent (hidden states).
    pub bytes_sent: usize,
    /// Payload bytes received.
    pub bytes_received: usize,
}

/// A step as first sent to a hop: what a replacement replays.
#[derive(Debug, Clone)]
struct Sent {
    position: u32,
    tokens: u32,
    codec: Codec,
    payload: Arc<Vec<u8>>,
}

struct Hop {
    server: String,
    blocks: Range<usize>,
    link: Box<dyn Link>,
    next_step: u64,
    history: Vec<Sent>,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    strikes: u32,
}

/// Why one exchange with a hop failed (each is a reason to fail over).
#[derive(Debug)]
enum HopFailure {
    Link(LinkError),
    Refused(Fail),
    Protocol(String),
}

impl std::fmt::Display for HopFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Link(e) => write!(f, "{e}"),
            Self::Refused(x) => write!(f, "{:?}: {}", x.kind, x.message),
            Self::Protocol(m) => write!(f, "bad answer: {m}"),
        }
    }
}

/// A generation session through span servers.
pub struct SwarmSession {
    local: Arc<Llama>,
    servers: Vec<ServerEntry>,
    connector: Arc<dyn Connector>,
    config: ClientConfig,
    session_id: String,
    route: Vec<Hop>,
    len: usize,
    bans: HashMap<String, Ban>,
    stats: SwarmStats,
}

impl std::fmt::Debug for SwarmSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmSession")
            .field("session", &self.session_id)
            .field("route", &self.route())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SwarmSession {
    /// A session using `local` (loaded with at least the embedding and the head) and the
    /// `servers` known; no server is contacted before the first forward pass.
    pub fn new(
        local: Arc<Llama>,
        servers: Vec<ServerEntry>,
        connector: Arc<dyn Connector>,
        config: ClientConfig,
        session_id: impl Into<String>,
    ) -> Self {
        Self {
            local,
            servers,
            connector,
            config,
            session_id: session_id.into(),
            route: Vec::new(),
            len: 0,
            bans: HashMap::new(),
            stats: SwarmStats::default(),
        }
    }

    /// The route in use: each hop's server and blocks.
    pub fn route(&self) -> Vec<(String, Range<usize>)> {
        self.route
            .iter()
            .map(|h| (h.server.clone(), h.blocks.clone()))
            .collect()
    }

    /// The session's counters.
    pub fn stats(&self) -> &SwarmStats {
        &self.stats
    }

    /// Servers banned now, with the time left.
    pub fn banned(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(s, b)| (s.clone(), b.until - now))
            .collect()
    }

    /// Runs `tokens` after the positions processed so far; returns the logits of the last.
    pub fn forward_tokens(&mut self, tokens: &[u32]) -> Result<Vec<f32>, SwarmError> {
        let n = tokens.len();
        if n == 0 {
            return Err(CoreError::InvalidArgument("no tokens to run".into()).into());
        }
        if self.len + n > self.config.max_length {
            return Err(SwarmError::ContextFull {
                needed: self.len + n,
                max: self.config.max_length,
            });
        }
        if self.route.is_empty() {
            let blocks = 0..self.local.config().n_layers;
            self.route = self.open_segment(blocks)?;
        }
        let mut hidden = self.local.embed(tokens)?;
        let codec = match self.config.codec {
            CodecChoice::Fixed(c) => c,
            CodecChoice::Auto => Codec::auto(hidden.len()),
        };
        let (position, count) = (self.len as u32, n as u32);
        let mut failovers = 0;
        let mut i = 0;
        while i < self.route.len() {
            let sent = Sent {
                position,
                tokens: count,
                codec,
                payload: Arc::new(codec.encode(&hidden)),
            };
            match self.step(i, &sent) {
                Ok(out) => {
                    self.route[i].history.push(sent);
                    hidden = out;
                    i += 1;
                }
                Err(failure) => {
                    failovers += 1;
                    if failovers > self.config.max_failovers {
                        return Err(SwarmError::Exhausted {
                            attempts: failovers - 1,
                            last: failure.to_string(),
                        });
                    }
                    tracing::warn!(server = %self.route[i].server, %failure, "hop failed: failing over");
                    self.fail_over(i)?;
                }
            }
        }
        self.len += n;
        Ok(self.local.logits(&hidden)?)
    }

    /// One step on hop `i`; the decoded output.
    fn step(&mut self, i: usize, sent: &Sent) -> Result<Vec<f32>, HopFailure> {
        let dim = self.local.config().dim;
        let hop = &mut self.route[i];
        let out = exchange_step(hop, sent, dim)?;
        self.stats.steps += 1;
        self.stats.bytes_sent += sent.payload.len();
        self.stats.bytes_received += sent.codec.encoded_len(out.len());
        Ok(out)
    }

    /// Replaces hop `i` by a new segment over its blocks and replays its history there.
    fn fail_over(&mut self, i: usize) -> Result<(), SwarmError> {
        let old = self.route.remove(i);
        self.ban(&old.server);
        self.stats.failovers += 1;
        let dim = self.local.config().dim;
        let mut attempts = 0;
        loop {
            let mut hops = self.open_segment(old.blocks.clone())?;
            match replay(&mut hops, &old.history, dim) {
                Ok(steps) => {
                    if !old.history.is_empty() {
                        self.stats.replays += 1;
                    }
                    self.stats.steps += steps;
                    self.route.splice(i..i, hops);
                    return Ok(());
                }
                Err((server, failure)) => {
                    attempts += 1;
                    tracing::warn!(%server, %failure, "replay failed");
                    self.ban(&server);
                    if attempts > self.config.max_failovers {
                        return Err(SwarmError::Exhausted {
                            attempts,
                            last: failure.to_string(),
                        });
                    }
                }
            }
        }
    }

    fn is_banned(&self, server: &str, now: Instant) -> bool {
        self.bans.get(server).is_some_and(|b| b.until > now)
    }

    fn ban(&mut self, server: &str) {
        let (base, max) = (self.config.ban, self.config.max_ban);
        let b = self.bans.entry(server.to_owned()).or_insert(Ban {
            until: Instant::now(),
            strikes: 0,
        });
        b.strikes += 1;
        let factor = 1u32 << (b.strikes - 1).min(16);
        b.until = Instant::now() + base.saturating_mul(factor).min(max);
    }

    /// Opens sessions on a route over `blocks`: at each block, the unbanned server reaching
    /// furthest. A server that refuses or cannot be reached is banned and the plan redone.
    fn open_segment(&mut self, blocks: Range<usize>) -> Result<Vec<Hop>, SwarmError> {
        let mut hops = Vec::new();
        let mut at = blocks.start;
        while at < blocks.end {
            let now = Instant::now();
            let best = self
                .servers
                .iter()
                .filter(|s| s.blocks.start <= at && at < s.blocks.end)
                .filter(|s| !self.is_banned(&s.id, now))
                // Furthest reach; on a tie the first listed (min_by_key keeps the first).
                .min_by_key(|s| std::cmp::Reverse(s.blocks.end))
                .cloned();
            let Some(server) = best else {
                let next = self
                    .servers
                    .iter()
                    .filter(|s| s.blocks.start > at && !self.is_banned(&s.id, now))
                    .map(|s| s.blocks.start)
                    .min()
                    .unwrap_or(blocks.end)
                    .min(blocks.end);
                return Err(SwarmError::NoRoute { missing: at..next });
            };
            let span = at..server.blocks.end.min(blocks.end);
            match self.open_hop(&server.id, span.clone()) {
                Ok(hop) => {
                    at = span.end;
                    hops.push(hop);
                }
                Err(failure) => {
                    tracing::warn!(server = %server.id, %failure, "open failed");
                    self.ban(&server.id);
                }
            }
        }
        Ok(hops)
    }

    fn open_hop(&self, server: &str, blocks: Range<usize>) -> Result<Hop, HopFailure> {
        let mut link = self.connector.connect(server).map_err(HopFailure::Link)?;
        let default_codec = match self.config.codec {
            CodecChoice::Fixed(c) => c,
            CodecChoice::Auto => Codec::F16,
        };
        let open = Message::Open(Open {
            session: self.session_id.clone(),
            model: self.config.model_id.clone(),
            start: blocks.start as u32,
            end: blocks.end as u32,
            max_length: self.config.max_length as u32,
            codec: default_codec.name().to_owned(),
        });
        let reply = link
            .exchange(&protocol::encode(&open, &[]), 0)
            .map_err(HopFailure::Link)?
            .ok_or_else(|| HopFailure::Protocol("stream ended on open".into()))?;
        match protocol::decode(&reply, 0).map_err(|e| HopFailure::Protocol(e.to_string()))? {
            protocol::Frame {
                message: Message::Opened(o),
                ..
            } if o.start as usize == blocks.start && o.end as usize == blocks.end => Ok(Hop {
                server: server.to_owned(),
                blocks,
                link,
                next_step: 0,
                history: Vec::new(),
            }),
            protocol::Frame {
                message: Message::Fail(f),
                ..
            } => Err(HopFailure::Refused(f)),
            other => Err(HopFailure::Protocol(format!("{:?} to open", other.message))),
        }
    }
}

/// Sends `sent` to `hop` as its next step; the decoded output (same rows).
fn exchange_step(hop: &mut Hop, sent: &Sent, dim: usize) -> Result<Vec<f32>, HopFailure> {
    let step = Message::Step(Step {
        step: hop.next_step,
        position: sent.position,
        tokens: sent.tokens,
        codec: Some(sent.codec.name().to_owned()),
    });
    hop.next_step += 1;
    let values = sent.tokens as usize * dim;
    let reply = hop
        .link
        .exchange(
            &protocol::encode(&step, &sent.payload),
            sent.codec.encoded_len(values),
        )
        .map_err(HopFailure::Link)?
        .ok_or_else(|| HopFailure::Protocol("stream ended on a step".into()))?;
    let frame = protocol::decode(&reply, sent.codec.encoded_len(values))
        .map_err(|e| HopFailure::Protocol(e.to_string()))?;
    match frame.message {
        Message::Output(o) if o.length == sent.position + sent.tokens => sent
            .codec
            .decode(&frame.payload, values)
            .map_err(|e| HopFailure::Protocol(e.to_string())),
        Message::Fail(f) => Err(HopFailure::Refused(f)),
        other => Err(HopFailure::Protocol(format!("{other:?} to a step"))),
    }
}

/// Runs `history` (a failed hop's steps) through `hops` in order, recording each hop's own
/// history; the steps run, or the server that failed and why.
fn replay(hops: &mut [Hop], history: &[Sent], dim: usize) -> Result<usize, (String, HopFailure)> {
    let mut steps = 0;
    for sent in history {
        let mut input = sent.clone();
        for hop in hops.iter_mut() {
            let out = exchange_step(hop, &input, dim).map_err(|f| (hop.server.clone(), f))?;
            steps += 1;
            hop.history.push(input.clone());
            input.payload = Arc::new(input.codec.encode(&out));
        }
    }
    Ok(steps)
}

impl Session for SwarmSession {
    fn forward(&mut self, tokens: &[u32]) -> kwaainet_core::Result<Vec<f32>> {
        self.forward_tokens(tokens).map_err(|e| match e {
            SwarmError::Local(e) => e,
            SwarmError::ContextFull { .. } => CoreError::InvalidArgument(e.to_string()),
            other => CoreError::Backend(format!("swarm: {other}")),
        })
    }
    fn len(&self) -> usize {
        self.len
    }
    fn max_ctx(&self) -> usize {
        self.config.max_length
    }
}

impl Drop for SwarmSession {
    fn drop(&mut self) {
        let close = protocol::encode(&Message::Close, &[]);
        for hop in &mut self.route {
            // Best effort: a server also frees the session when the stream goes.
            let _ = hop.link.exchange(&close, 0);
        }
    }
}
