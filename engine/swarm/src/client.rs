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
use std::time::Duration;

use web_time::Instant;

use kwaainet_core::codec::Codec;
use kwaainet_core::generate::Session;
use kwaainet_core::{Error as CoreError, Llama};

use crate::link::{Connector, Link, LinkError};
use crate::protocol::{self, Fail, FailKind, Message, Open, Push, PushTo, Step};
use crate::route::{self, Costs};

/// A server the client may route through (from the DHT's span records).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEntry {
    /// How the [`Connector`] reaches it.
    pub id: String,
    /// The blocks it serves.
    pub blocks: Range<usize>,
    /// Its announced throughput: tokens per second through one block (higher is faster).
    pub throughput: Option<f64>,
    /// The round trip to it, as this client measured it.
    pub rtt: Option<Duration>,
    /// Cache positions it announced free.
    pub free_cache: Option<usize>,
}

impl ServerEntry {
    /// A server of `blocks` with nothing measured yet.
    pub fn new(id: impl Into<String>, blocks: Range<usize>) -> Self {
        Self {
            id: id.into(),
            blocks,
            throughput: None,
            rtt: None,
            free_cache: None,
        }
    }
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
    /// The route planner's cost model.
    pub costs: Costs,
    /// Servers push each output to the next server of the route (one pass along the chain
    /// per step); off, every hop's output comes back to the client, which sends it on.
    pub push: bool,
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
            costs: Costs::default(),
            push: true,
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
    /// An earlier forward pass failed half-way through the route: the servers' caches no
    /// longer agree, so this session ends (start a new one).
    #[error("the session cannot go on after an earlier failure: {reason}")]
    Broken {
        /// The earlier failure.
        reason: String,
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
    /// Hop inputs that went server to server (pushed) instead of through the client.
    pub pushed: usize,
    /// Pushes a server could not make, which the client made instead.
    pub client_pushes: usize,
    /// The energy and carbon the route's servers reported for the steps they ran
    /// (replays included), summed: regions joined, the weakest method. `None` until a
    /// server reports one.
    pub hops_footprint: Option<kwaainet_footprint::Footprint>,
    /// Time this client spent on its own part (embedding and head).
    pub local_busy: Duration,
}

/// Most regions a route's footprint lists (a server cannot grow the client's memory by
/// naming a new region at every step).
pub const MAX_ROUTE_REGIONS: usize = 32;

impl SwarmStats {
    /// Adds a hop's reported footprint to the route's (a malformed one is dropped).
    fn absorb(&mut self, server: &str, hop: Option<kwaainet_footprint::Footprint>) {
        let Some(hop) = hop else { return };
        let sane = hop.regions.len() <= 4
            && hop
                .regions
                .iter()
                .all(|r| !r.is_empty() && r.len() <= 32 && r.chars().all(|c| c.is_ascii_graphic()));
        if !sane {
            tracing::debug!(%server, "a hop's footprint names odd regions: not counted");
            return;
        }
        match &mut self.hops_footprint {
            None => self.hops_footprint = Some(hop),
            Some(total) => {
                let mut hop = hop;
                hop.regions.retain(|r| {
                    total.regions.contains(r) || total.regions.len() < MAX_ROUTE_REGIONS
                });
                total.add(&hop);
                total.regions.truncate(MAX_ROUTE_REGIONS);
            }
        }
    }
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
    /// The session's push key.
    key: String,
    /// A `pushed` step sent and not answered yet: its id.
    pending: Option<u64>,
}

impl Hop {
    fn take_step_id(&mut self) -> u64 {
        let id = self.next_step;
        self.next_step += 1;
        id
    }
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
    /// Why the session cannot go on (a forward pass failed half-way).
    broken: Option<String>,
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
            broken: None,
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
        if let Some(reason) = &self.broken {
            return Err(SwarmError::Broken {
                reason: reason.clone(),
            });
        }
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
        let started = Instant::now();
        let hidden = self.local.embed(tokens)?;
        self.stats.local_busy += started.elapsed();
        let codec = match self.config.codec {
            CodecChoice::Fixed(c) => c,
            CodecChoice::Auto => Codec::auto(hidden.len()),
        };
        let input = Sent {
            position: self.len as u32,
            tokens: n as u32,
            codec,
            payload: Arc::new(codec.encode(&hidden)),
        };
        let output = match self.run_route(input) {
            Ok(output) => output,
            Err(e) => {
                // Some hops may hold this step and others not, and pushed steps may still
                // wait: the route cannot be trusted any more. End every session now.
                self.broken = Some(e.to_string());
                for hop in &mut self.route {
                    hop.link.close();
                }
                self.route.clear();
                return Err(e);
            }
        };
        self.len += n;
        let values = n * self.local.config().dim;
        let started = Instant::now();
        let hidden = codec
            .decode(&output.payload, values)
            .map_err(|e| CoreError::Backend(format!("swarm: last hop's output: {e}")))?;
        let logits = self.local.logits(&hidden)?;
        self.stats.local_busy += started.elapsed();
        Ok(logits)
    }

    /// Runs `input` through every hop of the route (failing over as needed); the last
    /// hop's output.
    fn run_route(&mut self, mut input: Sent) -> Result<Sent, SwarmError> {
        if self.config.push && self.route.len() > 1 {
            self.send_ahead(&input);
        }
        let mut failovers = 0;
        let mut i = 0;
        while i < self.route.len() {
            match self.step(i, &input) {
                Ok(output) => {
                    self.route[i].history.push(input.clone());
                    input.payload = Arc::new(output);
                    i += 1;
                }
                Err(HopFailure::Refused(f)) if f.kind == FailKind::NoInput => {
                    // The pushed input never came: the next attempt sends it.
                    tracing::debug!(server = %self.route[i].server, "no pushed input: sending it");
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
        Ok(input)
    }

    /// Push mode: sends the step to the first hop and a `pushed` step to every other, each
    /// pushing its output to the next, so the input crosses the chain once. A hop whose
    /// send fails is left without a pending step (answered the usual way, or failed over).
    fn send_ahead(&mut self, input: &Sent) {
        for hop in &mut self.route {
            hop.pending = Some(hop.take_step_id());
        }
        for i in 0..self.route.len() {
            let push = self.push_target(i);
            let hop = &mut self.route[i];
            let id = hop.pending.unwrap_or_default();
            let frame = step_frame(id, input, i > 0, push);
            if let Err(e) = hop.link.send(&frame) {
                tracing::debug!(server = %hop.server, error = %e, "cannot send ahead");
                hop.pending = None;
            } else if i == 0 {
                self.stats.bytes_sent += input.payload.len();
            }
        }
    }

    /// Where hop `i` pushes its output: the next hop, when that one waits for it.
    fn push_target(&self, i: usize) -> Option<PushTo> {
        let next = self.route.get(i + 1)?;
        Some(PushTo {
            server: next.server.clone(),
            key: next.key.clone(),
            step: next.pending?,
        })
    }

    /// Hop `i`'s output for `input` (encoded): the answer to its pending step, or of a step
    /// sent now. An output the server could not push is sent on by the client.
    fn step(&mut self, i: usize, input: &Sent) -> Result<Vec<u8>, HopFailure> {
        let dim = self.local.config().dim;
        let was_pending = self.route[i].pending.take().is_some();
        if !was_pending {
            let push = self.push_target(i);
            let hop = &mut self.route[i];
            let frame = step_frame(hop.take_step_id(), input, false, push);
            hop.link.send(&frame).map_err(HopFailure::Link)?;
            self.stats.bytes_sent += input.payload.len();
        }
        let HopOutput {
            payload: output,
            push_error,
            footprint,
        } = recv_output(&mut *self.route[i].link, input, dim)?;
        self.stats.absorb(&self.route[i].server, footprint);
        self.stats.steps += 1;
        self.stats.bytes_received += output.len();
        let Some(to) = self.push_target(i) else {
            return Ok(output);
        };
        if let Some(reason) = push_error {
            tracing::debug!(server = %self.route[i].server, %reason, "push failed: the client sends the input");
            self.stats.client_pushes += 1;
            let pushed = self.push(&to, input, &output);
            if let Err(e) = pushed {
                // The next hop cannot get its input: end its session so it fails over.
                tracing::debug!(server = %to.server, error = %e, "cannot push either");
                let next = &mut self.route[i + 1];
                next.link.close();
                next.pending = None;
            }
        } else {
            self.stats.pushed += 1;
        }
        Ok(output)
    }

    /// Pushes `output` (the answer to `input`) to `to` from the client.
    fn push(&mut self, to: &PushTo, input: &Sent, output: &[u8]) -> Result<(), HopFailure> {
        let mut link = self
            .connector
            .connect(&to.server)
            .map_err(HopFailure::Link)?;
        let push = Message::Push(Push {
            key: to.key.clone(),
            step: to.step,
            position: input.position,
            tokens: input.tokens,
            codec: input.codec.name().to_owned(),
        });
        let reply = link
            .exchange(&protocol::encode(&push, output), 0)
            .map_err(HopFailure::Link)?
            .ok_or_else(|| HopFailure::Protocol("stream ended on a push".into()))?;
        self.stats.bytes_sent += output.len();
        match protocol::decode(&reply, 0).map_err(|e| HopFailure::Protocol(e.to_string()))? {
            protocol::Frame {
                message: Message::Pushed,
                ..
            } => Ok(()),
            protocol::Frame {
                message: Message::Fail(f),
                ..
            } => Err(HopFailure::Refused(f)),
            other => Err(HopFailure::Protocol(format!(
                "{:?} to a push",
                other.message
            ))),
        }
    }

    /// Replaces hop `i` by a new segment over its blocks and replays its history there.
    fn fail_over(&mut self, i: usize) -> Result<(), SwarmError> {
        let mut old = self.route.remove(i);
        old.link.close();
        self.ban(&old.server);
        self.stats.failovers += 1;
        let dim = self.local.config().dim;
        let mut attempts = 0;
        loop {
            let mut hops = self.open_segment(old.blocks.clone())?;
            match replay(&mut hops, &old.history, dim, &mut self.stats) {
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

    /// Opens sessions on the cheapest route over `blocks` ([`crate::route::plan`]) through
    /// the servers not banned. A server that refuses or cannot be reached is banned and the
    /// rest re-planned from there.
    fn open_segment(&mut self, blocks: Range<usize>) -> Result<Vec<Hop>, SwarmError> {
        let mut hops = Vec::new();
        let mut at = blocks.start;
        // Each failure bans one more server: bounded by the directory's size.
        for _ in 0..=self.servers.len() {
            if at >= blocks.end {
                break;
            }
            let now = Instant::now();
            let plan = route::plan(
                &self.servers,
                at..blocks.end,
                self.config.max_length,
                &self.config.costs,
                |s| !self.is_banned(&s.id, now),
            )
            .map_err(|missing| SwarmError::NoRoute { missing })?;
            for (k, span) in plan {
                let id = self.servers[k].id.clone();
                match self.open_hop(&id, span.clone()) {
                    Ok(hop) => {
                        at = span.end;
                        hops.push(hop);
                    }
                    Err(failure) => {
                        tracing::warn!(server = %id, %failure, "open failed");
                        self.ban(&id);
                        break;
                    }
                }
            }
        }
        if at < blocks.end {
            return Err(SwarmError::NoRoute {
                missing: at..blocks.end,
            });
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
                key: o.key,
                pending: None,
            }),
            protocol::Frame {
                message: Message::Fail(f),
                ..
            } => Err(HopFailure::Refused(f)),
            other => Err(HopFailure::Protocol(format!("{:?} to open", other.message))),
        }
    }
}

/// The frame of step `id` for `input` (without its payload when `pushed`).
fn step_frame(id: u64, input: &Sent, pushed: bool, push: Option<PushTo>) -> Vec<u8> {
    let step = Message::Step(Step {
        step: id,
        position: input.position,
        tokens: input.tokens,
        codec: Some(input.codec.name().to_owned()),
        pushed,
        push,
    });
    protocol::encode(&step, if pushed { &[] } else { &input.payload })
}

/// A hop's answer to a step.
struct HopOutput {
    /// The output (encoded, checked for size).
    payload: Vec<u8>,
    /// Why the hop could not push it, if it could not.
    push_error: Option<String>,
    /// What the step cost the hop, if it says.
    footprint: Option<kwaainet_footprint::Footprint>,
}

/// Reads a hop's answer to the step of `input`.
fn recv_output(link: &mut dyn Link, input: &Sent, dim: usize) -> Result<HopOutput, HopFailure> {
    let expected = input.codec.encoded_len(input.tokens as usize * dim);
    let reply = link
        .recv(expected)
        .map_err(HopFailure::Link)?
        .ok_or_else(|| HopFailure::Protocol("stream ended on a step".into()))?;
    let frame =
        protocol::decode(&reply, expected).map_err(|e| HopFailure::Protocol(e.to_string()))?;
    match frame.message {
        Message::Output(o)
            if o.length == input.position + input.tokens && frame.payload.len() == expected =>
        {
            Ok(HopOutput {
                payload: frame.payload,
                push_error: o.push_error,
                footprint: o.footprint,
            })
        }
        Message::Fail(f) => Err(HopFailure::Refused(f)),
        other => Err(HopFailure::Protocol(format!("{other:?} to a step"))),
    }
}

/// Runs `history` (a failed hop's steps) through `hops` in order, recording each hop's own
/// history (and the servers' footprints in `stats`); the steps run, or the server that
/// failed and why.
fn replay(
    hops: &mut [Hop],
    history: &[Sent],
    dim: usize,
    stats: &mut SwarmStats,
) -> Result<usize, (String, HopFailure)> {
    let mut steps = 0;
    for sent in history {
        let mut input = sent.clone();
        for hop in hops.iter_mut() {
            let frame = step_frame(hop.take_step_id(), &input, false, None);
            let out = hop
                .link
                .send(&frame)
                .map_err(HopFailure::Link)
                .and_then(|()| recv_output(&mut *hop.link, &input, dim))
                .map_err(|f| (hop.server.clone(), f))?;
            steps += 1;
            stats.absorb(&hop.server, out.footprint);
            hop.history.push(input.clone());
            input.payload = Arc::new(out.payload);
        }
    }
    Ok(steps)
}

impl Session for SwarmSession {
    fn forward(&mut self, tokens: &[u32]) -> kwaainet_core::Result<Vec<f32>> {
        self.forward_tokens(tokens).map_err(|e| match e {
            SwarmError::Local(e) => e,
            SwarmError::ContextFull { needed, max } => CoreError::ContextFull { needed, max },
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
        for hop in &mut self.route {
            // Best effort: a server also frees the session when the stream goes.
            hop.link.close();
        }
    }
}
