//! A node's span service, from start to stop: take the operator's blocks (pinned) or choose
//! the most under-served window of the swarm (`--blocks auto`, Petals' rule in
//! `kwaainet_swarm::placement`), load and measure it, announce it (`joining`, then
//! `online`), serve it, keep its record's free cache current, move when the swarm is
//! unbalanced enough (auto only: a pinned span never moves), and on stop announce it
//! `draining`, let its sessions finish and withdraw it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kwaainet_p2p::NodeHandle;
use kwaainet_p2p::libp2p::PeerId;
use kwaainet_p2p::record::{ServedSpan, SpanState};
use kwaainet_swarm::net::ServerSlot;
use kwaainet_swarm::placement::{self, Placed};
use kwaainet_swarm::server::StepMeter;

use crate::swarm::{Span, SpanArgs};

/// Which blocks to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocks {
    /// These, always.
    Pinned(Range<usize>),
    /// The most under-served window of the swarm, moved when it becomes unbalanced.
    Auto,
}

/// The model a node serves spans of.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The GGUF file.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
}

/// How often a span server re-announces its free cache when it changed.
const FREE_CACHE_EVERY: Duration = Duration::from_secs(15);
/// How long a stopping span server waits for its sessions to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// How long an announcement may wait for a peer to store it (it is republished anyway).
const ANNOUNCE: Duration = Duration::from_secs(5);
/// How long a joining auto node looks at the swarm before choosing.
const LOOK: Duration = Duration::from_secs(5);

/// A running span service.
pub struct Service {
    node: NodeHandle,
    slot: Arc<ServerSlot>,
    announced: Arc<Mutex<ServedSpan>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// What reads the span server's counters (its work since it started; a new server
    /// after the span moved starts again from zero).
    pub fn stats_source(
        &self,
    ) -> impl Fn() -> kwaainet_swarm::server::ServerStats + Send + Sync + 'static {
        let slot = Arc::clone(&self.slot);
        move || slot.get().stats()
    }

    /// The span announced now.
    pub fn announced(&self) -> ServedSpan {
        snapshot(&self.announced)
    }

    /// Stops taking sessions: announces the span `draining` and waits (at most [`DRAIN`])
    /// for the open ones to end. The node's shutdown then withdraws the span.
    pub async fn drain(self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut span = self.announced();
        span.state = SpanState::Draining;
        announce(&self.node, &self.announced, span).await;
        let server = self.slot.get();
        let deadline = tokio::time::Instant::now() + DRAIN;
        while server.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The span as last announced (a poisoned lock still holds it).
fn snapshot(current: &Mutex<ServedSpan>) -> ServedSpan {
    current
        .lock()
        .map(|a| a.clone())
        .unwrap_or_else(|e| e.into_inner().clone())
}

/// Publishes `span` as the node's only span (bounded wait) and remembers it.
async fn announce(node: &NodeHandle, current: &Mutex<ServedSpan>, span: ServedSpan) {
    if let Ok(mut c) = current.lock() {
        *c = span.clone();
    }
    match tokio::time::timeout(ANNOUNCE, node.set_spans(vec![span])).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "span announcement not stored yet"),
        Err(_) => tracing::debug!("span announcement not stored yet (timeout)"),
        Ok(Ok(())) => {}
    }
}

/// The spans of `model` the swarm announces (`joining` and `online`), by server.
pub async fn swarm_spans(node: &NodeHandle, model: &str) -> Vec<(PeerId, Placed)> {
    kwaainet_p2p::health::servers(node, model)
        .await
        .into_iter()
        .filter(|s| matches!(s.state, SpanState::Online | SpanState::Joining))
        .map(|s| {
            let placed = Placed {
                blocks: s.start as usize..s.end as usize,
                throughput: s.throughput.map_or(1.0, f64::from),
            };
            (s.peer_id, placed)
        })
        .collect()
}

fn placed(spans: &[(PeerId, Placed)]) -> Vec<Placed> {
    spans.iter().map(|(_, p)| p.clone()).collect()
}

async fn load(
    model: &ModelFile,
    args: &SpanArgs,
    blocks: Range<usize>,
    data_dir: &Path,
) -> anyhow::Result<Span> {
    let (model, args, dir) = (model.clone(), args.clone(), data_dir.to_owned());
    tokio::task::spawn_blocking(move || {
        crate::swarm::load_span(&model.path, &model.sha256, &args, blocks, &dir)
    })
    .await
    .context("the loading task")?
}

/// Starts serving on `node` (which already runs): chooses the blocks when `auto`, loads,
/// announces and serves them, and keeps the record current. `meter` accounts each step
/// (whichever blocks the node serves, after a move too).
pub async fn start(
    node: &NodeHandle,
    model: &ModelFile,
    args: &SpanArgs,
    blocks: Blocks,
    data_dir: &Path,
    meter: Arc<dyn StepMeter>,
) -> anyhow::Result<Service> {
    let id = crate::swarm::model_id_of(&model.path, &model.sha256)?;
    let n = crate::swarm::block_count(&model.path)?;
    let len = args.num_blocks.unwrap_or(n).clamp(1, n);
    let range = match &blocks {
        Blocks::Pinned(r) => r.clone(),
        Blocks::Auto => {
            // Look at the swarm once the node has met it (bounded).
            let deadline = tokio::time::Instant::now() + LOOK;
            let mut spans = Vec::new();
            while tokio::time::Instant::now() < deadline {
                spans = swarm_spans(node, &id).await;
                let met = node.state().await.map(|s| !s.connected_peers.is_empty());
                if !spans.is_empty() || !matches!(met, Ok(false)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let start =
                placement::choose_start(&placement::coverage(&placed(&spans), n), len, None);
            tracing::info!(
                start,
                end = start + len,
                servers = spans.len(),
                "auto: chose the most under-served blocks"
            );
            start..start + len
        }
    };
    let announced = Arc::new(Mutex::new(ServedSpan::new(
        id.clone(),
        u32::try_from(range.start)?,
        u32::try_from(range.end)?,
    )));
    let mut joining = ServedSpan::new(
        id.clone(),
        u32::try_from(range.start)?,
        u32::try_from(range.end)?,
    );
    joining.state = SpanState::Joining;
    announce(node, &announced, joining).await;
    let span = load(model, args, range, data_dir).await?;
    span.server.set_meter(Arc::clone(&meter));
    announce(node, &announced, span.announced.clone()).await;
    let slot = Arc::new(ServerSlot::new(Arc::clone(&span.server)));
    let mut tasks = vec![crate::swarm::serve(node, Arc::clone(&slot))];
    let keeper = Keeper {
        node: node.clone(),
        slot: Arc::clone(&slot),
        announced: Arc::clone(&announced),
        model: model.clone(),
        args: args.clone(),
        data_dir: data_dir.to_owned(),
        n,
        auto: blocks == Blocks::Auto,
        meter,
    };
    tasks.push(tokio::spawn(keeper.run()));
    Ok(Service {
        node: node.clone(),
        slot,
        announced,
        tasks,
    })
}

/// Keeps a span's record current, and moves an auto span when the swarm needs it.
struct Keeper {
    node: NodeHandle,
    slot: Arc<ServerSlot>,
    announced: Arc<Mutex<ServedSpan>>,
    model: ModelFile,
    args: SpanArgs,
    data_dir: PathBuf,
    n: usize,
    auto: bool,
    meter: Arc<dyn StepMeter>,
}

impl Keeper {
    fn current(&self) -> ServedSpan {
        snapshot(&self.announced)
    }

    async fn run(self) {
        let mut free_tick = tokio::time::interval(FREE_CACHE_EVERY);
        let every = Duration::from_secs(self.args.rebalance_secs.max(1));
        let mut move_tick = tokio::time::interval(every);
        free_tick.tick().await;
        move_tick.tick().await;
        loop {
            tokio::select! {
                _ = free_tick.tick() => {
                    let mut span = self.current();
                    let free = Some(u32::try_from(self.slot.get().free_tokens()).unwrap_or(u32::MAX));
                    if free != span.free_cache {
                        span.free_cache = free;
                        announce(&self.node, &self.announced, span).await;
                    }
                }
                _ = move_tick.tick(), if self.auto && self.args.rebalance_secs > 0 => {
                    if let Err(e) = self.rebalance().await {
                        tracing::warn!(error = %e, "cannot move the span");
                    }
                }
            }
        }
    }

    /// Moves the span when [`placement::should_move`] says so.
    async fn rebalance(&self) -> anyhow::Result<()> {
        let me = self.node.peer_id();
        let mine = self.current();
        // The swarm as announced, with our own span as we know it.
        let mut spans: Vec<(PeerId, Placed)> = swarm_spans(&self.node, &mine.model)
            .await
            .into_iter()
            .filter(|(p, _)| *p != me)
            .collect();
        let own = Placed {
            blocks: mine.start as usize..mine.end as usize,
            throughput: mine.throughput.map_or(1.0, f64::from),
        };
        spans.insert(0, (me, own));
        let Some(start) =
            placement::should_move(&placed(&spans), 0, self.n, self.args.balance_quality)
        else {
            return Ok(());
        };
        let len = (mine.end - mine.start) as usize;
        tracing::info!(
            from = mine.start,
            to = start,
            "the swarm is unbalanced: moving the span"
        );
        let span = load(&self.model, &self.args, start..start + len, &self.data_dir).await?;
        // New sessions go to the new blocks (pushing on like the old server did); open ones
        // finish on the old server.
        span.server.set_pusher(crate::swarm::pusher(&self.node));
        span.server.set_meter(Arc::clone(&self.meter));
        self.slot.replace(Arc::clone(&span.server));
        announce(&self.node, &self.announced, span.announced.clone()).await;
        #[allow(clippy::print_stdout)] // the same line as at start, for operators and tests
        {
            println!(
                "serving blocks {}..{} of {}",
                span.announced.start, span.announced.end, span.announced.model
            );
        }
        Ok(())
    }
}
