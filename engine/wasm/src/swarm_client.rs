//! A page generates through the swarm: [`SwarmClient`] holds the model's embedding and
//! output head (with its tokenizer and chat template) and runs every block on span servers,
//! through `kwaainet-swarm`'s [`SwarmSession`]: the route planner, bans, failover and
//! history replay a native client uses, and the engine's own generation loop (sampling,
//! stop strings, streaming by steps) on top.
//!
//! How the servers are reached is the host's business (a [`Connector`]): in a page, links to
//! the page's P2P node, which opens `/kwaainet/inference/1.0.0` streams through the relay
//! (see the bindings); in tests, servers of this process.
//!
//! A page's client carries every hop's output itself (`push` off): a page cannot take
//! pushes, and a route through pages gains nothing from them.

use std::cell::RefCell;
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use kwaainet_core::chat::{self, ChatTemplate};
use kwaainet_core::codec::Codec;
use kwaainet_core::generate::{Generator, Session};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::runtime::check_context;
use kwaainet_core::{Error as CoreError, Llama, LlamaConfig, LoadSpec, Tokenizer};
use kwaainet_swarm::{
    ClientConfig, CodecChoice, Connector, ServerEntry, SwarmError, SwarmSession, SwarmStats,
};
use serde::Serialize;

use crate::engine::{Request, StepResult, options, report, with_prompt};
use crate::error::{EngineError, ErrorCode};
use crate::span::ModelName;

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Most servers one generation may route over (a directory's report lists at most 256).
pub const MAX_SERVERS: usize = 256;
/// Longest server id (a peer id is about 52 characters).
pub const MAX_SERVER_ID: usize = 128;

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::new(ErrorCode::InvalidArgument, m)
}

/// The [`SwarmSession`] of a generation, keeping what a failure of the swarm was: the
/// generation loop sees only the engine's errors, and the host must tell "no route" and
/// "gave up failing over" from a bug of the engine.
struct PageSession {
    inner: SwarmSession,
    failure: RefCell<Option<String>>,
}

impl Session for PageSession {
    fn forward(&mut self, tokens: &[u32]) -> kwaainet_core::Result<Vec<f32>> {
        self.inner.forward_tokens(tokens).map_err(|e| match e {
            SwarmError::Local(e) => e,
            SwarmError::ContextFull { needed, max } => CoreError::ContextFull { needed, max },
            other => {
                let message = other.to_string();
                *self.failure.borrow_mut() = Some(message.clone());
                CoreError::Backend(message)
            }
        })
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn max_ctx(&self) -> usize {
        self.inner.max_ctx()
    }
}

/// Where a generation went and what it cost: its route, failovers and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwarmReport {
    /// The hops in use: each server and its blocks.
    pub route: Vec<Hop>,
    /// Steps the servers answered (one per hop and forward pass).
    pub steps: u64,
    /// Hops replaced after a failure.
    pub failovers: u64,
    /// Failovers that replayed history into the new servers.
    pub replays: u64,
    /// Hidden-state bytes sent.
    pub bytes_sent: u64,
    /// Hidden-state bytes received.
    pub bytes_received: u64,
    /// The energy and carbon the servers reported for their steps, summed (`None` when no
    /// server reports one).
    pub footprint: Option<RouteFootprint>,
    /// Time this page spent on its own part (embedding and head), ms.
    pub local_busy_ms: u64,
}

/// What a route's servers reported their steps cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteFootprint {
    /// Energy, µWh.
    pub energy_uwh: u64,
    /// Carbon, µg CO2e.
    pub carbon_ug: u64,
    /// The weakest method among the hops (`measured`, `modelled`, `declared`).
    pub method: kwaainet_footprint::Method,
    /// The grids the hops ran on.
    pub regions: Vec<String>,
}

/// One hop of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// The server (a peer id in a page).
    pub server: String,
    /// Its first block on this route.
    pub start: u64,
    /// One past its last.
    pub end: u64,
}

fn to_report(route: Vec<(String, Range<usize>)>, s: &SwarmStats) -> SwarmReport {
    SwarmReport {
        route: route
            .into_iter()
            .map(|(server, b)| Hop {
                server,
                start: b.start as u64,
                end: b.end as u64,
            })
            .collect(),
        steps: s.steps as u64,
        failovers: s.failovers as u64,
        replays: s.replays as u64,
        bytes_sent: s.bytes_sent as u64,
        bytes_received: s.bytes_received as u64,
        footprint: s.hops_footprint.as_ref().map(|f| RouteFootprint {
            energy_uwh: f.energy_uwh,
            carbon_ug: f.carbon_ug,
            method: f.energy_method,
            regions: f.regions.clone(),
        }),
        local_busy_ms: u64::try_from(s.local_busy.as_millis()).unwrap_or(u64::MAX),
    }
}

/// What a generation through the swarm asks for, besides the request itself.
#[derive(Debug, Clone)]
pub struct SwarmRoute {
    /// The servers known (from the swarm's directory): the planner picks among them.
    pub servers: Vec<ServerEntry>,
    /// Hidden-state codec.
    pub codec: CodecChoice,
    /// The session's id on every server (unique: a random id from the host).
    pub session_id: String,
}

/// The running generation.
struct Active {
    id: u64,
    generator: Generator<PageSession>,
}

/// A model's embedding and head, generating through span servers (see the
/// [module](self) docs). One generation at a time: a new `start` ends the previous one and
/// closes its streams.
pub struct SwarmClient {
    local: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    model_id: String,
    blocks: usize,
    max_ctx: usize,
    active: Option<Active>,
    next_id: u64,
}

impl std::fmt::Debug for SwarmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmClient")
            .field("model_id", &self.model_id)
            .field("blocks", &self.blocks)
            .field("max_ctx", &self.max_ctx)
            .field("active", &self.active.as_ref().map(|a| a.id))
            .finish_non_exhaustive()
    }
}

impl SwarmClient {
    /// Loads the embedding, the head, the tokenizer and the chat template of the GGUF file
    /// `bytes` (no block), for generations of up to `max_ctx` positions (default: 2048, or
    /// the model's context if shorter).
    pub fn load(bytes: &[u8], model: ModelName, max_ctx: Option<usize>) -> Result<Self> {
        let gguf = Gguf::read(&mut Cursor::new(bytes)).map_err(CoreError::from)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let model_id = model.resolve(&gguf)?;
        let max_ctx = max_ctx.unwrap_or(config.context_length.min(2048));
        check_context(&config, max_ctx)?;
        let spec = LoadSpec {
            blocks: 0..0,
            embed: true,
            head: true,
        };
        let local = Llama::load(&gguf, &mut Cursor::new(bytes), spec)?;
        Ok(Self {
            local: Arc::new(local),
            tokenizer: Arc::new(Tokenizer::from_gguf(&gguf)?),
            template: ChatTemplate::from_gguf(&gguf)?,
            model_id,
            blocks: config.n_layers,
            max_ctx,
            active: None,
            next_id: 0,
        })
    }

    /// The id the model's servers announce (`name@sha256-prefix`).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The model's blocks (all of them run on servers).
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Most positions of one generation.
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Starts a generation of `req` over `route.servers`, ending the previous one. Nothing
    /// goes out until the first step. Refuses a server list that cannot be right (none,
    /// too many, blocks outside the model, bad ids) before anything runs.
    pub fn start(
        &mut self,
        req: &Request,
        route: SwarmRoute,
        connector: Arc<dyn Connector>,
    ) -> Result<u64> {
        self.active = None;
        let SwarmRoute {
            servers,
            codec,
            session_id,
        } = route;
        if servers.is_empty() || servers.len() > MAX_SERVERS {
            return Err(invalid(format!(
                "servers: 1 to {MAX_SERVERS}, got {}",
                servers.len()
            )));
        }
        for s in &servers {
            if s.id.is_empty() || s.id.len() > MAX_SERVER_ID {
                return Err(invalid(format!(
                    "server id: 1 to {MAX_SERVER_ID} characters"
                )));
            }
            if s.blocks.start >= s.blocks.end || s.blocks.end > self.blocks {
                return Err(invalid(format!(
                    "server {}: blocks {}..{} of a model with {} blocks",
                    s.id, s.blocks.start, s.blocks.end, self.blocks
                )));
            }
        }
        if session_id.is_empty() || session_id.len() > 128 {
            return Err(invalid("sessionId: 1 to 128 characters"));
        }
        let opts = options(req);
        opts.sampler.validate()?;
        let prompt = with_prompt(req, |p| {
            Ok(chat::prompt_ids(
                &self.tokenizer,
                self.template.as_ref(),
                p,
            )?)
        })?;
        if prompt.len() > self.max_ctx {
            return Err(CoreError::ContextFull {
                needed: prompt.len(),
                max: self.max_ctx,
            }
            .into());
        }
        // Each server reserves a session's whole length when it opens: ask for what this
        // request can use (its prompt and answer), not the whole context.
        let max_length = self
            .max_ctx
            .min(prompt.len().saturating_add(opts.max_tokens).max(1));
        let config = ClientConfig {
            max_length,
            codec,
            push: false,
            ..ClientConfig::new(self.model_id.clone())
        };
        let session = PageSession {
            inner: SwarmSession::new(
                Arc::clone(&self.local),
                servers,
                connector,
                config,
                session_id,
            ),
            failure: RefCell::new(None),
        };
        let generator = Generator::new(session, &prompt, &opts)?;
        let id = self.next_id;
        self.next_id += 1;
        self.active = Some(Active { id, generator });
        Ok(id)
    }

    /// Steps generation `id`: the prefill through the route on the first call, then up to
    /// `max_tokens` decode steps. A failure of the swarm (no server covers some blocks,
    /// failover gave up) is [`ErrorCode::Swarm`] and ends the generation.
    pub fn step(&mut self, id: u64, max_tokens: usize) -> Result<StepResult> {
        let active = match &mut self.active {
            Some(a) if a.id == id => a,
            _ => return Err(CoreError::Ended.into()),
        };
        match active.generator.run_steps(&self.tokenizer, max_tokens) {
            Ok(batch) => Ok(report(batch)),
            Err(e) => {
                let swarm = active.generator.session().failure.borrow_mut().take();
                // Its servers' caches no longer agree: this generation cannot go on.
                self.active = None;
                Err(match swarm {
                    Some(message) => EngineError::new(ErrorCode::Swarm, message),
                    None => e.into(),
                })
            }
        }
    }

    /// Generation `id`'s route and counters (`None` once it ended).
    pub fn report(&self, id: u64) -> Option<SwarmReport> {
        let a = self.active.as_ref().filter(|a| a.id == id)?;
        let s = &a.generator.session().inner;
        Some(to_report(s.route(), s.stats()))
    }

    /// Ends the running generation: its streams close and the servers free its sessions.
    pub fn end(&mut self) {
        self.active = None;
    }
}

/// The codec named `name` (`f32`, `f16`, `q8_0`, `blockwise8`), or `auto` (by the size of
/// each step).
pub fn codec_choice(name: &str) -> Result<CodecChoice> {
    if name == "auto" {
        return Ok(CodecChoice::Auto);
    }
    Codec::from_name(name)
        .map(CodecChoice::Fixed)
        .ok_or_else(|| {
            invalid(format!(
                "codec {name:?}: auto, {}",
                Codec::ALL.map(Codec::name).join(", ")
            ))
        })
}
