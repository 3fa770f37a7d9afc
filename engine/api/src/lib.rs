#![doc = include_str!("../README.md")]
//!
//! KwaaiNet's OpenAI-compatible API, served on the node's HTTP side.
//!
//! | Route | What |
//! |---|---|
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models this node serves, locally or through the swarm |
//! | `POST /v1/chat/completions` | chat, with the model's own template; JSON or server-sent events |
//! | `POST /v1/completions` | text completion; `echo` + `logprobs` give the prompt's log-probabilities |
//! | `GET /health` | `ok` with the slots in use, or 503 while no model is ready |
//!
//! Local models run through continuous batching ([`engine::LocalEngine`]): concurrent
//! requests share every pass over the weights, join between steps, leave when done or
//! when their client disconnects. Models the node does not hold run through the swarm
//! ([`engine::RemoteEngine`] over a [`engine::SessionSource`]). Errors have OpenAI's shape
//! ([`error::ApiError`]); keys, rate limits, CORS and size limits are in [`ApiConfig`].

use std::sync::Arc;
use std::time::Duration;

use kwaainet_core::{ChatTemplate, Tokenizer};

pub mod audit;
pub mod engine;
pub mod error;
pub mod guard;
pub mod metrics;
pub mod openai;
mod routes;

pub use audit::{AuditEvent, AuditHook, JobHook, JobReport};
pub use engine::{JobCost, LocalConfig, LocalEngine, RemoteEngine, RemoteSession, SessionSource};
pub use error::ApiError;
pub use metrics::Metrics;
pub use routes::router;

/// Where a model's requests run.
#[derive(Debug, Clone)]
pub enum Backend {
    /// This node holds the whole model: continuous batching here.
    Local(Arc<LocalEngine>),
    /// Through the swarm's servers.
    Swarm(Arc<RemoteEngine>),
}

/// A model the API offers.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// Its id in `/v1/models` (the swarm's model id: name and file hash).
    pub id: String,
    /// Other names requests may use (the GGUF name, the file name).
    pub aliases: Vec<String>,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Its chat template (ChatML when it ships none).
    pub template: Option<Arc<ChatTemplate>>,
    /// Most positions (prompt + completion) per request.
    pub context: usize,
    /// Unix seconds of its creation (the file's modification time).
    pub created: u64,
    /// Where it runs.
    pub backend: Backend,
}

impl ServedModel {
    /// Whether `name` names this model.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }
}

/// Limits and access rules of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Accepted keys (none: open, loopback only).
    pub keys: guard::Keys,
    /// Requests per minute per key (or per client address); 0: no limit.
    pub rate_per_minute: u32,
    /// Burst above the rate.
    pub rate_burst: u32,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Origins allowed to call the API from a page (`*` for any); none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Interval of keep-alive comments on quiet streams.
    pub keep_alive: Duration,
    /// Where each decision about a request goes (an audit log); none: not recorded.
    pub audit: Option<AuditHook>,
    /// Where each finished request is accounted (energy, carbon); none: not accounted.
    pub jobs: Option<JobHook>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            keys: guard::Keys::default(),
            rate_per_minute: 0,
            rate_burst: 20,
            max_body: 1 << 20,
            cors_origins: Vec::new(),
            keep_alive: Duration::from_secs(15),
            audit: None,
            jobs: None,
        }
    }
}

/// The API's state: its models, rules and metrics.
#[derive(Debug)]
pub struct Api {
    models: Vec<ServedModel>,
    config: ApiConfig,
    limits: guard::RateLimit,
    metrics: Arc<Metrics>,
}

impl Api {
    /// An API over `models` (the first is the default for requests naming none).
    pub fn new(models: Vec<ServedModel>, config: ApiConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            limits: guard::RateLimit::new(config.rate_per_minute, config.rate_burst),
            models,
            config,
            metrics,
        }
    }

    /// The models offered.
    pub fn models(&self) -> &[ServedModel] {
        &self.models
    }

    /// Stops the local engines (their requests fail with 503).
    pub fn stop(&self) {
        for m in &self.models {
            if let Backend::Local(e) = &m.backend {
                e.stop();
            }
        }
    }
}
