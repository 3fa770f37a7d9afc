//! Distributed inference from the command line: `kwaainet start --blocks A:B` serves a span
//! of the model's blocks to the swarm (announced in the node's DHT record and as a model
//! provider), and `kwaainet generate --swarm` generates through the spans the DHT lists,
//! holding only the embedding and the output head. The protocol, the servers and the client
//! live in `kwaainet-swarm`.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kwaainet_core::LoadSpec;
use kwaainet_core::codec::Codec;
use kwaainet_core::gguf::{Gguf, Value};
use kwaainet_p2p::libp2p::{Multiaddr, PeerId};
use kwaainet_p2p::record::{ServedSpan, SpanState, is_dialable};
use kwaainet_p2p::{NodeConfig, NodeHandle};
use kwaainet_swarm::net::{NetConfig, NetConnector, ServerSlot};
use kwaainet_swarm::{
    ClientConfig, CodecChoice, Connector, Link, LinkError, ServerConfig, ServerEntry, SpanServer,
    SwarmSession,
};

use crate::generate::GenerateArgs;
pub use crate::serving::Blocks;

/// How long `generate --swarm` looks for servers covering the model.
const DISCOVERY: Duration = Duration::from_secs(20);
/// How long an API request looks for servers before it fails with 503 (its client waits).
const API_DISCOVERY: Duration = Duration::from_secs(8);

/// `kwaainet start`'s span flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SpanArgs {
    /// Serve blocks A..B (`A:B`, B exclusive) of --model to the swarm, or `auto`: the most
    /// under-served window of --num-blocks blocks, moved when the swarm is unbalanced.
    #[arg(long, env = "KWAAINET_BLOCKS", value_parser = parse_blocks_arg)]
    pub blocks: Option<Blocks>,
    /// With --blocks auto: how many blocks (default: the whole model).
    #[arg(long, env = "KWAAINET_NUM_BLOCKS")]
    pub num_blocks: Option<usize>,
    /// With --blocks auto: seconds between checks of the swarm's balance (0: never move).
    #[arg(long, env = "KWAAINET_REBALANCE_SECS", default_value_t = 120)]
    pub rebalance_secs: u64,
    /// With --blocks auto: move when the weakest block's coverage would rise by more than
    /// 1 / this factor (Petals' 0.75).
    #[arg(long, default_value_t = 0.75)]
    pub balance_quality: f64,
    /// Most inference sessions at once.
    #[arg(long, env = "KWAAINET_MAX_SESSIONS", default_value_t = 16)]
    pub max_sessions: usize,
    /// KV-cache positions all sessions together may hold.
    #[arg(long, env = "KWAAINET_CACHE_TOKENS", default_value_t = 8192)]
    pub cache_tokens: usize,
    /// Most positions one session may ask for.
    #[arg(long, env = "KWAAINET_MAX_LENGTH", default_value_t = 2048)]
    pub max_length: usize,
}

/// `auto`, or `A:B` with A < B.
pub fn parse_blocks_arg(s: &str) -> Result<Blocks, String> {
    if s.trim() == "auto" {
        Ok(Blocks::Auto)
    } else {
        parse_blocks(s).map(Blocks::Pinned)
    }
}

/// `A:B` with A < B.
pub fn parse_blocks(s: &str) -> Result<Range<usize>, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected A:B (first block, one past the last)"))?;
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a block number"))?;
    let b: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a block number"))?;
    if a >= b {
        return Err(format!("`{s}`: the span is empty"));
    }
    Ok(a..b)
}

pub use kwaainet_swarm::model_id;

/// [`model_id`] of the model file at `path` whose SHA-256 is `sha256`.
pub fn model_id_of(path: &Path, sha256: &str) -> anyhow::Result<String> {
    Ok(model_id(&read_header(path)?, sha256))
}

/// The number of transformer blocks of the model file at `path`.
pub fn block_count(path: &Path) -> anyhow::Result<usize> {
    let g = read_header(path)?;
    let arch = match g.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        _ => "llama".into(),
    };
    match g
        .get(&format!("{arch}.block_count"))
        .and_then(Value::as_u64)
    {
        Some(n) => Ok(usize::try_from(n)?),
        None => bail!("{} does not say how many blocks it has", path.display()),
    }
}

fn read_header(path: &Path) -> anyhow::Result<Gguf> {
    let mut r = std::io::BufReader::new(
        std::fs::File::open(path)
            .with_context(|| format!("cannot open model {}", path.display()))?,
    );
    Gguf::read(&mut r).with_context(|| format!("{} is not a usable GGUF file", path.display()))
}

/// A span ready to serve: what to announce and the server.
pub struct Span {
    /// The record entry.
    pub announced: ServedSpan,
    /// The server.
    pub server: Arc<SpanServer>,
}

/// Loads `blocks` of the model at `path` (only those) as a span server, and measures its
/// throughput (or reads it from `data_dir`'s cache for this model and machine).
pub fn load_span(
    path: &Path,
    sha256: &str,
    args: &SpanArgs,
    blocks: Range<usize>,
    data_dir: &Path,
) -> anyhow::Result<Span> {
    let id = model_id(&read_header(path)?, sha256);
    let loaded = crate::model::load_spec(path, |config| {
        if blocks.end > config.n_layers {
            bail!(
                "--blocks {}:{} past the model's {} blocks",
                blocks.start,
                blocks.end,
                config.n_layers
            );
        }
        Ok(LoadSpec {
            blocks: blocks.clone(),
            embed: false,
            head: false,
        })
    })?;
    let server = SpanServer::new(
        loaded.model,
        ServerConfig {
            cache_tokens: args.cache_tokens,
            max_length: args.max_length,
            max_sessions: args.max_sessions,
            ..ServerConfig::new(id.clone())
        },
    );
    let throughput =
        crate::throughput::cached(data_dir, &id, || Ok(server.measure_throughput(16)?))?;
    let mut announced =
        ServedSpan::new(id, u32::try_from(blocks.start)?, u32::try_from(blocks.end)?);
    announced.throughput = Some(throughput as f32);
    announced.free_cache = Some(u32::try_from(server.free_tokens()).unwrap_or(u32::MAX));
    Ok(Span {
        announced,
        server: Arc::new(server),
    })
}

/// Answers `/kwaainet/inference/1.0.0` streams on `node` with the server in `slot`, which
/// pushes its outputs to the next servers of clients' routes through `node` (as does any
/// server put in the slot later: set its pusher with [`pusher`]).
pub fn serve(node: &NodeHandle, slot: Arc<ServerSlot>) -> tokio::task::JoinHandle<()> {
    slot.get().set_pusher(pusher(node));
    let control = node.stream_control();
    tokio::spawn(async move {
        if let Err(e) = kwaainet_swarm::net::serve(control, slot, NetConfig::default()).await {
            tracing::error!(error = %e, "cannot serve the span");
        }
    })
}

/// How a span server on `node` reaches the next server of a route (call on a runtime).
pub fn pusher(node: &NodeHandle) -> Arc<dyn Connector> {
    Arc::new(NodePusher {
        node: node.clone(),
        streams: NetConnector::new(
            node.stream_control(),
            tokio::runtime::Handle::current(),
            NetConfig::default(),
        ),
        runtime: tokio::runtime::Handle::current(),
    })
}

/// How a span server reaches the next server of a route: by peer id, as clients name it.
/// A peer this node has no address for is looked up in the DHT (its signed record; never
/// an address a client supplied) and dialed, within [`RESOLVE`].
struct NodePusher {
    node: NodeHandle,
    streams: NetConnector,
    runtime: tokio::runtime::Handle,
}

/// How long a server spends finding the next server of a route.
const RESOLVE: Duration = Duration::from_secs(5);

impl Connector for NodePusher {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        match self.streams.connect(server) {
            Err(LinkError::Unreachable(_)) => {}
            other => return other,
        }
        let peer: PeerId = server
            .parse()
            .map_err(|_| LinkError::Unreachable(server.to_owned()))?;
        // Called on the blocking pool (a step's thread): blocking on the runtime is fine.
        let found = self.runtime.block_on(tokio::time::timeout(RESOLVE, async {
            let record = self.node.get_node_record(peer).await.ok().flatten()?;
            connect(&self.node, peer, record.addrs.iter().map(|a| &a.addr)).await;
            Some(())
        }));
        if !matches!(found, Ok(Some(()))) {
            return Err(LinkError::Unreachable(server.to_owned()));
        }
        self.streams.connect(server)
    }
}

/// `kwaainet generate --swarm`.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    if args.bootstrap.is_empty() {
        bail!("--swarm needs --bootstrap ADDR (a node of the swarm)");
    }
    let path = crate::model::resolve(args.model.as_deref())?;
    let sha = crate::fetch::model_sha256(&path)?;
    let id = model_id(&read_header(&path)?, &sha);
    // The client holds the embedding and the head; every block runs on the swarm.
    let loaded = crate::model::load_spec(&path, |_| {
        Ok(LoadSpec {
            blocks: 0..0,
            embed: true,
            head: true,
        })
    })?;
    let n_layers = loaded.model.config().n_layers;
    let codec = match args.codec.as_str() {
        "auto" => CodecChoice::Auto,
        name => CodecChoice::Fixed(Codec::from_name(name).with_context(|| {
            format!("--codec {name}: expected auto, f32, f16, q8_0 or blockwise8")
        })?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let local = args.bootstrap.iter().all(|a| is_dialable(a, true) && !is_dialable(a, false));
        let config = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: args.bootstrap.clone(),
            allow_local_addrs: local,
            autonat: false,
            ..NodeConfig::default()
        };
        let key = kwaainet_p2p::libp2p::identity::Keypair::generate_ed25519();
        let node = kwaainet_p2p::spawn(config, key, None).await.context("starting the client node")?;
        let servers = discover(&node, &id, n_layers, DISCOVERY, &args.regions).await;
        let result = match servers {
            Ok(Discovered { entries: servers, regions }) => {
                let connector = NetConnector::new(node.stream_control(), tokio::runtime::Handle::current(), NetConfig::default());
                let client = ClientConfig {
                    max_length: args.ctx,
                    codec,
                    push: !args.no_push,
                    ..ClientConfig::new(id.clone())
                };
                let args = args.clone();
                // The engine's generation loop is synchronous: off the runtime's workers.
                tokio::task::spawn_blocking(move || {
                    let mut session = SwarmSession::new(
                        Arc::clone(&loaded.model),
                        servers,
                        Arc::new(connector),
                        client,
                        format!("cli-{}", std::process::id()),
                    );
                    let out = crate::generate::stream(&args, &loaded, &mut session);
                    let st = session.stats().clone();
                    let route: Vec<String> = session
                        .route()
                        .iter()
                        .map(|(peer, b)| match regions.get(peer.as_str()) {
                            Some(r) => format!("{}..{} on {peer} ({r})", b.start, b.end),
                            None => format!("{}..{} on {peer}", b.start, b.end),
                        })
                        .collect();
                    let footprint = match &st.hops_footprint {
                        Some(f) => format!(
                            "the servers used {} µWh, {} µg CO2e ({:?}; {})",
                            f.energy_uwh,
                            f.carbon_ug,
                            f.energy_method,
                            f.regions.join(" ")
                        ),
                        None => "the servers reported no footprint".to_owned(),
                    };
                    #[allow(clippy::print_stderr)] // the session's summary, for people
                    {
                        eprintln!(
                            "swarm: {} hop(s) [{}], {} steps, {} pushed server to server, {} failover(s), {} B sent, {} B received; {footprint}; this client {} ms",
                            route.len(),
                            route.join(", "),
                            st.steps,
                            st.pushed,
                            st.failovers,
                            st.bytes_sent,
                            st.bytes_received,
                            st.local_busy.as_millis()
                        );
                    }
                    out
                })
                .await
                .context("the generation task")?
            }
            Err(e) => Err(e),
        };
        node.shutdown().await;
        result
    })
}

/// Sessions through the swarm for the node's OpenAI API: each request finds the servers
/// of the model (DHT records, as `generate --swarm` does) and plans its own route; the node
/// holds the embedding and the head.
pub struct SwarmSessions {
    node: NodeHandle,
    regions: kwaainet_p2p::region::AllowedRegions,
    /// Where each session's hops are logged (their declared regions).
    recorder: Option<crate::audit::Recorder>,
    local: Arc<kwaainet_core::Llama>,
    model_id: String,
    runtime: tokio::runtime::Handle,
    next: std::sync::atomic::AtomicU64,
}

impl SwarmSessions {
    /// Sessions of `model_id` through `node`, with `local` holding embedding and head
    /// (call on the node's runtime).
    pub fn new(
        node: NodeHandle,
        local: Arc<kwaainet_core::Llama>,
        model_id: String,
        regions: kwaainet_p2p::region::AllowedRegions,
        recorder: Option<crate::audit::Recorder>,
    ) -> Self {
        Self {
            node,
            regions,
            recorder,
            local,
            model_id,
            runtime: tokio::runtime::Handle::current(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl kwaainet_api::SessionSource for SwarmSessions {
    fn open(&self, max_ctx: usize) -> Result<Box<dyn kwaainet_api::RemoteSession>, String> {
        let n_layers = self.local.config().n_layers;
        let found = self
            .runtime
            .block_on(discover(
                &self.node,
                &self.model_id,
                n_layers,
                API_DISCOVERY,
                &self.regions,
            ))
            .map_err(|e| e.to_string())?;
        let servers = found.entries;
        let connector = NetConnector::new(
            self.node.stream_control(),
            self.runtime.clone(),
            NetConfig::default(),
        );
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = ClientConfig {
            max_length: max_ctx,
            ..ClientConfig::new(self.model_id.clone())
        };
        let session = SwarmSession::new(
            Arc::clone(&self.local),
            servers,
            Arc::new(connector),
            config,
            format!("api-{}-{n}", std::process::id()),
        );
        Ok(Box::new(AuditedSession {
            inner: session,
            hops: std::collections::BTreeSet::new(),
            regions: found.regions,
            recorder: self.recorder.clone(),
        }))
    }
}

/// An API request's swarm session. With an audit log it logs, when it ends, one entry per
/// server that ran part of the request (failover replacements included) with the region it
/// declares: where the request's data went, hop by hop. It reports what the route cost.
struct AuditedSession {
    inner: SwarmSession,
    /// Every server of the route so far.
    hops: std::collections::BTreeSet<String>,
    regions: std::collections::HashMap<String, String>,
    recorder: Option<crate::audit::Recorder>,
}

impl kwaainet_api::RemoteSession for AuditedSession {
    fn local_busy(&self) -> std::time::Duration {
        self.inner.stats().local_busy
    }

    fn hops(&self) -> Option<kwaainet_footprint::Footprint> {
        self.inner.stats().hops_footprint.clone()
    }
}

impl kwaainet_core::generate::Session for AuditedSession {
    fn forward(&mut self, tokens: &[u32]) -> kwaainet_core::Result<Vec<f32>> {
        let out = self.inner.forward(tokens);
        self.hops
            .extend(self.inner.route().into_iter().map(|(server, _)| server));
        out
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn max_ctx(&self) -> usize {
        self.inner.max_ctx()
    }
}

impl Drop for AuditedSession {
    fn drop(&mut self) {
        use kwaainet_audit::{Decision, Entry, Label, Op};
        let Some(recorder) = &self.recorder else {
            return;
        };
        let now = crate::audit::now_ms();
        let entries: Vec<Entry> = (self.hops.iter())
            .map(|server| {
                let mut e = Entry::new(now, Op::Process);
                e.purpose = Label::new("inference").ok();
                e.decision = Some(Decision::Allow);
                e.reason = Label::new("swarm_hop").ok();
                e.region = Label::new(
                    self.regions
                        .get(server)
                        .map_or("undeclared", String::as_str),
                )
                .ok();
                e
            })
            .collect();
        if !entries.is_empty() && !recorder.record_anonymous(entries) {
            tracing::warn!("audit queue full: a request's hops were not recorded");
        }
    }
}

/// What discovery found: the servers, and the region each declares (by peer id).
struct Discovered {
    entries: Vec<ServerEntry>,
    regions: std::collections::HashMap<String, String>,
}

/// The servers of `model` the DHT lists, with their spans, once they cover all `n_layers`
/// blocks (or the best found `within`, with an error naming what is missing). Only nodes
/// whose declared region `allowed` accepts are taken (data residency).
async fn discover(
    node: &NodeHandle,
    model: &str,
    n_layers: usize,
    within: Duration,
    allowed: &kwaainet_p2p::region::AllowedRegions,
) -> anyhow::Result<Discovered> {
    let deadline = tokio::time::Instant::now() + within;
    let mut entries: Vec<ServerEntry> = Vec::new();
    let mut regions = std::collections::HashMap::new();
    // Spans of nodes outside the allowed regions (or undeclared), each counted once.
    let mut elsewhere = std::collections::HashSet::new();
    loop {
        let online = kwaainet_p2p::health::servers(node, model)
            .await
            .into_iter()
            .filter(|s| s.state == SpanState::Online);
        for server in online {
            if !allowed.allows(server.region.as_deref()) {
                elsewhere.insert((server.peer_id, server.start));
                continue;
            }
            let id = server.peer_id.to_string();
            if let Some(r) = &server.region {
                regions.insert(id.clone(), r.clone());
            }
            if entries
                .iter()
                .any(|e| e.id == id && e.blocks.start == server.start as usize)
            {
                continue;
            }
            connect(node, server.peer_id, server.addrs.iter()).await;
            let mut entry = ServerEntry::new(id, server.start as usize..server.end as usize);
            entry.throughput = server.throughput.map(f64::from);
            entry.free_cache = server.free_cache.map(|f| f as usize);
            entries.push(entry);
        }
        // Round trips as the node's pings measured them (none yet: the planner's default).
        if let Ok(state) = node.state().await {
            for e in &mut entries {
                if let Some(p) = state
                    .connected_peers
                    .iter()
                    .find(|p| p.peer_id.to_string() == e.id)
                {
                    e.rtt = p.rtt_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0));
                }
            }
        }
        match first_gap(&entries, n_layers) {
            None => return Ok(Discovered { entries, regions }),
            Some(gap) if tokio::time::Instant::now() >= deadline => {
                let place = if allowed.is_constrained() {
                    format!(
                        " in {allowed} ({} span(s) seen elsewhere or undeclared)",
                        elsewhere.len()
                    )
                } else {
                    String::new()
                };
                bail!(
                    "no server{place} covers blocks {}..{} of {model} ({} server(s) found in {} s)",
                    gap.start,
                    gap.end,
                    entries.len(),
                    within.as_secs()
                )
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Dials `peer` at the first of `addrs` that answers (streams to it then need no dial).
async fn connect<'a>(node: &NodeHandle, peer: PeerId, addrs: impl Iterator<Item = &'a Multiaddr>) {
    for a in addrs {
        let full = a.clone().with_p2p(peer).unwrap_or_else(|a| a);
        if node.dial(full).await.is_ok() {
            return;
        }
    }
}

/// The first blocks of `0..n` no entry covers.
fn first_gap(entries: &[ServerEntry], n: usize) -> Option<Range<usize>> {
    let mut at = 0;
    while at < n {
        let reach = entries
            .iter()
            .filter(|e| e.blocks.start <= at && at < e.blocks.end)
            .map(|e| e.blocks.end)
            .max();
        match reach {
            Some(end) => at = end,
            None => {
                let next = entries
                    .iter()
                    .map(|e| e.blocks.start)
                    .filter(|&s| s > at)
                    .min()
                    .unwrap_or(n);
                return Some(at..next.min(n));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blocks_parse() {
        assert_eq!(parse_blocks("0:10"), Ok(0..10));
        assert_eq!(parse_blocks(" 10 : 20 "), Ok(10..20));
        for bad in ["10", "5:5", "9:3", "a:3", ":", "-1:3"] {
            assert!(parse_blocks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gaps_are_found() {
        let e = |a: usize, b: usize| ServerEntry::new(format!("{a}"), a..b);
        assert_eq!(first_gap(&[e(0, 10), e(10, 30)], 30), None);
        assert_eq!(first_gap(&[e(0, 10), e(20, 30)], 30), Some(10..20));
        assert_eq!(first_gap(&[e(5, 30)], 30), Some(0..5));
        assert_eq!(first_gap(&[e(0, 12), e(8, 29)], 30), Some(29..30));
        assert_eq!(first_gap(&[], 30), Some(0..30));
    }

    #[test]
    fn model_ids_name_the_file_and_its_hash() {
        let g = Gguf {
            version: 3,
            metadata: vec![(
                "general.name".into(),
                Value::String("Smollm2 135M 8k".into()),
            )],
            tensors: vec![],
        };
        assert_eq!(
            model_id(&g, "b179c9523d0e6a0f98a3"),
            "smollm2-135m-8k@b179c9523d0e6a0f"
        );
    }
}
