//! A span server: the blocks `[start, end)` of one model, run for clients' sessions under a
//! KV-cache budget.
//!
//! A [`Connection`] is one stream's state machine: it takes the client's frames one at a
//! time and answers each with one frame (see [`crate::protocol`]). The server never
//! allocates on a client's word beyond its limits: a session reserves `max_length`
//! positions of the node's [`ServerConfig::cache_tokens`] when it opens (else `busy`), and
//! gives them back when it closes, fails or its connection is dropped.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use kwaainet_core::codec::Codec;
use kwaainet_core::{KvCache, Llama};

use crate::protocol::{self, Fail, FailKind, Message, Open, Opened, Output, Step};

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
}

#[derive(Debug, Default)]
struct Budget {
    tokens: usize,
    sessions: usize,
}

/// The blocks a node serves, shared by all its connections.
#[derive(Debug)]
pub struct SpanServer {
    model: Arc<Llama>,
    blocks: Range<usize>,
    config: ServerConfig,
    used: Mutex<Budget>,
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
        }
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

#[derive(Debug)]
struct Session {
    codec: Codec,
    max_length: usize,
    cache: KvCache,
    /// The last step answered: its id, position and reply (a repeat gets it again).
    last: Option<(u64, u32, Vec<u8>)>,
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
        s.reserve(max_length)?;
        let cache = match s.model.new_cache(blocks, max_length) {
            Ok(c) => c,
            Err(e) => {
                s.release(max_length);
                return Err(fail(FailKind::Internal, e.to_string()));
            }
        };
        self.session = Some(Session {
            codec,
            max_length,
            cache,
            last: None,
        });
        Ok(Opened {
            start: open.start,
            end: open.end,
            max_length: open.max_length,
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
        match run_step(&self.server.model, session, step, payload) {
            Ok(reply) => {
                session.last = Some((step.step, step.position, reply.clone()));
                reply
            }
            Err(f) => failed(f),
        }
    }

    fn close(&mut self) {
        if self.session.take().is_some_and(|s| {
            self.server.release(s.max_length);
            true
        }) {
            tracing::debug!("inference session closed");
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_step(model: &Llama, s: &mut Session, step: &Step, payload: &[u8]) -> Result<Vec<u8>, Fail> {
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
    let mut hidden = codec
        .decode(payload, tokens * dim)
        .map_err(|e| bad(e.to_string()))?;
    // An earlier position rolls the cache back (a client re-running from there).
    s.cache.truncate(position);
    model
        .forward_span(&mut hidden, &mut s.cache)
        .map_err(|e| fail(FailKind::Internal, e.to_string()))?;
    let out = Output {
        step: step.step,
        length: s.cache.len() as u32,
    };
    Ok(protocol::encode(
        &Message::Output(out),
        &codec.encode(&hidden),
    ))
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "open",
        Message::Opened(_) => "opened",
        Message::Step(_) => "step",
        Message::Output(_) => "output",
        Message::Fail(_) => "fail",
        Message::Close => "close",
    }
}
