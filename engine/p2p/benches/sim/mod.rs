//! An in-process swarm of real nodes on the memory transport (noise + yamux, the full
//! behaviour) for measuring the DHT at scale: each node bootstraps off a few earlier
//! nodes, publishes its signed record, then random nodes look up random records.
//! Used by `benches/dht_scale.rs` (1,000+ nodes) and by a small test (`tests/it/sim.rs`
//! includes this file with `#[path]`). It needs only the crate's public API, so it lives
//! out of the library: no feature, and nothing of it in the `kwaainet` binary.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::identity::Keypair;

use kwaainet_p2p::{NodeConfig, NodeHandle, Result, spawn_memory};

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes in the swarm.
    pub nodes: usize,
    /// Random record lookups to measure.
    pub lookups: usize,
    /// Earlier nodes each new node bootstraps from.
    pub bootstrap_fanout: usize,
    /// Queries in flight at once (publications and lookups).
    pub concurrency: usize,
    /// RNG seed (which nodes bootstrap from which, which lookups run).
    pub seed: u64,
    /// Idle connection timeout, in seconds. Connections a DHT query opened close this long
    /// after their last stream; the node's default (60 s) would keep O(N log N) noise +
    /// yamux connections open during the run (about 130 KiB of buffers each).
    pub idle_timeout_secs: u64,
    /// Keep the nodes' periodic maintenance (routing-table refresh every 5 min, record
    /// replication and re-publication every 10 min). Off by default: N nodes on one machine
    /// would do N machines' maintenance on its cores, so the run would measure the host's
    /// saturation, not the DHT (see engine/p2p/README.md, "Scale simulation").
    pub maintenance: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 1000,
            lookups: 1000,
            bootstrap_fanout: 3,
            concurrency: 32,
            seed: 42,
            idle_timeout_secs: 5,
            maintenance: false,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Nodes started.
    pub nodes: usize,
    /// Seconds to start and bootstrap every node.
    pub setup_secs: f64,
    /// Connections opened (each counted once, by its dialer) while the nodes joined.
    pub setup_connections: u64,
    /// Connections opened during the lookups.
    pub lookup_connections: u64,
    /// Average routing table size after the bootstrap.
    pub avg_routing_table: f64,
    /// Records stored on at least one other peer / nodes.
    pub published: usize,
    /// Seconds the publications took.
    pub publish_secs: f64,
    /// Lookups run.
    pub lookups: usize,
    /// Lookups that found the (verified) record.
    pub found: usize,
    /// Peers contacted per lookup: p50, p90, p99, max.
    pub requests: [u32; 4],
    /// Lookup latency in milliseconds: p50, p90, p99, max.
    pub latency_ms: [f64; 4],
    /// Peak resident memory of the process, in MiB (Linux), if known.
    pub peak_rss_mib: Option<f64>,
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = 100.0 * self.found as f64 / self.lookups.max(1) as f64;
        writeln!(f, "nodes                 {}", self.nodes)?;
        writeln!(f, "setup (start+boot)    {:.1} s", self.setup_secs)?;
        writeln!(
            f,
            "connections opened    {} joining ({:.0} per node), {} for the lookups ({:.1} per lookup)",
            self.setup_connections,
            self.setup_connections as f64 / self.nodes.max(1) as f64,
            self.lookup_connections,
            self.lookup_connections as f64 / self.lookups.max(1) as f64
        )?;
        writeln!(
            f,
            "avg routing table     {:.1} peers",
            self.avg_routing_table
        )?;
        writeln!(
            f,
            "records published     {}/{} in {:.1} s",
            self.published, self.nodes, self.publish_secs
        )?;
        writeln!(
            f,
            "lookup success        {}/{} ({rate:.2} %)",
            self.found, self.lookups
        )?;
        let [a, b, c, d] = self.requests;
        writeln!(
            f,
            "peers contacted       p50 {a}  p90 {b}  p99 {c}  max {d}"
        )?;
        let [a, b, c, d] = self.latency_ms;
        writeln!(
            f,
            "lookup latency        p50 {a:.1} ms  p90 {b:.1} ms  p99 {c:.1} ms  max {d:.1} ms"
        )?;
        if let Some(m) = self.peak_rss_mib {
            writeln!(f, "peak RSS              {m:.0} MiB")?;
        }
        Ok(())
    }
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

fn percentile<T: Copy + PartialOrd>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied()
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Connections `node` has dialed since it started (libp2p's swarm metrics), so that summed
/// over a swarm each connection counts once.
fn dialed(node: &NodeHandle) -> u64 {
    node.metrics_text()
        .lines()
        .filter(|l| l.starts_with("libp2p_swarm_connections_established_total{"))
        .filter(|l| l.contains("role=\"Dialer\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn dialed_total(nodes: &[NodeHandle]) -> u64 {
    nodes.iter().map(dialed).sum()
}

/// Runs the simulation on the current tokio runtime. Every query has a timeout; nodes are
/// shut down at the end.
pub async fn run(cfg: SimConfig) -> Result<SimReport> {
    let mut rng = Rng(cfg.seed | 1);
    let t0 = Instant::now();
    let mut nodes: Vec<NodeHandle> = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        let mut bootstrap = Vec::new();
        for _ in 0..cfg.bootstrap_fanout.min(i) {
            let j = rng.below(i);
            if let Some(a) = nodes[j].listen_addrs().first() {
                bootstrap.push(a.clone());
            }
        }
        let config = NodeConfig {
            listen: vec![
                "/memory/0"
                    .parse()
                    .map_err(|_| kwaainet_p2p::Error::Config("memory address".into()))?,
            ],
            bootstrap,
            full: true,
            allow_local_addrs: true,
            autonat: false,
            idle_timeout_secs: cfg.idle_timeout_secs,
            ..NodeConfig::default()
        };
        let config = if cfg.maintenance {
            config
        } else {
            NodeConfig {
                dht_bootstrap_secs: 0,
                records: kwaainet_p2p::config::RecordTimes {
                    ttl_secs: 24 * 3600,
                    refresh_secs: 12 * 3600,
                },
                ..config
            }
        };
        let node = spawn_memory(config, Keypair::generate_ed25519()).await?;
        // Join one at a time: wait (bounded) until the newcomer has stored its record on a
        // peer, so 1,000 bootstraps do not all start within the same second (an arrival
        // rate no real swarm sees, and one that saturates a 2-core machine).
        if i > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(10), node.publish()).await;
        }
        nodes.push(node);
        if (i + 1) % 100 == 0 {
            tracing::info!(
                nodes = i + 1,
                secs = t0.elapsed().as_secs_f64(),
                connections = dialed_total(&nodes),
                "started"
            );
        }
    }
    // Let the bootstrap lookups settle: until the average routing table stops growing
    // (checked every second, at most 60 s).
    let mut last = 0.0;
    let mut avg = 0.0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut total = 0usize;
        for n in &nodes {
            total += n.state().await.map(|s| s.routing_table_peers).unwrap_or(0);
        }
        avg = total as f64 / nodes.len().max(1) as f64;
        tracing::info!(avg_routing_table = avg, "bootstrapping");
        if avg > 0.0 && avg - last < 0.5 {
            break;
        }
        last = avg;
    }
    let setup_secs = t0.elapsed().as_secs_f64();
    let setup_connections = dialed_total(&nodes);

    // Publications, `concurrency` at a time.
    let t1 = Instant::now();
    let mut published = 0;
    let mut inflight = FuturesUnordered::new();
    for n in &nodes {
        if inflight.len() >= cfg.concurrency
            && let Some(ok) = inflight.next().await
        {
            published += usize::from(ok);
        }
        inflight.push(async move {
            matches!(
                tokio::time::timeout(Duration::from_secs(30), n.publish()).await,
                Ok(Ok(()))
            )
        });
    }
    while let Some(ok) = inflight.next().await {
        published += usize::from(ok);
    }
    let publish_secs = t1.elapsed().as_secs_f64();
    tracing::info!(published, publish_secs, "published");

    // Lookups of random records from random nodes.
    let before_lookups = dialed_total(&nodes);
    let pairs: Vec<(usize, usize)> = (0..cfg.lookups)
        .map(|_| {
            let a = rng.below(nodes.len());
            let mut b = rng.below(nodes.len());
            if b == a {
                b = (b + 1) % nodes.len();
            }
            (a, b)
        })
        .collect();
    let mut found = 0;
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut it = pairs.into_iter();
    loop {
        while inflight.len() < cfg.concurrency {
            let Some((a, b)) = it.next() else { break };
            let (src, dst) = (&nodes[a], nodes[b].peer_id());
            inflight.push(async move {
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(30), src.lookup_node_record(dst))
                    .await;
                (r, t.elapsed())
            });
        }
        let Some((r, wall)) = inflight.next().await else {
            break;
        };
        if let Ok(Ok(l)) = r {
            if l.record.is_some() {
                found += 1;
            }
            requests.push(l.requests);
            latency.push(wall.as_secs_f64() * 1000.0);
        } else {
            latency.push(wall.as_secs_f64() * 1000.0);
        }
    }
    requests.sort_unstable();
    latency.sort_by(f64::total_cmp);
    let q = [0.5, 0.9, 0.99, 1.0];
    let report = SimReport {
        nodes: nodes.len(),
        setup_secs,
        setup_connections,
        lookup_connections: dialed_total(&nodes).saturating_sub(before_lookups),
        avg_routing_table: avg,
        published,
        publish_secs,
        lookups: cfg.lookups,
        found,
        requests: q.map(|p| percentile(&requests, p).unwrap_or(0)),
        latency_ms: q.map(|p| percentile(&latency, p).unwrap_or(0.0)),
        peak_rss_mib: peak_rss_mib(),
    };
    let mut stops: FuturesUnordered<_> = nodes.iter().map(|n| n.shutdown()).collect();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while stops.next().await.is_some() {}
    })
    .await;
    Ok(report)
}
