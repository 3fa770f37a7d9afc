//! The node's environmental accounting (`kwaainet-footprint`): every OpenAI API request it
//! runs accrues the energy of the compute it used (RAPL where readable, else the thread
//! model: its share of the batched steps × the engine's threads × watts per thread, plus the
//! model's memory for its duration) and the carbon of that energy on the grid of the node's
//! declared region (the country table; a group such as EU weighted by generation; the world
//! mean without a region; an operator's declared on-site renewable share lowers it).
//!
//! Each response's `usage.footprint` carries the request's figures; `/api/v1/state` has the
//! node's totals under `footprint` and `/metrics` its counters. Totals persist in
//! `footprint/<peer id>/totals.json` (written every 10 s and at shutdown, not per request),
//! so a restart does not reset what the node gave.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kwaainet_footprint::contribution::{Contribution, SignedContribution};
use kwaainet_footprint::grid::{self, GridMix};
use kwaainet_footprint::meter::{self, EnergySource, Mark};
use kwaainet_footprint::{Footprint, Usage};
use kwaainet_p2p::libp2p::identity::Keypair;
use kwaainet_swarm::server::ServerStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The folder beside the identity key.
pub const FOOTPRINT_DIR: &str = "footprint";

/// The folder of the node `peer`'s totals.
pub fn dir_of(data_dir: &Path, peer: &kwaainet_p2p::libp2p::PeerId) -> PathBuf {
    data_dir.join(FOOTPRINT_DIR).join(peer.to_string())
}

/// What the node has accounted since it first ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// When the node first accounted anything, Unix ms.
    pub since_ms: u64,
    /// Time online, s.
    pub uptime_s: u64,
    /// Tokens run through served spans.
    pub served_tokens: u64,
    /// Served tokens × blocks.
    pub block_tokens: u64,
    /// Bytes moved for served spans.
    pub bytes: u64,
    /// Requests accounted.
    pub jobs: u64,
    /// Tokens they processed (prompt and generated).
    pub tokens: u64,
    /// Compute time, ms.
    pub busy_ms: u64,
    /// Energy, µWh.
    pub energy_uwh: u64,
    /// Carbon, µg CO2e.
    pub carbon_ug: u64,
    /// The same by hour, oldest first, at most [`HISTORY_HOURS`].
    pub history: Vec<Hour>,
}

/// Hours of history kept (30 days).
pub const HISTORY_HOURS: usize = 720;

/// One hour of the node's work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hour {
    /// Its start, Unix ms.
    pub hour_ms: u64,
    /// API tokens and served block-tokens.
    pub work: u64,
    /// Compute time, ms.
    pub busy_ms: u64,
    /// Energy, µWh.
    pub energy_uwh: u64,
    /// Carbon, µg CO2e.
    pub carbon_ug: u64,
}

/// How the energy of a source named `name` is obtained, for people.
fn energy_method(name: &str) -> String {
    let cpu = if name.starts_with("rapl") {
        "measured: RAPL package energy over each job, shared by its CPU time"
    } else {
        "modelled: CPU time x 4 W per thread + memory held x 0.375 W/GB (CodeCarbon's fallback)"
    };
    if name.ends_with("+nvml") {
        format!(
            "{cpu}; plus the GPUs' energy counters (NVML, measured) over each job, shared by its wall time"
        )
    } else {
        cpu.to_owned()
    }
}

/// The grid of a declared region: a country, a group, or the world's mean.
pub fn mix_of_region(region: Option<&str>) -> anyhow::Result<GridMix> {
    use kwaainet_p2p::region::Region;
    let Some(r) = region else {
        return Ok(grid::world());
    };
    let parsed = Region::parse(r)?;
    let countries = parsed.countries();
    let mix = if let [one] = countries.as_slice() {
        grid::mix(one)
    } else {
        grid::mix_of(&parsed.to_string(), &countries)
    };
    mix.with_context(|| format!("no grid data for region {r}"))
}

struct Counters {
    energy_uwh: Counter<u64, AtomicU64>,
    carbon_ug: Counter<u64, AtomicU64>,
    jobs: Counter<u64, AtomicU64>,
}

/// The span server's counters at the last tick, and its busy microseconds not yet in the
/// totals' milliseconds.
#[derive(Debug, Default)]
struct Served {
    last: Option<ServerStats>,
    busy_us_rest: u64,
}

/// The node's accountant.
pub struct NodeFootprint {
    source: Box<dyn EnergySource>,
    mix: GridMix,
    threads: u32,
    memory_bytes: u64,
    file: PathBuf,
    totals: Mutex<Totals>,
    /// The last reading of a counter source (RAPL).
    last: Mutex<Mark>,
    counters: Counters,
    registry: Arc<Registry>,
    /// The span server's counters at the last tick.
    served: Mutex<Served>,
    /// Who signs the node's contribution record, and what it says of itself.
    key: Keypair,
    did: String,
    region: Option<String>,
    name: Option<String>,
}

impl std::fmt::Debug for NodeFootprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFootprint")
            .field("source", &self.source.name())
            .field("region", &self.mix.region)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NodeFootprint {
    /// Opens the accountant in `dir` for a node in `region` (with `onsite_permille` of its
    /// supply declared on-site renewable) whose engine runs `threads` threads over a model
    /// of `memory_bytes`; its contribution records are signed with `key` and carry `name`
    /// (opt-in).
    pub fn open(
        dir: &Path,
        region: Option<&str>,
        onsite_permille: u16,
        threads: u32,
        memory_bytes: u64,
        key: &Keypair,
        name: Option<String>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("totals.json");
        let mut totals: Totals = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).context("reading footprint totals.json")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Totals::default(),
            Err(e) => return Err(e).context("reading footprint totals.json"),
        };
        if totals.since_ms == 0 {
            totals.since_ms = crate::audit::now_ms();
        }
        if let Some(n) = &name {
            anyhow::ensure!(
                !n.is_empty()
                    && n.chars().count() <= kwaainet_footprint::contribution::MAX_NAME
                    && !n.chars().any(char::is_control),
                "--public-name: 1 to {} printable characters",
                kwaainet_footprint::contribution::MAX_NAME
            );
        }
        let mix = mix_of_region(region)
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}: the footprint uses the world's mean grid");
                grid::world()
            })
            .with_onsite_renewable(onsite_permille);
        let source = meter::host_source();
        let mut registry = Registry::with_prefix("kwaainet_footprint");
        let counters = Counters {
            energy_uwh: Counter::default(),
            carbon_ug: Counter::default(),
            jobs: Counter::default(),
        };
        registry.register(
            "energy_uwh",
            "Energy of the requests this node ran since it started, µWh",
            counters.energy_uwh.clone(),
        );
        registry.register(
            "carbon_ug",
            "Carbon of that energy on the node's grid, µg CO2e",
            counters.carbon_ug.clone(),
        );
        registry.register("jobs", "Requests accounted", counters.jobs.clone());
        let mark = source.mark();
        Ok(Arc::new(Self {
            source,
            mix,
            threads: threads.max(1),
            memory_bytes,
            file,
            totals: Mutex::new(totals),
            last: Mutex::new(mark),
            counters,
            registry: Arc::new(registry),
            served: Mutex::new(Served::default()),
            did: kwaainet_p2p::did::from_peer_id(&key.public().to_peer_id())?,
            key: key.clone(),
            region: region.map(str::to_owned),
            name,
        }))
    }

    /// The metrics registry (served in `/metrics`).
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Accounts one request: `busy` compute time over `wall`, `tokens` processed.
    pub fn job(&self, wall: Duration, busy: Duration, tokens: u64) -> Footprint {
        self.counters.jobs.inc();
        let busy_ms = u64::try_from(busy.as_millis()).unwrap_or(u64::MAX);
        self.accrue(wall, busy, |t| {
            t.jobs = t.jobs.saturating_add(1);
            t.tokens = t.tokens.saturating_add(tokens);
            t.busy_ms = t.busy_ms.saturating_add(busy_ms);
        })
    }

    /// Accounts one served step's `busy` time (energy and carbon like a request's); its
    /// footprint goes back to the client with the step's output. (Its busy time reaches
    /// the totals at the next tick, from the server's microsecond counter: a step of under
    /// a millisecond would add nothing here.)
    pub fn served_step(&self, busy: Duration) -> Footprint {
        self.accrue(busy, busy, |_| {})
    }

    /// The energy and carbon of `busy` over `wall` into the counters and the totals, with
    /// `more` changes to the totals.
    fn accrue(&self, wall: Duration, busy: Duration, more: impl FnOnce(&mut Totals)) -> Footprint {
        let f = self.measure(wall, busy);
        self.counters.energy_uwh.inc_by(f.energy_uwh);
        self.counters.carbon_ug.inc_by(f.carbon_ug);
        self.update(|t| {
            t.energy_uwh = t.energy_uwh.saturating_add(f.energy_uwh);
            t.carbon_ug = t.carbon_ug.saturating_add(f.carbon_ug);
            more(t);
        });
        f
    }

    /// The footprint of `busy` compute time over `wall`.
    fn measure(&self, wall: Duration, busy: Duration) -> Footprint {
        let usage = Usage {
            wall,
            cpu: busy.saturating_mul(self.threads),
            memory_bytes: self.memory_bytes,
        };
        // A counter source measures the interval since its last reading, shared by this
        // job's CPU time; a model needs no reading.
        let since = std::mem::replace(&mut *lock(&self.last), self.source.mark());
        let energy = self.source.energy(since, &usage);
        Footprint::of(
            energy,
            self.source.method().weakest(self.mix.method),
            &self.mix,
            busy,
        )
    }

    /// Changes the totals (in memory: [`NodeFootprint::save`] writes them, at each tick and
    /// at shutdown, not on every request).
    fn update(&self, change: impl FnOnce(&mut Totals)) {
        {
            let mut t = lock(&self.totals);
            let work = |t: &Totals| t.tokens.saturating_add(t.block_tokens);
            let before = (work(&t), t.busy_ms, t.energy_uwh, t.carbon_ug);
            change(&mut t);
            let hour = Hour {
                hour_ms: crate::audit::now_ms() / 3_600_000 * 3_600_000,
                work: work(&t).saturating_sub(before.0),
                busy_ms: t.busy_ms.saturating_sub(before.1),
                energy_uwh: t.energy_uwh.saturating_sub(before.2),
                carbon_ug: t.carbon_ug.saturating_sub(before.3),
            };
            if hour.work > 0 || hour.energy_uwh > 0 {
                match t.history.last_mut() {
                    Some(h) if h.hour_ms == hour.hour_ms => {
                        h.work = h.work.saturating_add(hour.work);
                        h.busy_ms = h.busy_ms.saturating_add(hour.busy_ms);
                        h.energy_uwh = h.energy_uwh.saturating_add(hour.energy_uwh);
                        h.carbon_ug = h.carbon_ug.saturating_add(hour.carbon_ug);
                    }
                    _ => t.history.push(hour),
                }
                let extra = t.history.len().saturating_sub(HISTORY_HOURS);
                t.history.drain(..extra);
            }
        }
    }

    /// Writes the totals to disk.
    pub fn save(&self) {
        let bytes = serde_json::to_vec(&*lock(&self.totals));
        match bytes {
            Ok(bytes) => {
                if let Err(e) = crate::data::write_private(&self.file, &bytes) {
                    tracing::warn!(error = %e, "saving the footprint totals");
                }
            }
            Err(e) => tracing::warn!(error = %e, "footprint totals"),
        }
    }

    /// Accounts `elapsed` of uptime and what the span server did since the last tick (its
    /// steps' tokens, bytes and busy time; their energy is accounted step by step).
    pub fn tick(&self, elapsed: Duration, served: Option<ServerStats>) {
        let mut busy_ms = 0;
        let delta = served.map(|now| {
            let mut served = lock(&self.served);
            let before = served.last.replace(now).unwrap_or_default();
            // A new server (the span moved) counts from zero.
            let since = |a: u64, b: u64| if a >= b { a - b } else { a };
            // Whole milliseconds into the totals; the rest waits for the next tick.
            let us = served.busy_us_rest + since(now.busy_us, before.busy_us);
            busy_ms = us / 1_000;
            served.busy_us_rest = us % 1_000;
            ServerStats {
                sessions: since(now.sessions, before.sessions),
                steps: since(now.steps, before.steps),
                tokens: since(now.tokens, before.tokens),
                block_tokens: since(now.block_tokens, before.block_tokens),
                busy_us: since(now.busy_us, before.busy_us),
                bytes_in: since(now.bytes_in, before.bytes_in),
                bytes_out: since(now.bytes_out, before.bytes_out),
            }
        });
        self.update(|t| {
            t.uptime_s = t.uptime_s.saturating_add(elapsed.as_secs());
            t.busy_ms = t.busy_ms.saturating_add(busy_ms);
            if let Some(d) = &delta {
                t.served_tokens = t.served_tokens.saturating_add(d.tokens);
                t.block_tokens = t.block_tokens.saturating_add(d.block_tokens);
                t.bytes = t
                    .bytes
                    .saturating_add(d.bytes_in.saturating_add(d.bytes_out));
            }
        });
        self.save();
    }

    /// The node's contribution since it first ran, signed with its key.
    pub fn contribution(&self) -> anyhow::Result<SignedContribution> {
        let t = lock(&self.totals).clone();
        let record = Contribution {
            v: kwaainet_footprint::contribution::VERSION,
            contributor: self.did.clone(),
            name: self.name.clone(),
            region: self.region.clone(),
            from_ms: t.since_ms,
            to_ms: crate::audit::now_ms().max(t.since_ms),
            jobs: t.jobs,
            tokens: t.tokens,
            served_tokens: t.served_tokens,
            block_tokens: t.block_tokens,
            busy_ms: t.busy_ms,
            bytes: t.bytes,
            uptime_s: t.uptime_s,
            energy_uwh: t.energy_uwh,
            carbon_ug: t.carbon_ug,
            renewable_permille: self.mix.renewable_permille,
            method: self.source.method().weakest(self.mix.method),
        };
        Ok(SignedContribution::sign(&record, |b| {
            self.key.sign(b).unwrap_or_default()
        })?)
    }

    /// The totals with their hourly history and how every figure is obtained
    /// (`GET /api/v1/footprint`, for dashboards and reports).
    pub fn detail(&self) -> serde_json::Value {
        let mut out = self.report();
        out["history"] = serde_json::to_value(&lock(&self.totals).history).unwrap_or_default();
        out["methods"] = json!({
            "energy": energy_method(self.source.name()),
            "carbon": "energy x the annual carbon intensity of the node's declared grid",
            "sci": "SCI (ISO/IEC 21031): operational carbon per 1,000 tokens, embodied share not included",
            "grid_data": grid::SOURCE,
        });
        out
    }

    /// `GET /api/v1/contribution` (the signed record) and `GET /api/v1/footprint`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let detail = Arc::clone(self);
        let me = Arc::clone(self);
        axum::Router::new()
            .route(
                "/api/v1/footprint",
                axum::routing::get(move || {
                    let detail = Arc::clone(&detail);
                    async move { axum::Json(detail.detail()) }
                }),
            )
            .route(
                "/api/v1/contribution",
                axum::routing::get(move || {
                    let me = Arc::clone(&me);
                    async move {
                        use axum::response::IntoResponse as _;
                        match me.contribution() {
                            Ok(s) => axum::Json(s).into_response(),
                            Err(e) => {
                                tracing::error!(error = %e, "contribution record");
                                axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                            }
                        }
                    }
                }),
            )
    }

    /// A request's figures as the API reports them in `usage.footprint` (`f` may sum a
    /// swarm route's hops: `regions` lists every grid it ran on).
    pub fn describe(&self, f: &Footprint, tokens: u64) -> serde_json::Value {
        json!({
            "regions": f.regions,
            "energy_mwh": f.energy_mwh(),
            "energy_uwh": f.energy_uwh,
            "carbon_mg": f.carbon_mg(),
            "carbon_ug": f.carbon_ug,
            "method": f.energy_method,
            "source": self.source.name(),
            "busy_ms": f.busy_ms,
            "region": self.mix.region,
            "intensity_mg_per_kwh": f.intensity_mg_per_kwh,
            "renewable_permille": self.mix.renewable_permille,
            "grid_year": f.vintage,
            "grid_source": f.intensity_source,
            "sci_ug_per_1k_tokens": f.sci_per_1k_tokens(tokens),
        })
    }

    /// The node's totals and how they are obtained (`/api/v1/state`'s `footprint`).
    pub fn report(&self) -> serde_json::Value {
        let t = lock(&self.totals).clone();
        let sci = kwaainet_footprint::formula::sci(
            kwaainet_footprint::Carbon(t.carbon_ug),
            kwaainet_footprint::Carbon(0),
            t.tokens,
            1_000,
        );
        json!({
            "since_ms": t.since_ms,
            "uptime_s": t.uptime_s,
            "jobs": t.jobs,
            "tokens": t.tokens,
            "served_tokens": t.served_tokens,
            "block_tokens": t.block_tokens,
            "bytes": t.bytes,
            "busy_ms": t.busy_ms,
            "energy_mwh": kwaainet_footprint::Energy(t.energy_uwh).mwh(),
            "energy_uwh": t.energy_uwh,
            "carbon_mg": kwaainet_footprint::Carbon(t.carbon_ug).mg(),
            "carbon_ug": t.carbon_ug,
            "sci_ug_per_1k_tokens": sci.map(|c| c.0),
            "method": self.source.method().weakest(self.mix.method),
            "source": self.source.name(),
            "grid": self.mix,
        })
    }

    /// The API's job hook.
    pub fn hook(self: &Arc<Self>) -> kwaainet_api::JobHook {
        let me = Arc::clone(self);
        kwaainet_api::JobHook(Arc::new(move |r: &kwaainet_api::JobReport| {
            let tokens = (r.prompt_tokens + r.completion_tokens) as u64;
            // This node accrues its own part; the response reports the whole route's.
            let own = me.job(r.wall, r.busy, tokens);
            let mut route = own.clone();
            if let Some(hops) = &r.hops {
                route.add(hops);
            }
            let mut out = me.describe(&route, tokens);
            if let Some(hops) = &r.hops {
                out["node"] = json!({
                    "energy_uwh": own.energy_uwh,
                    "carbon_ug": own.carbon_ug,
                    "busy_ms": own.busy_ms,
                });
                out["hops"] = json!({
                    "energy_uwh": hops.energy_uwh,
                    "carbon_ug": hops.carbon_ug,
                    "busy_ms": hops.busy_ms,
                    "method": hops.energy_method,
                    "regions": hops.regions,
                });
            }
            Some(out)
        }))
    }
}

impl kwaainet_swarm::server::StepMeter for NodeFootprint {
    fn step(&self, busy: Duration) -> Option<Footprint> {
        Some(self.served_step(busy))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn regions_map_to_grids() {
        assert_eq!(
            mix_of_region(Some("DE")).unwrap().intensity_mg_per_kwh,
            380_950
        );
        let eu = mix_of_region(Some("EU")).unwrap();
        assert_eq!(eu.region, "EU");
        assert!(
            (100_000..400_000).contains(&eu.intensity_mg_per_kwh),
            "{eu:?}"
        );
        assert_eq!(mix_of_region(None).unwrap().region, "world");
        assert!(mix_of_region(Some("48.1,11.6")).is_err());
    }

    #[test]
    fn totals_accrue_and_survive_a_reopen() {
        let dir = tempfile_dir();
        let key = Keypair::generate_ed25519();
        let f = NodeFootprint::open(&dir, Some("FR"), 0, 2, 100_000_000, &key, None).unwrap();
        let one = f.job(Duration::from_secs(1), Duration::from_millis(900), 50);
        assert!(one.energy_uwh > 0 && one.carbon_ug > 0, "{one:?}");
        assert_eq!(one.regions, ["FR"]);
        f.job(Duration::from_secs(1), Duration::from_millis(900), 50);
        let t = lock(&f.totals).clone();
        assert_eq!((t.jobs, t.tokens), (2, 100));
        f.save();
        drop(f);
        let again = NodeFootprint::open(
            &dir,
            Some("FR"),
            0,
            2,
            100_000_000,
            &key,
            Some("Ada".into()),
        )
        .unwrap();
        assert_eq!(*lock(&again.totals), t);
        let r = again.report();
        assert_eq!(r["jobs"], 2);
        assert_eq!(r["grid"]["region"], "FR");
        // Served steps and uptime tick in; a new server's counters start from zero. (The
        // node "started" a minute ago: a record claiming 30 s up in 3 ms is refused.)
        lock(&again.totals).since_ms -= 60_000;
        let stats = |busy_us, tokens| ServerStats {
            busy_us,
            tokens,
            block_tokens: tokens * 10,
            ..ServerStats::default()
        };
        again.tick(Duration::from_secs(10), Some(stats(200_000, 40)));
        again.tick(Duration::from_secs(10), Some(stats(300_000, 60)));
        again.tick(Duration::from_secs(10), Some(stats(100_000, 5)));
        // Each served step's energy is accounted as it runs, and returned to its client;
        // its busy time comes in with the next tick, from the server's counter.
        let step = again.served_step(Duration::from_millis(400));
        assert!(step.energy_uwh > 0 && step.regions == ["FR"], "{step:?}");
        let t = lock(&again.totals).clone();
        assert_eq!((t.uptime_s, t.served_tokens, t.block_tokens), (30, 65, 650));
        // 200 + 100 ms, then a new server's 100 ms.
        assert_eq!(t.busy_ms, 1_800 + 400);
        // All of it this hour (or the last two, across an hour's turn).
        let hours = &again.detail()["history"];
        let total: u64 = (hours.as_array().unwrap().iter())
            .map(|h| h["energy_uwh"].as_u64().unwrap())
            .sum();
        assert_eq!(total, t.energy_uwh);
        assert!((1..=2).contains(&hours.as_array().unwrap().len()));
        // The signed record verifies with the node's key and says what the totals say.
        let signed = again.contribution().unwrap();
        let node_key = key.public().try_into_ed25519().unwrap().to_bytes();
        let c = signed
            .verify(|_| Some(node_key), crate::audit::now_ms())
            .unwrap();
        assert_eq!(
            (c.jobs, c.block_tokens, c.name.as_deref()),
            (2, 650, Some("Ada"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A node that only serves spans: decoding steps take under a millisecond each, and
    /// their busy time still reaches the totals (whole milliseconds, the rest carried), so
    /// its signed record is not refused as work without busy time.
    #[test]
    fn sub_millisecond_served_steps_add_up_to_busy_time() {
        let dir = tempfile_dir().with_extension("steps");
        let key = Keypair::generate_ed25519();
        let f = NodeFootprint::open(&dir, Some("DE"), 0, 2, 0, &key, None).unwrap();
        lock(&f.totals).since_ms -= 60_000;
        let mut stats = ServerStats::default();
        for _ in 0..3 {
            for _ in 0..500 {
                f.served_step(Duration::from_micros(900));
                stats.steps += 1;
                stats.tokens += 1;
                stats.block_tokens += 15;
                stats.busy_us += 900;
            }
            f.tick(Duration::from_secs(10), Some(stats));
        }
        let t = lock(&f.totals).clone();
        // 1,500 steps × 0.9 ms = 1,350 ms.
        assert_eq!((t.served_tokens, t.busy_ms), (1_500, 1_350));
        assert!(t.energy_uwh > 0);
        let node_key = key.public().try_into_ed25519().unwrap().to_bytes();
        let c = (f.contribution().unwrap())
            .verify(|_| Some(node_key), crate::audit::now_ms())
            .unwrap();
        assert_eq!((c.served_tokens, c.busy_ms), (1_500, 1_350));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_request_after_an_idle_gap_costs_what_it_used() {
        let dir = tempfile_dir().with_extension("idle");
        let key = Keypair::generate_ed25519();
        let f = NodeFootprint::open(&dir, Some("DE"), 0, 2, 1_000_000_000, &key, None).unwrap();
        if f.source.name() != "thread-model" {
            return; // a counter source measures the host, not a model
        }
        let job = || f.job(Duration::from_millis(20), Duration::from_millis(20), 10);
        let first = job();
        std::thread::sleep(Duration::from_millis(300));
        // The model's memory counts for the request's 20 ms, not the 300 ms idle before it.
        assert_eq!(job().energy_uwh, first.energy_uwh);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kwaainet-footprint-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
