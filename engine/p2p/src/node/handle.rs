//! [`NodeHandle`], the caller's side of a running node: each method is one [`Command`]
//! over the node's bounded queue, answered on its own oneshot.

use std::sync::Arc;

use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;

use super::state::NodeState;
use crate::command::{Commands, Reply};
use crate::error::Result;
use crate::lookup::Lookup;
use crate::record::{NodeRecord, ServedSpan, model_key};

/// What a handle asks of the runtime.
pub(super) enum Command {
    State(Reply<NodeState>),
    GetRecord(PeerId, Reply<Result<Lookup>>),
    Providers(RecordKey, Reply<Result<Vec<PeerId>>>),
    Provide(RecordKey, bool, Reply<Result<()>>),
    Closest(RecordKey, usize, Reply<Vec<PeerId>>),
    AskInfo(PeerId, Reply<Result<NodeRecord>>),
    Publish(Reply<Result<()>>),
    Dial(Multiaddr, Reply<Result<()>>),
    SetSpans(Vec<ServedSpan>, Reply<Result<()>>),
    SetContribution(String, Reply<Result<()>>),
    HostOn(PeerId, Reply<Result<()>>),
}

/// The handle to a running node. Dropping every clone stops the node; [`NodeHandle::shutdown`]
/// stops it and waits.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(super) peer_id: PeerId,
    pub(super) listen_addrs: Arc<Vec<Multiaddr>>,
    pub(super) commands: Commands<Command>,
    pub(super) shutdown: Arc<tokio::sync::Notify>,
    pub(super) done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    pub(super) registry: Arc<Registry>,
    pub(super) streams: Streams,
}

/// The node's `libp2p-stream` control (no `Debug` of its own).
#[derive(Clone)]
pub(super) struct Streams(pub(super) libp2p_stream::Control);

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

impl NodeHandle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Opens and accepts streams of protocols that own them (`/kwaainet/inference/1.0.0`);
    /// opening a stream to a peer dials it when not connected.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.0.clone()
    }

    /// The addresses the listeners reported at start, each ending in `/p2p/<peer id>`
    /// (WebRTC-direct ones with their `/certhash`).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The Prometheus registry (libp2p metrics and ours).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the Prometheus text (OpenMetrics) format.
    pub fn metrics_text(&self) -> String {
        self.metrics_text_with(&[])
    }

    /// The node's metrics followed by those of `more` registries, in one exposition.
    pub fn metrics_text_with(&self, more: &[Arc<Registry>]) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut body = String::new();
        let encoded = std::iter::once(&*self.registry)
            .chain(more.iter().map(|r| &**r))
            .try_for_each(|r| encode_registry(&mut body, r))
            .and_then(|()| encode_eof(&mut body));
        if let Err(e) = encoded {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        body
    }

    /// A snapshot of the node's state.
    pub async fn state(&self) -> Result<NodeState> {
        self.commands.ask(Command::State).await
    }

    /// Looks up `peer`'s node record in the DHT (verified; `None` if nobody has it).
    pub async fn get_node_record(&self, peer: PeerId) -> Result<Option<NodeRecord>> {
        Ok(self.lookup_node_record(peer).await?.record)
    }

    /// [`Self::get_node_record`] with the query's statistics.
    pub async fn lookup_node_record(&self, peer: PeerId) -> Result<Lookup> {
        self.commands.ask(|tx| Command::GetRecord(peer, tx)).await?
    }

    /// The peers registered as serving `model`.
    pub async fn model_providers(&self, model: &str) -> Result<Vec<PeerId>> {
        self.providers(model_key(model)).await
    }

    /// The peers registered (Kademlia provider records) under `key`: a model's servers
    /// ([`crate::record::model_key`]), a blob's holders ([`crate::record::blob_key`]).
    pub async fn providers(&self, key: RecordKey) -> Result<Vec<PeerId>> {
        self.commands.ask(|tx| Command::Providers(key, tx)).await?
    }

    /// Registers this node as a provider of `key` (`on`), or withdraws it. Registrations
    /// are republished by Kademlia while the node runs. Only keys peers accept
    /// (`/kwaainet/model/…`, `/kwaainet/blob/…`) travel beyond this node.
    pub async fn provide(&self, key: RecordKey, on: bool) -> Result<()> {
        self.commands
            .ask(|tx| Command::Provide(key, on, tx))
            .await?
    }

    /// Up to `n` peers of our routing table closest to `key` (XOR distance): where a
    /// key's data belongs, from what this node knows, without a network query.
    pub async fn closest_peers(&self, key: RecordKey, n: usize) -> Result<Vec<PeerId>> {
        self.commands.ask(|tx| Command::Closest(key, n, tx)).await
    }

    /// Asks a connected peer for its record directly (`/kwaainet/info/1.0.0`).
    pub async fn ask_info(&self, peer: PeerId) -> Result<NodeRecord> {
        self.commands.ask(|tx| Command::AskInfo(peer, tx)).await?
    }

    /// Publishes our record now and waits until at least one peer stored it.
    pub async fn publish(&self) -> Result<()> {
        self.commands.ask(Command::Publish).await?
    }

    /// Dials `addr` and waits for that connection: `Ok` once it is established, an error
    /// when it fails or is not established within the config's `dial_timeout_secs`. Other
    /// connections (inbound ones, or another dial to the same peer) do not answer it.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.commands.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Asks `relay`, which holds a reservation for us, to host our record
    /// (`/kwaainet/host/1.0.0`): for a client that cannot be a DHT server, its spans become
    /// findable through the relay. Fails if we have no circuit address through it yet or
    /// the relay refuses (the error says why).
    pub async fn host_on(&self, relay: PeerId) -> Result<()> {
        self.commands.ask(|tx| Command::HostOn(relay, tx)).await?
    }

    /// Replaces the spans the node announces (their state, throughput and free cache
    /// included), registers or withdraws it as a provider of their models, and publishes
    /// its record: `Ok` once a peer stored it. Invalid spans are refused, nothing changed.
    pub async fn set_spans(&self, spans: Vec<ServedSpan>) -> Result<()> {
        self.commands.ask(|tx| Command::SetSpans(spans, tx)).await?
    }

    /// Replaces the signed contribution record the node's record carries (what the
    /// swarm's leaderboards rank; at most [`crate::record::MAX_CONTRIBUTION_BYTES`]) and
    /// publishes the record: `Ok` once a peer stored it.
    pub async fn set_contribution(&self, signed: String) -> Result<()> {
        self.commands
            .ask(|tx| Command::SetContribution(signed, tx))
            .await?
    }

    /// Stops the node: withdraws its spans (a last record without them, when a peer can
    /// store it within a few seconds), closes its connections and listeners, and waits.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let join = self.done.lock().await.take();
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}
