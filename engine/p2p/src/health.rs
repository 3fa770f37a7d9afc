//! The swarm's health per model, in the spirit of health.petals.dev: which blocks are
//! served and by whom, from the DHT's span records. A [`Monitor`] refreshes the reports of
//! the models a node cares about (those it serves, and those its operator names) in the
//! background, and `/api/v1/state` shows them under `models`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::node::NodeHandle;
use crate::record::{Accelerator, ServedSpan, SpanState};

/// Most servers listed in one report (the DHT decides how many providers it returns; a
/// report stays bounded whatever it says).
pub const MAX_SERVERS: usize = 256;
/// Most blocks a report describes.
pub const MAX_BLOCKS: u32 = 4096;

/// One server of a model, as its record announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRow {
    /// The server.
    pub peer_id: PeerId,
    /// First block served.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Joining, online or draining.
    pub state: SpanState,
    /// Tokens per second through one block, as measured by the server.
    pub throughput: Option<f32>,
    /// KV-cache positions free.
    pub free_cache: Option<u32>,
    /// Reachable only through a relay.
    pub relayed: bool,
    /// Its compute.
    pub accelerator: Accelerator,
    /// Its software version.
    pub version: String,
    /// The coarse region its operator declares (see [`crate::region`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where it can be dialed (from its signed record), direct addresses first. Not shown in
    /// reports: clients use them to connect.
    #[serde(skip)]
    pub addrs: Vec<Multiaddr>,
}

/// A model's coverage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// The model id (name and content hash).
    pub model: String,
    /// Its blocks (as the operator said, or as far as any server reaches).
    pub blocks: u32,
    /// Online servers per block.
    pub coverage: Vec<u32>,
    /// Summed throughput of the online servers per block (tokens/s).
    pub throughput: Vec<f32>,
    /// Every block has an online server: a client can generate through the swarm.
    pub complete: bool,
    /// The servers, by first block.
    pub servers: Vec<ServerRow>,
    /// When this report was made (seconds since the Unix epoch).
    pub updated_at: u64,
}

fn row(peer: PeerId, span: &ServedSpan, record: &crate::record::NodeRecord) -> ServerRow {
    ServerRow {
        peer_id: peer,
        start: span.start,
        end: span.end,
        state: span.state,
        throughput: span.throughput,
        free_cache: span.free_cache,
        relayed: !record.addrs.is_empty() && record.addrs.iter().all(|a| a.relayed),
        accelerator: record.accelerator,
        version: record.version.clone(),
        region: record.region.clone(),
        addrs: {
            let mut a: Vec<_> = record.addrs.iter().collect();
            a.sort_by_key(|e| e.relayed);
            a.into_iter().map(|e| e.addr.clone()).collect()
        },
    }
}

/// The report of `model` from `rows`; `blocks` when known, else as far as a server reaches.
pub fn summarize(model: &str, blocks: Option<u32>, mut rows: Vec<ServerRow>) -> ModelReport {
    rows.sort_by_key(|r| (r.start, r.end, r.peer_id.to_string()));
    rows.truncate(MAX_SERVERS);
    let n = blocks
        .unwrap_or_else(|| rows.iter().map(|r| r.end).max().unwrap_or(0))
        .min(MAX_BLOCKS);
    let mut coverage = vec![0u32; n as usize];
    let mut throughput = vec![0f32; n as usize];
    for r in rows.iter().filter(|r| r.state == SpanState::Online) {
        for b in r.start.min(n)..r.end.min(n) {
            coverage[b as usize] += 1;
            throughput[b as usize] += r.throughput.unwrap_or(0.0);
        }
    }
    ModelReport {
        model: model.to_owned(),
        blocks: n,
        complete: n > 0 && coverage.iter().all(|&c| c > 0),
        coverage,
        throughput,
        servers: rows,
        updated_at: crate::record::unix_now(),
    }
}

/// Asks the DHT for `model`'s report.
pub async fn report(node: &NodeHandle, model: &str, blocks: Option<u32>) -> ModelReport {
    summarize(model, blocks, servers(node, model).await)
}

/// Asks the DHT for `model`'s servers (its providers) and their spans (their signed records),
/// whatever their state: the directory clients route with and servers place themselves by.
/// The clients a provider hosts (browser pages behind its relay) are read from their own
/// signed records, kept only while the relay lists them and if they route through it.
pub async fn servers(node: &NodeHandle, model: &str) -> Vec<ServerRow> {
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let providers = node.model_providers(model).await.unwrap_or_default();
    for peer in providers.into_iter().take(MAX_SERVERS) {
        let Ok(Some(record)) = node.get_node_record(peer).await else {
            continue;
        };
        if seen.insert(peer) {
            rows.extend(spans_of(model, &record));
        }
        for &hosted in record.hosted.iter().take(crate::record::MAX_HOSTED) {
            if rows.len() >= MAX_SERVERS || !seen.insert(hosted) {
                continue;
            }
            match node.get_node_record(hosted).await {
                Ok(Some(h)) if crate::host::check_hostable(&h, peer).is_ok() => {
                    rows.extend(spans_of(model, &h));
                }
                _ => tracing::debug!(%hosted, relay = %peer, "hosted record missing or invalid"),
            }
        }
    }
    rows
}

fn spans_of<'a>(
    model: &'a str,
    record: &'a crate::record::NodeRecord,
) -> impl Iterator<Item = ServerRow> + 'a {
    record
        .spans
        .iter()
        .filter(move |s| s.model == model)
        .map(|s| row(record.peer_id, s, record))
}

/// Keeps reports of the watched models fresh; stops when dropped.
#[derive(Debug)]
pub struct Monitor {
    reports: Arc<RwLock<Vec<ModelReport>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Reports every `every` on `watch` (model id, its blocks if known) and on the models the
    /// node serves.
    pub fn spawn(node: NodeHandle, watch: Vec<(String, Option<u32>)>, every: Duration) -> Self {
        let reports = Arc::new(RwLock::new(Vec::new()));
        let out = Arc::clone(&reports);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let mut models = watch.clone();
                if let Ok(state) = node.state().await {
                    for s in state.spans {
                        if !models.iter().any(|(m, _)| *m == s.model) {
                            models.push((s.model, None));
                        }
                    }
                }
                let mut fresh = Vec::with_capacity(models.len());
                for (model, blocks) in &models {
                    fresh.push(report(&node, model, *blocks).await);
                }
                if let Ok(mut r) = out.write() {
                    *r = fresh;
                }
            }
        });
        Self { reports, task }
    }

    /// The latest reports.
    pub fn reports(&self) -> Vec<ModelReport> {
        self.reports.read().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(start: u32, end: u32, state: SpanState, t: f32) -> ServerRow {
        ServerRow {
            peer_id: PeerId::random(),
            start,
            end,
            state,
            throughput: Some(t),
            free_cache: Some(100),
            relayed: false,
            accelerator: Accelerator::Cpu,
            version: "0".into(),
            region: None,
            addrs: Vec::new(),
        }
    }

    #[test]
    fn coverage_counts_online_servers_only() {
        let rows = vec![
            r(10, 30, SpanState::Online, 2.0),
            r(0, 10, SpanState::Online, 1.0),
            r(0, 30, SpanState::Draining, 9.0),
        ];
        let rep = summarize("m", Some(30), rows.clone());
        assert!(rep.complete);
        assert_eq!(rep.coverage, [vec![1; 10], vec![1; 20]].concat());
        assert_eq!(rep.throughput[0], 1.0);
        assert_eq!(rep.throughput[29], 2.0);
        assert_eq!(rep.servers[0].start, 0);
        // Without the first server a gap remains; blocks unknown: as far as servers reach.
        let rep = summarize("m", None, rows[1..].to_vec());
        assert_eq!(rep.blocks, 30);
        assert!(!rep.complete);
        assert_eq!(rep.coverage[10..], [0; 20]);
        // Nothing at all.
        let rep = summarize("m", None, vec![]);
        assert_eq!((rep.blocks, rep.complete), (0, false));
        // A hostile record cannot make the report huge.
        let rep = summarize(
            "m",
            Some(u32::MAX),
            vec![r(0, u32::MAX, SpanState::Online, 1.0)],
        );
        assert_eq!(rep.coverage.len(), MAX_BLOCKS as usize);
    }
}
