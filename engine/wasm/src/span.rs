//! A page serves a span of a model's blocks to the swarm: [`SpanHost`] holds
//! `kwaainet-swarm`'s [`SpanServer`] (the same sessions, step semantics, limits and codecs as
//! a native node's) and one protocol connection per inbound stream, fed frame by frame by
//! the page's P2P node (`/kwaainet/inference/1.0.0` through the relay circuit).
//!
//! A page's worker must not block: pushed steps are never waited for (`push_wait` zero:
//! the client sends the input itself) and the server pushes nothing on (no pusher: the
//! client carries the output to the next hop).

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use kwaainet_core::gguf::Gguf;
use kwaainet_core::{Llama, LlamaConfig, LoadSpec};
use kwaainet_footprint::grid::{self, GridMix};
use kwaainet_footprint::meter::{DeviceClass, DeviceModel, EnergySource as _, Mark};
use kwaainet_footprint::{Footprint, Usage};
use kwaainet_swarm::server::Connection;
use kwaainet_swarm::{ServerConfig, ServerStats, SpanServer};

use crate::error::{EngineError, ErrorCode};

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Protocol connections (inbound streams) one page serves at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The most KV-cache positions a page may offer (all sessions together).
pub const MAX_CACHE_TOKENS: usize = 1 << 16;

/// What the page asks for: which blocks and within which limits.
#[derive(Debug, Clone)]
pub struct SpanOptions {
    /// The id the span is announced under: the file's GGUF name and the start of its
    /// SHA-256 ([`kwaainet_swarm::model_id`], as a native node names it).
    pub model: ModelName,
    /// The blocks, `start..end`.
    pub blocks: Range<usize>,
    /// KV-cache positions all sessions together may hold.
    pub cache_tokens: usize,
    /// Most positions one session may ask for (default: the cache, within the model's
    /// context, so a client asking for its whole context is served).
    pub max_length: Option<usize>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// The device's class: each served step's energy is its busy time × that class's watts.
    pub device: DeviceClass,
    /// The grid the device draws from (ISO 3166 alpha-2), if the site declares it; else the
    /// world's mean.
    pub region: Option<String>,
}

/// Accounts the page's served steps: busy time × its device class's watts (`modelled`: a
/// browser reads no power counter), at its grid's intensity; each step's footprint goes
/// back to its client, and the totals into the page's contribution.
#[derive(Debug)]
pub struct PageMeter {
    model: DeviceModel,
    mix: GridMix,
    /// Energy (µWh) and carbon (µg) of every step served.
    totals: std::sync::Mutex<(u64, u64)>,
}

impl PageMeter {
    /// A meter for a `device` on the grid of `region` (the world's mean without one).
    pub fn new(device: DeviceClass, region: Option<&str>) -> Result<Self> {
        let mix = match region {
            None => grid::world(),
            Some(r) => grid::mix(r).ok_or_else(|| {
                invalid(format!(
                    "region: {r:?} is not a country of the grid table (ISO 3166 alpha-2)"
                ))
            })?,
        };
        Ok(Self {
            model: DeviceModel { class: device },
            mix,
            totals: std::sync::Mutex::new((0, 0)),
        })
    }

    /// Energy (µWh) and carbon (µg CO2e) of the steps served so far.
    pub fn totals(&self) -> (u64, u64) {
        self.totals.lock().map_or((0, 0), |t| *t)
    }
}

impl kwaainet_swarm::server::StepMeter for PageMeter {
    fn step(&self, busy: std::time::Duration) -> Option<Footprint> {
        let usage = Usage {
            wall: busy,
            cpu: busy,
            memory_bytes: 0,
        };
        let energy = self.model.energy(Mark::default(), &usage);
        let f = Footprint::of(energy, self.model.method(), &self.mix, busy);
        if let Ok(mut t) = self.totals.lock() {
            t.0 = t.0.saturating_add(f.energy_uwh);
            t.1 = t.1.saturating_add(f.carbon_ug);
        }
        Some(f)
    }
}

/// How the page names the model it serves.
#[derive(Debug, Clone)]
pub enum ModelName {
    /// An id given as it is.
    Id(String),
    /// The file's SHA-256 (64 hex digits): the id is derived from it and the GGUF name,
    /// exactly as a native node derives it, so the page joins the same swarm.
    Sha256(String),
}

impl ModelName {
    /// The name JavaScript gives as `modelId` or `sha256` (exactly one of them).
    pub fn from_options(model_id: Option<String>, sha256: Option<String>) -> Result<Self> {
        match (model_id, sha256) {
            (Some(id), None) => Ok(Self::Id(id)),
            (None, Some(hex)) => Ok(Self::Sha256(hex)),
            _ => Err(invalid(
                "give either modelId or sha256 (the file's SHA-256, from which the id is derived as a native node does)",
            )),
        }
    }

    /// The model id this names for the file `gguf`: as given, or derived from the GGUF
    /// name and the SHA-256 as a native node derives it.
    pub fn resolve(self, gguf: &Gguf) -> Result<String> {
        let model_id = match self {
            ModelName::Id(id) => id,
            ModelName::Sha256(hex) => {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("sha256: 64 hexadecimal digits"));
                }
                kwaainet_swarm::model_id(gguf, &hex.to_ascii_lowercase())
            }
        };
        if model_id.is_empty() || model_id.len() > 128 {
            return Err(invalid("modelId: 1 to 128 characters"));
        }
        Ok(model_id)
    }
}

/// A page's span server and its open connections.
pub struct SpanHost {
    server: Arc<SpanServer>,
    conns: HashMap<u32, Connection>,
    bytes: u64,
    meter: Arc<PageMeter>,
}

impl std::fmt::Debug for SpanHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanHost")
            .field("server", &self.server)
            .field("connections", &self.conns.len())
            .finish()
    }
}

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::new(ErrorCode::InvalidArgument, m)
}

impl SpanHost {
    /// Loads only the blocks `options` names from the GGUF file `bytes` (no embedding, no
    /// head) and serves them.
    pub fn load(bytes: &[u8], options: SpanOptions) -> Result<Self> {
        let gguf = Gguf::read(&mut Cursor::new(bytes)).map_err(kwaainet_core::Error::from)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let SpanOptions {
            model,
            blocks,
            cache_tokens,
            max_length,
            max_sessions,
            device,
            region,
        } = options;
        let meter = Arc::new(PageMeter::new(device, region.as_deref())?);
        if blocks.start >= blocks.end || blocks.end > config.n_layers {
            return Err(invalid(format!(
                "blocks {}..{} of a model with {} blocks",
                blocks.start, blocks.end, config.n_layers
            )));
        }
        let model_id = model.resolve(&gguf)?;
        if !(1..=MAX_CACHE_TOKENS).contains(&cache_tokens) {
            return Err(invalid(format!(
                "cacheTokens: 1 to {MAX_CACHE_TOKENS}, got {cache_tokens}"
            )));
        }
        let max_length = max_length.unwrap_or(cache_tokens.min(config.context_length));
        if max_length == 0 || max_length > cache_tokens || max_length > config.context_length {
            return Err(invalid(format!(
                "maxLength: 1 to the cache ({cache_tokens}) and the model's context ({}), got {max_length}",
                config.context_length
            )));
        }
        if !(1..=MAX_CONNECTIONS).contains(&max_sessions) {
            return Err(invalid(format!(
                "maxSessions: 1 to {MAX_CONNECTIONS}, got {max_sessions}"
            )));
        }
        let spec = LoadSpec {
            blocks,
            embed: false,
            head: false,
        };
        let model = Llama::load(&gguf, &mut Cursor::new(bytes), spec)?;
        let config = ServerConfig {
            cache_tokens,
            max_length,
            max_sessions,
            push_wait: Duration::ZERO,
            ..ServerConfig::new(model_id)
        };
        let server = Arc::new(SpanServer::new(Arc::new(model), config));
        server.set_meter(Arc::clone(&meter) as _);
        Ok(Self {
            server,
            conns: HashMap::new(),
            bytes: bytes.len() as u64,
            meter,
        })
    }

    /// Handles one frame of stream `stream` (its connection opened on its first frame);
    /// returns the reply, or `None` when the stream should end (the client closed the
    /// session, or too many streams are open).
    pub fn handle(&mut self, stream: u32, frame: &[u8]) -> Option<Vec<u8>> {
        if !self.conns.contains_key(&stream) {
            if self.conns.len() >= MAX_CONNECTIONS {
                return None;
            }
            self.conns.insert(stream, self.server.connection());
        }
        let reply = self.conns.get_mut(&stream)?.handle(frame);
        if reply.is_none() {
            self.conns.remove(&stream);
        }
        reply
    }

    /// Stream `stream` ended: its session (and the cache it held) goes.
    pub fn close(&mut self, stream: u32) {
        self.conns.remove(&stream);
    }

    /// Ends every connection (the page withdraws its span).
    pub fn close_all(&mut self) {
        self.conns.clear();
    }

    /// Tokens per second through one block, measured here over `steps` one-token steps.
    pub fn measure_throughput(&self, steps: usize) -> Result<f64> {
        Ok(self.server.measure_throughput(steps.clamp(1, 64))?)
    }

    /// The id the span is announced under.
    pub fn model_id(&self) -> &str {
        self.server.model_id()
    }

    /// The server's counters and its state now.
    pub fn stats(&self) -> SpanStats {
        let (energy_uwh, carbon_ug) = self.meter.totals();
        SpanStats {
            served: self.server.stats(),
            energy_uwh,
            carbon_ug,
            intensity_mg_per_kwh: self.meter.mix.intensity_mg_per_kwh,
            grid_year: self.meter.mix.year,
            renewable_permille: self.meter.mix.renewable_permille,
            sessions_open: self.server.sessions() as u64,
            free_cache: self.server.free_tokens() as u64,
            connections: self.conns.len() as u64,
            model_bytes: self.bytes,
            start: self.server.blocks().start as u64,
            end: self.server.blocks().end as u64,
        }
    }
}

/// [`SpanHost::stats`]: what was served, and the state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanStats {
    /// What the server has served since it started.
    #[serde(flatten)]
    pub served: ServerStats,
    /// Energy of the steps served, µWh (`modelled`: busy time × the device class's watts).
    pub energy_uwh: u64,
    /// Their carbon at the grid's intensity, µg CO2e.
    pub carbon_ug: u64,
    /// That intensity, mg CO2e per kWh.
    pub intensity_mg_per_kwh: u64,
    /// The year of the grid data.
    pub grid_year: u16,
    /// The grid's renewable share, per mille.
    pub renewable_permille: u16,
    /// Sessions open now.
    pub sessions_open: u64,
    /// KV-cache positions not reserved.
    pub free_cache: u64,
    /// Streams open now.
    pub connections: u64,
    /// Size of the model file the span was loaded from.
    pub model_bytes: u64,
    /// First block served.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}
