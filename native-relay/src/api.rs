//! `kwaainet start`'s OpenAI-compatible API: its flags and `[api]` config table, and the
//! models it serves (the node's model through continuous batching, or through the swarm).
//! The API itself lives in `kwaainet-api`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use kwaainet_api::guard::Keys;
use kwaainet_api::{
    Api, ApiConfig, Backend, LocalConfig, LocalEngine, Metrics, RemoteEngine, ServedModel,
};
use kwaainet_core::LoadSpec;
use serde::Deserialize;

/// Where the API's requests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiBackend {
    /// The whole model here (continuous batching); the default when the node has the model.
    Local,
    /// Through the swarm: this node holds the embedding and head, peers run the blocks.
    Swarm,
    /// No API.
    Off,
}

/// Flags of the API (`kwaainet start`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Where API requests run: local (default with a model), swarm, or off.
    #[arg(long = "api", env = "KWAAINET_API")]
    pub backend: Option<ApiBackend>,
    /// API key clients must send as `Authorization: Bearer` (repeatable or comma-separated).
    /// Required when --http binds a non-loopback address.
    #[arg(
        long = "api-key",
        env = "KWAAINET_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub keys: Vec<String>,
    /// Requests decoded together (continuous batching slots).
    #[arg(long = "api-slots", env = "KWAAINET_API_SLOTS")]
    pub slots: Option<usize>,
    /// Most tokens (prompt + completion) per request.
    #[arg(long = "api-ctx", env = "KWAAINET_API_CTX")]
    pub context: Option<usize>,
    /// Requests waiting for a slot at most (more are answered 429).
    #[arg(long = "api-queue", env = "KWAAINET_API_QUEUE")]
    pub queue: Option<usize>,
    /// Seconds a request may wait for a slot before a 503.
    #[arg(long = "api-queue-timeout", env = "KWAAINET_API_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<u64>,
    /// KV-cache memory all running requests may reserve, MiB.
    #[arg(long = "api-kv-mib", env = "KWAAINET_API_KV_MIB")]
    pub kv_mib: Option<usize>,
    /// Prompt tokens one batched step adds to the decoding rows (chunked prefill).
    #[arg(long = "api-prefill-chunk", env = "KWAAINET_API_PREFILL_CHUNK")]
    pub prefill_chunk: Option<usize>,
    /// Worker threads of the batch engine (default: all cores).
    #[arg(long = "api-threads", env = "KWAAINET_API_THREADS")]
    pub threads: Option<usize>,
    /// Requests per minute per key (or per client address without keys); 0: no limit.
    #[arg(long = "api-rate", env = "KWAAINET_API_RATE")]
    pub rate: Option<u32>,
    /// Origins allowed to call the API from a web page (repeatable or comma-separated;
    /// `*` for any).
    #[arg(long = "api-cors", env = "KWAAINET_API_CORS", value_delimiter = ',')]
    pub cors: Vec<String>,
    /// Largest request body, bytes.
    #[arg(long = "api-max-body", env = "KWAAINET_API_MAX_BODY")]
    pub max_body: Option<usize>,
    /// With `--api swarm`: run blocks only on nodes whose declared region lies in one of
    /// these (comma-separated ISO country codes, EU or EEA; default anywhere).
    #[arg(long = "api-regions", env = "KWAAINET_API_REGIONS")]
    pub regions: Option<String>,
}

/// The `[api]` table of the config file (the flags' names without `api-`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileApi {
    backend: Option<ApiBackend>,
    keys: Vec<String>,
    slots: Option<usize>,
    context: Option<usize>,
    queue: Option<usize>,
    queue_timeout: Option<u64>,
    kv_mib: Option<usize>,
    prefill_chunk: Option<usize>,
    threads: Option<usize>,
    rate: Option<u32>,
    cors: Vec<String>,
    max_body: Option<usize>,
    regions: Option<String>,
}

/// The API's settings once flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    backend: Option<ApiBackend>,
    keys: Vec<String>,
    local: LocalConfig,
    kv_mib: usize,
    threads: Option<usize>,
    rate: u32,
    cors: Vec<String>,
    max_body: usize,
    /// Where swarm-backed requests may run their blocks.
    pub regions: kwaainet_p2p::region::AllowedRegions,
}

impl Settings {
    /// The batch engine's worker threads.
    pub fn engine_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Defaults: 16 slots of up to 2,048 tokens, a queue of 64 waiting a minute at most,
/// 1 GiB of KV cache, 32 prompt rows per step.
pub fn settings(args: &ApiArgs, file: FileApi, http: SocketAddr) -> anyhow::Result<Settings> {
    let keys: Vec<String> = if args.keys.is_empty() {
        file.keys
    } else {
        args.keys.clone()
    }
    .into_iter()
    .filter(|k| !k.trim().is_empty())
    .collect();
    let backend = args.backend.or(file.backend);
    if backend != Some(ApiBackend::Off) && keys.is_empty() && !http.ip().is_loopback() {
        bail!(
            "the HTTP side binds {http}, which is not a loopback address: the API needs a key \
             (--api-key, KWAAINET_API_KEY or `keys` in the [api] table), or --api off"
        );
    }
    let slots = args.slots.or(file.slots).unwrap_or(16);
    let context = args.context.or(file.context).unwrap_or(2048);
    anyhow::ensure!((1..=256).contains(&slots), "--api-slots must be 1 to 256");
    anyhow::ensure!(context >= 16, "--api-ctx must be at least 16");
    Ok(Settings {
        backend,
        keys,
        local: LocalConfig {
            slots,
            prefill_chunk: args
                .prefill_chunk
                .or(file.prefill_chunk)
                .unwrap_or(32)
                .max(1),
            context,
            kv_budget: 0, // set from kv_mib once the model's size per position is known
            max_queue: args.queue.or(file.queue).unwrap_or(64),
            queue_timeout: Duration::from_secs(
                args.queue_timeout
                    .or(file.queue_timeout)
                    .unwrap_or(60)
                    .max(1),
            ),
        },
        kv_mib: args.kv_mib.or(file.kv_mib).unwrap_or(1024),
        threads: args.threads.or(file.threads),
        rate: args.rate.or(file.rate).unwrap_or(0),
        cors: if args.cors.is_empty() {
            file.cors
        } else {
            args.cors.clone()
        },
        max_body: args.max_body.or(file.max_body).unwrap_or(1 << 20),
        regions: kwaainet_p2p::region::AllowedRegions::parse(
            args.regions
                .as_deref()
                .or(file.regions.as_deref())
                .unwrap_or(""),
        )
        .context("--api-regions")?,
    })
}

/// The API over the node's model (`model`, with its SHA-256), or `None` with `--api off`
/// or without a model. With the swarm backend, `swarm` opens sessions through the node.
pub fn build(
    s: &Settings,
    model: Option<(&Path, &str)>,
    audit: Option<kwaainet_api::AuditHook>,
    jobs: Option<kwaainet_api::JobHook>,
    swarm: impl FnOnce(Arc<kwaainet_core::Llama>, String) -> Arc<dyn kwaainet_api::SessionSource>,
) -> anyhow::Result<Option<(Arc<Api>, Arc<prometheus_client::registry::Registry>)>> {
    let Some((path, sha256)) = model else {
        if s.backend.is_some_and(|b| b != ApiBackend::Off) {
            bail!("--api needs a model (--model, or the fetched default model)");
        }
        return Ok(None);
    };
    let backend = s.backend.unwrap_or(ApiBackend::Local);
    if backend == ApiBackend::Off {
        return Ok(None);
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let id = crate::swarm::model_id_of(path, sha256)?;
    let loaded = crate::model::load_spec(path, |config| {
        Ok(match backend {
            ApiBackend::Swarm => LoadSpec {
                blocks: 0..0,
                embed: true,
                head: true,
            },
            _ => LoadSpec::full(config),
        })
    })?;
    let config = loaded.model.config().clone();
    let context = s.local.context.min(config.context_length);
    // Keys and values of every block, f32, per position.
    let per_position = 2 * config.n_layers * config.kv_dim() * 4;
    let kv_budget = (s.kv_mib << 20) / per_position.max(1);
    if kv_budget < context {
        bail!(
            "--api-kv-mib {} holds {kv_budget} positions, less than one context of {context}",
            s.kv_mib
        );
    }
    let local = LocalConfig {
        context,
        kv_budget,
        ..s.local.clone()
    };
    let crate::model::Loaded {
        model: weights,
        tokenizer,
        template,
        ..
    } = loaded;
    let tokenizer = Arc::new(tokenizer);
    let engine = match backend {
        ApiBackend::Swarm => Backend::Swarm(Arc::new(RemoteEngine::new(
            swarm(Arc::clone(&weights), id.clone()),
            Arc::clone(&tokenizer),
            &local,
            Arc::clone(&metrics),
        ))),
        _ => {
            let pool = crate::pool(s.threads)?;
            Backend::Local(Arc::new(LocalEngine::start(
                Arc::clone(&weights),
                Arc::clone(&tokenizer),
                local.clone(),
                Arc::clone(&metrics),
                Some(pool),
            )?))
        }
    };
    let mut aliases = vec![id.split('@').next().unwrap_or(&id).to_owned()];
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        aliases.push(stem.to_owned());
    }
    if let Some(name) = path.file_name().and_then(|s| s.to_str()) {
        aliases.push(name.to_owned());
    }
    aliases.dedup();
    let created = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let served = ServedModel {
        id,
        aliases,
        tokenizer,
        template: template.map(Arc::new),
        context,
        created,
        backend: engine,
    };
    tracing::info!(
        model = %served.id,
        backend = ?backend,
        slots = local.slots,
        context,
        kv_positions = kv_budget,
        keys = s.keys.len(),
        "OpenAI API ready"
    );
    let config = ApiConfig {
        keys: Keys::new(&s.keys),
        rate_per_minute: s.rate,
        rate_burst: s.rate.clamp(1, 20),
        max_body: s.max_body,
        cors_origins: s.cors.clone(),
        audit,
        jobs,
        ..ApiConfig::default()
    };
    Ok(Some((
        Arc::new(Api::new(vec![served], config, metrics)),
        Arc::new(registry),
    )))
}
