//! Where requests run: the local model through continuous batching (one engine thread
//! owning a [`Batcher`]), or the swarm (a session per request on the blocking pool).
//! Both report the same [`Out`] events on a per-request channel; dropping the receiver
//! (a client gone) cancels the request at the next step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kwaainet_core::batch::{BatchConfig, BatchEvent, BatchRequest, Batcher, TokenLogprob};
use kwaainet_core::generate::{FinishReason, Generator, Session, Step};
use kwaainet_core::{Llama, Tokenizer};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What a running request reports, in order: `Prefilled`, `Token`s, then `Done` or
/// `Failed`.
#[derive(Debug)]
pub enum Out {
    /// The prompt has run (prompt log-probabilities, when asked for).
    Prefilled(Option<Vec<Option<TokenLogprob>>>),
    /// A token and the text it made final.
    Token {
        /// Token id.
        token: u32,
        /// Final text (may be empty).
        text: String,
        /// Its log-probability, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The end.
    Done {
        /// Text released at the end.
        text: String,
        /// Why it ended.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (an end-of-generation token included).
        completion_tokens: usize,
        /// What it cost: this node's compute time and the swarm's hops.
        cost: JobCost,
    },
    /// It failed.
    Failed(ApiError),
}

/// What a finished request cost, for the node's environmental accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCost {
    /// Compute time this node spent on it: locally, its share of each batched step it was
    /// in (steps split evenly among their requests); through the swarm, the embedding and
    /// the head.
    pub busy: Duration,
    /// Through the swarm: the energy and carbon its route's servers reported, summed.
    pub hops: Option<kwaainet_footprint::Footprint>,
}

/// A request for a backend: the prompt's tokens, how to generate, which log-probabilities
/// to report (the batch's own request type: the swarm path reads the same fields).
pub type Work = BatchRequest;

/// How long a client is told to wait before retrying when the server is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Limits of the local engine.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Sequences decoded together.
    pub slots: usize,
    /// Prompt rows a pass may add to the decode rows (chunked prefill).
    pub prefill_chunk: usize,
    /// Most positions one request may use (prompt + completion).
    pub context: usize,
    /// Cache positions all running requests together may reserve.
    pub kv_budget: usize,
    /// Requests waiting for a slot at most; more are answered 429.
    pub max_queue: usize,
    /// How long a request may wait for a slot before a 503.
    pub queue_timeout: Duration,
}

struct Queued {
    id: u64,
    work: Work,
    tx: UnboundedSender<Out>,
    since: Instant,
}

struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    wake: Condvar,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Sequences in the batch (for the API's state).
    active: AtomicUsize,
}

/// The local model behind continuous batching.
pub struct LocalEngine {
    shared: Arc<Shared>,
    cfg: LocalConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl LocalEngine {
    /// Starts the engine thread over `model` (loaded whole); its kernels run on `pool`
    /// (rayon's global pool when `None`).
    pub fn start(
        model: Arc<Llama>,
        tokenizer: Arc<Tokenizer>,
        cfg: LocalConfig,
        metrics: Arc<Metrics>,
        pool: Option<rayon::ThreadPool>,
    ) -> Result<Self, kwaainet_core::Error> {
        let batcher = Batcher::new(
            model,
            BatchConfig {
                max_seqs: cfg.slots,
                step_tokens: cfg.slots + cfg.prefill_chunk,
                max_ctx: cfg.context,
                kv_budget: cfg.kv_budget,
            },
        )?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            active: AtomicUsize::new(0),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name("kwaainet-batch".into())
                .spawn(move || match pool {
                    Some(p) => p.install(|| run(batcher, &tokenizer, &shared, &cfg, &metrics)),
                    None => run(batcher, &tokenizer, &shared, &cfg, &metrics),
                })
                .map_err(kwaainet_core::Error::Io)?
        };
        Ok(Self {
            shared,
            cfg,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The limits.
    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// Queues `work`; its events arrive on the receiver. A full queue is a 429.
    pub fn submit(&self, work: Work) -> Result<UnboundedReceiver<Out>, ApiError> {
        let (tx, rx) = unbounded_channel();
        let mut q = self
            .shared
            .queue
            .lock()
            .map_err(|_| ApiError::internal("engine queue poisoned"))?;
        if self.shared.stop.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable(
                "the node is shutting down",
                RETRY_AFTER,
            ));
        }
        if q.len() >= self.cfg.max_queue {
            return Err(ApiError::overloaded(RETRY_AFTER));
        }
        q.push_back(Queued {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            work,
            tx,
            since: Instant::now(),
        });
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().map_or(0, |q| q.len())
    }

    /// Requests decoding now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Stops the engine thread (running and queued requests fail with a 503).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for LocalEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running request's channel and timing.
struct Running {
    tx: UnboundedSender<Out>,
    started: Instant,
    last_token: Option<Instant>,
    /// Its share of the steps so far.
    busy: Duration,
}

/// The engine thread: admit queued requests into free slots, run a batched step, hand
/// out the events, drop requests whose client left. Bounded: it waits on the condition
/// variable when idle and exits when `stop` is set.
fn run(
    mut batcher: Batcher,
    tokenizer: &Tokenizer,
    shared: &Shared,
    cfg: &LocalConfig,
    metrics: &Metrics,
) {
    let mut running: HashMap<u64, Running> = HashMap::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            let gone = ApiError::unavailable("the node is shutting down", RETRY_AFTER);
            for r in running.values() {
                let _ = r.tx.send(Out::Failed(gone.clone()));
            }
            if let Ok(mut q) = shared.queue.lock() {
                for job in q.drain(..) {
                    let _ = job.tx.send(Out::Failed(gone.clone()));
                }
            }
            return;
        }
        admit(&mut batcher, shared, cfg, metrics, &mut running);
        // Clients that went away leave at once (their slot and cache are freed).
        running.retain(|&id, r| {
            if r.tx.is_closed() {
                batcher.cancel(id);
                metrics.cancelled.inc();
                false
            } else {
                true
            }
        });
        shared.active.store(batcher.active(), Ordering::Relaxed);
        metrics.active.set(batcher.active() as i64);
        if batcher.active() == 0 {
            continue;
        }
        let t0 = Instant::now();
        let events = batcher.step(tokenizer);
        let now = Instant::now();
        // The step's time, shared by the requests it ran.
        let share = (now - t0) / u32::try_from(running.len().max(1)).unwrap_or(u32::MAX);
        for r in running.values_mut() {
            r.busy += share;
        }
        for ev in events {
            dispatch(ev, &mut running, metrics, now);
        }
        shared.active.store(batcher.active(), Ordering::Relaxed);
    }
}

/// Moves queued requests into the batch while they fit; waits for work when idle.
fn admit(
    batcher: &mut Batcher,
    shared: &Shared,
    cfg: &LocalConfig,
    metrics: &Metrics,
    running: &mut HashMap<u64, Running>,
) {
    let Ok(mut q) = shared.queue.lock() else {
        return;
    };
    if batcher.active() == 0 && q.is_empty() {
        let waited = shared.wake.wait_timeout(q, Duration::from_millis(200));
        let Ok((guard, _)) = waited else { return };
        q = guard;
    }
    while let Some(front) = q.front() {
        if front.tx.is_closed() {
            q.pop_front();
            metrics.cancelled.inc();
            continue;
        }
        if front.since.elapsed() > cfg.queue_timeout {
            if let Some(job) = q.pop_front() {
                let _ = job.tx.send(Out::Failed(ApiError::unavailable(
                    format!(
                        "no slot became free within {} s: the server is overloaded",
                        cfg.queue_timeout.as_secs()
                    ),
                    RETRY_AFTER,
                )));
            }
            continue;
        }
        if !batcher.can_admit(front.work.positions(cfg.context)) {
            break;
        }
        let Some(job) = q.pop_front() else { break };
        match batcher.add(job.id, job.work) {
            Ok(()) => {
                metrics
                    .queue_wait
                    .observe(job.since.elapsed().as_secs_f64());
                running.insert(
                    job.id,
                    Running {
                        tx: job.tx,
                        started: job.since,
                        last_token: None,
                        busy: Duration::ZERO,
                    },
                );
            }
            Err(e) => {
                let _ = job.tx.send(Out::Failed(e.into()));
            }
        }
    }
    metrics.queue_depth.set(q.len() as i64);
}

fn dispatch(ev: BatchEvent, running: &mut HashMap<u64, Running>, metrics: &Metrics, now: Instant) {
    match ev {
        BatchEvent::Prefilled { id, logprobs } => {
            if let Some(r) = running.get(&id) {
                let _ = r.tx.send(Out::Prefilled(logprobs));
            }
        }
        BatchEvent::Token {
            id,
            token,
            text,
            logprob,
        } => {
            if let Some(r) = running.get_mut(&id) {
                match r.last_token {
                    None => metrics
                        .ttft
                        .observe(now.duration_since(r.started).as_secs_f64()),
                    Some(t) => metrics.itl.observe(now.duration_since(t).as_secs_f64()),
                }
                r.last_token = Some(now);
                let _ = r.tx.send(Out::Token {
                    token,
                    text,
                    logprob,
                });
            }
        }
        BatchEvent::Finished {
            id,
            text,
            reason,
            prompt_tokens,
            completion_tokens,
            ..
        } => {
            if let Some(r) = running.remove(&id) {
                let _ = r.tx.send(Out::Done {
                    text,
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cost: JobCost {
                        busy: r.busy,
                        hops: None,
                    },
                });
            }
        }
        BatchEvent::Failed { id, error } => {
            if let Some(r) = running.remove(&id) {
                let _ = r.tx.send(Out::Failed(error.into()));
            }
        }
    }
}

/// A generation session through the swarm, which says what it cost.
pub trait RemoteSession: Session + Send {
    /// Compute time spent here (the embedding and the head).
    fn local_busy(&self) -> Duration;
    /// The energy and carbon the route's servers reported, summed.
    fn hops(&self) -> Option<kwaainet_footprint::Footprint>;
}

/// Opens generation sessions through the swarm (the node's client side implements it).
pub trait SessionSource: Send + Sync + 'static {
    /// A session holding up to `max_ctx` positions; blocking (called on the blocking
    /// pool). The error says why no route exists now.
    fn open(&self, max_ctx: usize) -> Result<Box<dyn RemoteSession>, String>;
}

/// The swarm behind the API: one session per request, at most `slots` at once.
pub struct RemoteEngine {
    source: Arc<dyn SessionSource>,
    tokenizer: Arc<Tokenizer>,
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
    context: usize,
    max_queue: usize,
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl RemoteEngine {
    /// A swarm backend with the local engine's limits (slots, queue, context).
    pub fn new(
        source: Arc<dyn SessionSource>,
        tokenizer: Arc<Tokenizer>,
        cfg: &LocalConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            tokenizer,
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.slots)),
            waiting: Arc::new(AtomicUsize::new(0)),
            context: cfg.context,
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
            metrics,
        }
    }

    /// Starts `work` on the swarm (call on a tokio runtime).
    pub fn submit(&self, work: Work) -> Result<UnboundedReceiver<Out>, ApiError> {
        if work.prompt_logprobs {
            return Err(ApiError::unsupported(
                "echo",
                "prompt log-probabilities (echo with logprobs) need a node that holds the whole model",
            ));
        }
        if self.waiting.load(Ordering::Relaxed) >= self.max_queue {
            return Err(ApiError::overloaded(RETRY_AFTER));
        }
        let (tx, rx) = unbounded_channel();
        let permits = Arc::clone(&self.permits);
        let waiting = Arc::clone(&self.waiting);
        let source = Arc::clone(&self.source);
        let tokenizer = Arc::clone(&self.tokenizer);
        let metrics = Arc::clone(&self.metrics);
        let (context, timeout) = (self.context, self.queue_timeout);
        waiting.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let permit = tokio::time::timeout(timeout, permits.acquire_owned()).await;
            waiting.fetch_sub(1, Ordering::Relaxed);
            let Ok(Ok(permit)) = permit else {
                let _ = tx.send(Out::Failed(ApiError::unavailable(
                    "no swarm slot became free in time: the server is overloaded",
                    RETRY_AFTER,
                )));
                return;
            };
            let positions = work.positions(context);
            let done = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                metrics.active.inc();
                remote_generate(&*source, &tokenizer, &work, positions, &tx, &metrics);
                metrics.active.dec();
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "swarm generation task");
            }
        });
        Ok(rx)
    }
}

/// One request through a swarm session, stopping when the client leaves.
fn remote_generate(
    source: &dyn SessionSource,
    tokenizer: &Tokenizer,
    work: &Work,
    positions: usize,
    tx: &UnboundedSender<Out>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let session = match source.open(positions) {
        Ok(s) => s,
        Err(why) => {
            let _ = tx.send(Out::Failed(ApiError::unavailable(
                format!("the swarm cannot serve this model now: {why}"),
                Duration::from_secs(5),
            )));
            return;
        }
    };
    let mut g = match Generator::new(session, &work.prompt, &work.opts) {
        Ok(g) => g,
        Err(e) => {
            let _ = tx.send(Out::Failed(e.into()));
            return;
        }
    };
    let mut last: Option<Instant> = None;
    loop {
        if tx.is_closed() {
            metrics.cancelled.inc();
            return;
        }
        let out = match g.step(tokenizer) {
            Ok(Step::Prefilled) => Out::Prefilled(None),
            Ok(Step::Token { id, text }) => {
                let now = Instant::now();
                match last {
                    None => metrics.ttft.observe((now - started).as_secs_f64()),
                    Some(t) => metrics.itl.observe((now - t).as_secs_f64()),
                }
                last = Some(now);
                Out::Token {
                    token: id,
                    logprob: work
                        .top_logprobs
                        .map(|k| kwaainet_core::batch::token_logprob(g.logits(), id, k)),
                    text,
                }
            }
            Ok(Step::Finished { text, reason }) => {
                let _ = tx.send(Out::Done {
                    text,
                    reason,
                    prompt_tokens: g.prompt_tokens(),
                    completion_tokens: g.tokens().len(),
                    cost: JobCost {
                        busy: g.session().local_busy(),
                        hops: g.session().hops(),
                    },
                });
                return;
            }
            Err(e) => {
                // A swarm failure the client's failover could not mend: fail fast.
                let _ = tx.send(Out::Failed(match e {
                    kwaainet_core::Error::Backend(m) => {
                        ApiError::unavailable(m, Duration::from_secs(5))
                    }
                    other => other.into(),
                }));
                return;
            }
        };
        if tx.send(out).is_err() {
            metrics.cancelled.inc();
            return;
        }
    }
}
