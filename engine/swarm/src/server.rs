//! A span server: the blocks `[start, end)` of one model, run for clients' sessions under a
//! KV-cache budget.
//!
//! A [`Connection`] is one stream's state machine: it takes the client's frames one at a
//! time and answers each with one frame (see [`crate::protocol`]). The server never
//! allocates on a client's word beyond its limits: a session reserves `max_length`
//! positions of the node's [`ServerConfig::cache_tokens`] when it opens (else `busy`), and
//! gives them back when it closes, fails or its connection is dropped.
//!
//! Pushes: each open session has a random key; a [`Push`] carrying it (on any stream) queues
//! a step's input in that session's inbox (at most [`INBOX`] waiting, each size-checked like
//! a step), where a `pushed` step takes it, waiting at most [`ServerConfig::push_wait`]. A
//! step that names a next server sends its output there through the server's pusher
//! ([`SpanServer::set_pusher`]) on one stream per session.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use web_time::Instant;

use kwaainet_core::SpanCache;
use kwaainet_core::codec::Codec;
use kwaainet_core::{KvCache, Llama};

use crate::link::{Connector, Link};
use crate::protocol::{self, Fail, FailKind, Message, Open, Opened, Output, Push, PushTo, Step};

/// Most pushed inputs waiting in one session.
pub const INBOX: usize = 4;

/// What a server offers and its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model id clients must ask for (name and content hash: two different files
    /// never mix).
    pub model_id: String,
    /// Positions of KV cache all sessions together may reserve.
    pub cache_tokens: usize,
    /// Most positions one session may ask for.
    pub max_length: usize,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// How long a `pushed` step waits for its input. Zero where the serving thread must not
    /// block (a page's worker): a `pushed` step whose input is not there yet is answered
    /// `no-input` at once, and the client sends the input itself.
    pub push_wait: Duration,
}

impl ServerConfig {
    /// Defaults for `model_id`: 8192 cache positions, sessions of up to 2048, 16 sessions,
    /// pushed inputs awaited 30 s.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            cache_tokens: 8192,
            max_length: 2048,
            max_sessions: 16,
            push_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Budget {
    tokens: usize,
    sessions: usize,
}

/// A pushed input waiting for its step.
#[derive(Debug)]
struct Pushed {
    step: u64,
    position: u32,
    tokens: u32,
    codec: Codec,
    payload: Vec<u8>,
}

/// One session's pushed inputs.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<VecDeque<Pushed>>,
    arrived: Condvar,
}

/// Accounts the energy and carbon of the steps a server runs (the node's footprint).
pub trait StepMeter: Send + Sync {
    /// Accounts one step that kept the server busy for `busy`; the footprint to return
    /// with its output, if any.
    fn step(&self, busy: Duration) -> Option<kwaainet_footprint::Footprint>;
}

/// The blocks a node serves, shared by all its connections.
pub struct SpanServer {
    model: Arc<Llama>,
    blocks: Range<usize>,
    config: ServerConfig,
    used: Mutex<Budget>,
    inboxes: Mutex<HashMap<String, Arc<Inbox>>>,
    pusher: Mutex<Option<Arc<dyn Connector>>>,
    meter: Mutex<Option<Arc<dyn StepMeter>>>,
    counters: Counters,
}

/// What a server has served since it started: the figures a contributor sees (a page's
/// `contribution` event, the node's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    /// Sessions opened.
    pub sessions: u64,
    /// Steps run (repeats answered from the stored output not counted).
    pub steps: u64,
    /// Token positions run through the span.
    pub tokens: u64,
    /// Tokens times blocks: the work done, comparable across span sizes.
    pub block_tokens: u64,
    /// Time spent running steps, in microseconds.
    pub busy_us: u64,
    /// Hidden-state bytes received (step and push payloads).
    pub bytes_in: u64,
    /// Hidden-state bytes sent back.
    pub bytes_out: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicU64,
    steps: AtomicU64,
    tokens: AtomicU64,
    block_tokens: AtomicU64,
    busy_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            sessions: get(&self.sessions),
            steps: get(&self.steps),
            tokens: get(&self.tokens),
            block_tokens: get(&self.block_tokens),
            busy_us: get(&self.busy_us),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl std::fmt::Debug for SpanServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanServer")
            .field("blocks", &self.blocks)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SpanServer {
    /// Serves the blocks `model` holds (it may hold only those: [`kwaainet_core::LoadSpec`]).
    pub fn new(model: Arc<Llama>, config: ServerConfig) -> Self {
        let blocks = model.spec().blocks.clone();
        Self {
            model,
            blocks,
            config,
            used: Mutex::new(Budget::default()),
            inboxes: Mutex::new(HashMap::new()),
            pusher: Mutex::new(None),
            meter: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// What this server has served since it started.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// How this server reaches the next server of a route to push outputs (without one, a
    /// step asking for a push is answered with a `push_error`).
    pub fn set_pusher(&self, pusher: Arc<dyn Connector>) {
        if let Ok(mut p) = self.pusher.lock() {
            *p = Some(pusher);
        }
    }

    fn pusher(&self) -> Option<Arc<dyn Connector>> {
        self.pusher.lock().ok()?.clone()
    }

    /// Who accounts this server's steps: each step's footprint then goes back to the
    /// client with its output.
    pub fn set_meter(&self, meter: Arc<dyn StepMeter>) {
        if let Ok(mut m) = self.meter.lock() {
            *m = Some(meter);
        }
    }

    fn meter(&self) -> Option<Arc<dyn StepMeter>> {
        self.meter.lock().ok()?.clone()
    }

    /// The model's width (values per token of hidden state).
    pub fn dim(&self) -> usize {
        self.model.config().dim
    }

    /// The blocks served.
    pub fn blocks(&self) -> Range<usize> {
        self.blocks.clone()
    }

    /// The model id served.
    pub fn model_id(&self) -> &str {
        &self.config.model_id
    }

    /// Positions of cache not reserved by a session.
    pub fn free_tokens(&self) -> usize {
        let used = self.used.lock().map_or(usize::MAX, |u| u.tokens);
        self.config.cache_tokens.saturating_sub(used)
    }

    /// Measures how fast this server runs a decoding step: tokens per second through one
    /// block (what span records announce and route planners divide by), the median of
    /// `steps` single-token steps after a warm-up, on a scratch cache of its own.
    pub fn measure_throughput(&self, steps: usize) -> Result<f64, kwaainet_core::Error> {
        let steps = steps.max(1);
        let mut cache = self.model.new_cache(self.blocks.clone(), steps + 1)?;
        let dim = self.dim();
        // A plausible hidden state (not all zeros: norms of zeros take shortcuts nowhere,
        // but keep the numbers ordinary).
        let input: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let mut hidden = input.clone();
        self.model.forward_span_in_place(&mut hidden, &mut cache)?;
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            hidden.copy_from_slice(&input);
            let t = Instant::now();
            self.model.forward_span_in_place(&mut hidden, &mut cache)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let step = times[times.len() / 2].max(1e-9);
        Ok(self.blocks.len() as f64 / step)
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.used.lock().map_or(0, |u| u.sessions)
    }

    /// The largest payload a step of a session of `max_length` positions can need (f32).
    fn max_payload(&self) -> usize {
        self.config.max_length * self.model.config().dim * 4
    }

    /// A new stream's state.
    pub fn connection(self: &Arc<Self>) -> Connection {
        Connection {
            server: Arc::clone(self),
            session: None,
        }
    }

    /// Queues a pushed input in the session its key names.
    fn accept_push(&self, push: &Push, payload: Vec<u8>) -> Result<(), Fail> {
        let inbox = self
            .inboxes
            .lock()
            .map_err(|_| fail(FailKind::Internal, "server state poisoned"))?
            .get(&push.key)
            .cloned()
            .ok_or_else(|| fail(FailKind::BadRequest, "no session has that key"))?;
        let codec = Codec::from_name(&push.codec).ok_or_else(|| {
            fail(
                FailKind::BadRequest,
                format!("unknown codec {:?}", push.codec),
            )
        })?;
        let values = push.tokens as usize * self.dim();
        if push.tokens == 0 || payload.len() != codec.encoded_len(values) {
            return Err(fail(
                FailKind::BadRequest,
                format!(
                    "{} payload bytes for {} tokens in {}",
                    payload.len(),
                    push.tokens,
                    codec.name()
                ),
            ));
        }
        let mut queue = inbox
            .queue
            .lock()
            .map_err(|_| fail(FailKind::Internal, "server state poisoned"))?;
        if queue.len() >= INBOX {
            return Err(fail(
                FailKind::Busy,
                format!("{INBOX} pushed inputs already wait in that session"),
            ));
        }
        queue.push_back(Pushed {
            step: push.step,
            position: push.position,
            tokens: push.tokens,
            codec,
            payload,
        });
        inbox.arrived.notify_all();
        Ok(())
    }

    fn reserve(&self, tokens: usize) -> Result<(), Fail> {
        let mut used = self
            .used
            .lock()
            .map_err(|_| fail(FailKind::Internal, "server state poisoned"))?;
        if used.sessions >= self.config.max_sessions {
            return Err(fail(
                FailKind::Busy,
                format!("{} sessions open (the limit)", used.sessions),
            ));
        }
        if used.tokens + tokens > self.config.cache_tokens {
            return Err(fail(
                FailKind::Busy,
                format!(
                    "{tokens} positions asked, {} free",
                    self.config.cache_tokens.saturating_sub(used.tokens)
                ),
            ));
        }
        used.tokens += tokens;
        used.sessions += 1;
        Ok(())
    }

    fn release(&self, tokens: usize) {
        if let Ok(mut used) = self.used.lock() {
            used.tokens = used.tokens.saturating_sub(tokens);
            used.sessions = used.sessions.saturating_sub(1);
        }
    }
}

fn fail(kind: FailKind, message: impl Into<String>) -> Fail {
    Fail {
        kind,
        message: message.into(),
    }
}

struct Session {
    codec: Codec,
    max_length: usize,
    cache: KvCache,
    /// The last step answered: its id, position and reply (a repeat gets it again).
    last: Option<(u64, u32, Vec<u8>)>,
    /// Its push key and inbox (registered in the server while the session lives).
    key: String,
    inbox: Arc<Inbox>,
    /// The stream this session pushes its outputs on, and to whom.
    push_link: Option<(String, Box<dyn Link>)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("codec", &self.codec)
            .field("max_length", &self.max_length)
            .field("positions", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A fresh push key: 128 random bits in hex.
fn new_key() -> Result<String, Fail> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| fail(FailKind::Internal, format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One stream of a [`SpanServer`].
#[derive(Debug)]
pub struct Connection {
    server: Arc<SpanServer>,
    session: Option<Session>,
}

impl Connection {
    /// The most payload bytes a frame on this stream may carry.
    pub fn max_payload(&self) -> usize {
        self.server.max_payload()
    }

    /// Handles one frame from the client; returns the reply frame (`None` after `Close`:
    /// the stream ends).
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let reply = match protocol::decode(frame, self.max_payload()) {
            Err(e) => Err(fail(FailKind::BadRequest, e.to_string())),
            Ok(f) => match f.message {
                Message::Open(open) => self.open(&open).map(|o| (Message::Opened(o), Vec::new())),
                Message::Step(step) => return Some(self.step(&step, &f.payload)),
                Message::Close => {
                    self.close();
                    return None;
                }
                Message::Push(push) => self
                    .server
                    .accept_push(&push, f.payload)
                    .map(|()| (Message::Pushed, Vec::new())),
                other => Err(fail(
                    FailKind::BadRequest,
                    format!("a client does not send {}", kind_name(&other)),
                )),
            },
        };
        Some(match reply {
            Ok((m, payload)) => protocol::encode(&m, &payload),
            Err(f) => protocol::encode(&Message::Fail(f), &[]),
        })
    }

    fn open(&mut self, open: &Open) -> Result<Opened, Fail> {
        let s = &self.server;
        if self.session.is_some() {
            return Err(fail(
                FailKind::BadRequest,
                "a session is already open on this stream",
            ));
        }
        if open.model != s.config.model_id {
            return Err(fail(
                FailKind::NotServed,
                format!(
                    "model {:?} is not served here ({:?} is)",
                    open.model, s.config.model_id
                ),
            ));
        }
        let blocks = open.start as usize..open.end as usize;
        if blocks.is_empty() || blocks.start < s.blocks.start || blocks.end > s.blocks.end {
            return Err(fail(
                FailKind::NotServed,
                format!("blocks {blocks:?} asked, {:?} served", s.blocks),
            ));
        }
        let codec = Codec::from_name(&open.codec).ok_or_else(|| {
            fail(
                FailKind::BadRequest,
                format!("unknown codec {:?}", open.codec),
            )
        })?;
        let max_length = open.max_length as usize;
        if max_length == 0 || max_length > s.config.max_length {
            return Err(fail(
                FailKind::BadRequest,
                format!(
                    "max_length {max_length} (this server allows 1..={})",
                    s.config.max_length
                ),
            ));
        }
        let key = new_key()?;
        s.reserve(max_length)?;
        let cache = match s.model.new_cache(blocks, max_length) {
            Ok(c) => c,
            Err(e) => {
                s.release(max_length);
                return Err(fail(FailKind::Internal, e.to_string()));
            }
        };
        let inbox = Arc::new(Inbox::default());
        if let Ok(mut m) = s.inboxes.lock() {
            m.insert(key.clone(), Arc::clone(&inbox));
        }
        self.session = Some(Session {
            codec,
            max_length,
            cache,
            last: None,
            key: key.clone(),
            inbox,
            push_link: None,
        });
        add(&s.counters.sessions, 1);
        Ok(Opened {
            start: open.start,
            end: open.end,
            max_length: open.max_length,
            key,
        })
    }

    fn step(&mut self, step: &Step, payload: &[u8]) -> Vec<u8> {
        let failed = |f: Fail| protocol::encode(&Message::Fail(f), &[]);
        let Some(session) = self.session.as_mut() else {
            return failed(fail(FailKind::BadRequest, "step before open"));
        };
        if let Some((id, position, reply)) = &session.last
            && *id == step.step
            && *position == step.position
        {
            return reply.clone();
        }
        let pushed;
        let input = if step.pushed {
            match wait_push(&session.inbox, step, self.server.config.push_wait) {
                Ok(p) => {
                    pushed = p;
                    Input {
                        codec: Some(pushed.codec),
                        payload: &pushed.payload,
                    }
                }
                Err(f) => return failed(f),
            }
        } else {
            Input {
                codec: None,
                payload,
            }
        };
        let started = Instant::now();
        let bytes_in = input.payload.len() as u64;
        let (output, codec) = match run_step(&self.server.model, session, step, input) {
            Ok(out) => out,
            Err(f) => return failed(f),
        };
        let busy = started.elapsed();
        let c = &self.server.counters;
        let tokens = u64::from(step.tokens);
        add(&c.steps, 1);
        add(&c.tokens, tokens);
        add(&c.block_tokens, tokens * self.server.blocks.len() as u64);
        add(&c.busy_us, busy.as_micros() as u64);
        let footprint = self.server.meter().and_then(|m| m.step(busy));
        add(&c.bytes_in, bytes_in);
        add(&c.bytes_out, output.len() as u64);
        let push_error = step.push.as_ref().and_then(|to| {
            let pusher = self.server.pusher();
            push_output(session, pusher.as_deref(), to, step, codec, &output).err()
        });
        let out = Output {
            step: step.step,
            length: session.cache.len() as u32,
            push_error,
            footprint,
        };
        let reply = protocol::encode(&Message::Output(out), &output);
        session.last = Some((step.step, step.position, reply.clone()));
        reply
    }

    fn close(&mut self) {
        if let Some(s) = self.session.take() {
            self.server.release(s.max_length);
            if let Ok(mut m) = self.server.inboxes.lock() {
                m.remove(&s.key);
            }
            if let Some((_, mut link)) = s.push_link {
                link.close();
            }
            tracing::debug!("inference session closed");
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// A step's input: its own payload, or a pushed one (in the pusher's codec).
struct Input<'a> {
    codec: Option<Codec>,
    payload: &'a [u8],
}

/// Takes the pushed input of `step` from `inbox`, waiting at most `wait`. Inputs of earlier
/// steps still there are dropped (their steps were answered another way).
fn wait_push(inbox: &Inbox, step: &Step, wait: Duration) -> Result<Pushed, Fail> {
    let deadline = Instant::now() + wait;
    let poisoned = || fail(FailKind::Internal, "server state poisoned");
    let mut queue = inbox.queue.lock().map_err(|_| poisoned())?;
    loop {
        queue.retain(|p| p.step >= step.step);
        if let Some(i) = queue.iter().position(|p| p.step == step.step) {
            let p = queue.remove(i).ok_or_else(poisoned)?;
            if p.position != step.position || p.tokens != step.tokens {
                return Err(fail(
                    FailKind::BadRequest,
                    format!(
                        "pushed input of step {} has {} tokens at {}, the step {} at {}",
                        step.step, p.tokens, p.position, step.tokens, step.position
                    ),
                ));
            }
            return Ok(p);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(
                FailKind::NoInput,
                format!("no input pushed for step {} in {wait:?}", step.step),
            ));
        }
        queue = inbox
            .arrived
            .wait_timeout(queue, left)
            .map_err(|_| poisoned())?
            .0;
    }
}

/// Sends `output` (encoded in `codec`) to the next server as `to` says, on the session's push
/// stream (opened on first use, reopened after a failure).
fn push_output(
    session: &mut Session,
    pusher: Option<&dyn Connector>,
    to: &PushTo,
    step: &Step,
    codec: Codec,
    output: &[u8],
) -> Result<(), String> {
    let pusher = pusher.ok_or("this server does not push")?;
    if session
        .push_link
        .as_ref()
        .is_none_or(|(s, _)| *s != to.server)
    {
        let link = pusher.connect(&to.server).map_err(|e| e.to_string())?;
        session.push_link = Some((to.server.clone(), link));
    }
    let Some((_, link)) = session.push_link.as_mut() else {
        return Err("no push stream".into());
    };
    let push = Message::Push(Push {
        key: to.key.clone(),
        step: to.step,
        position: step.position,
        tokens: step.tokens,
        codec: codec.name().to_owned(),
    });
    let reply = link
        .exchange(&protocol::encode(&push, output), 0)
        .and_then(|r| r.ok_or_else(|| crate::link::LinkError::Closed(to.server.clone())));
    let answer = match reply {
        Ok(bytes) => protocol::decode(&bytes, 0).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match answer {
        Ok(protocol::Frame {
            message: Message::Pushed,
            ..
        }) => Ok(()),
        other => {
            session.push_link = None;
            Err(match other {
                Ok(protocol::Frame {
                    message: Message::Fail(f),
                    ..
                }) => f.message,
                Ok(f) => format!("{:?} to a push", f.message),
                Err(e) => e,
            })
        }
    }
}

/// Runs a step; its output (encoded) and the codec it is in.
fn run_step(
    model: &Llama,
    s: &mut Session,
    step: &Step,
    input: Input<'_>,
) -> Result<(Vec<u8>, Codec), Fail> {
    let bad = |m: String| fail(FailKind::BadRequest, m);
    let (position, tokens) = (step.position as usize, step.tokens as usize);
    if tokens == 0 || position + tokens > s.max_length {
        return Err(bad(format!(
            "{tokens} tokens at position {position} (the session holds 1..={})",
            s.max_length
        )));
    }
    if position > s.cache.len() {
        return Err(bad(format!(
            "position {position} is past the {} positions this session holds",
            s.cache.len()
        )));
    }
    let codec = match &step.codec {
        None => s.codec,
        Some(name) => {
            Codec::from_name(name).ok_or_else(|| bad(format!("unknown codec {name:?}")))?
        }
    };
    let dim = model.config().dim;
    let mut hidden = input
        .codec
        .unwrap_or(codec)
        .decode(input.payload, tokens * dim)
        .map_err(|e| bad(e.to_string()))?;
    // An earlier position rolls the cache back (a client re-running from there).
    s.cache.truncate(position);
    model
        .forward_span_in_place(&mut hidden, &mut s.cache)
        .map_err(|e| fail(FailKind::Internal, e.to_string()))?;
    Ok((codec.encode(&hidden), codec))
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "open",
        Message::Opened(_) => "opened",
        Message::Step(_) => "step",
        Message::Output(_) => "output",
        Message::Fail(_) => "fail",
        Message::Close => "close",
        Message::Push(_) => "push",
        Message::Pushed => "pushed",
    }
}
