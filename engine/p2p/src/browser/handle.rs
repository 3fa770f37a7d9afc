//! [`BrowserHandle`], the page's side of a running page-side node: each method is one
//! [`Command`] over the node's bounded queue, answered on its own oneshot.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use super::BrowserState;
use crate::command::{Commands, Reply};
use crate::error::{Error, Result};
use crate::lookup::Lookup;
use crate::msg;
use crate::record::{Accelerator, NodeRecord, ServedSpan};

/// Most addresses one [`BrowserHandle::connect`] tries (a record holds at most a few).
pub const MAX_CONNECT_ADDRS: usize = 16;

/// Someone waiting for the bootstrap connection.
pub(super) type Waiter = Reply<Result<(PeerId, Multiaddr)>>;

/// What a handle asks of the runtime.
pub(super) enum Command {
    Connected(Waiter),
    State(Reply<BrowserState>),
    GetRecord(PeerId, Reply<Result<Lookup>>),
    AskInfo(PeerId, Reply<Result<NodeRecord>>),
    Send(PeerId, Vec<u8>, Reply<Result<Duration>>),
    Host(Vec<ServedSpan>, Accelerator, Reply<Result<()>>),
    SetContribution(String, Reply<Result<()>>),
    Connect(PeerId, Vec<Multiaddr>, Reply<Result<()>>),
}

/// The handle to a running page-side node. Dropping every clone stops the node.
#[derive(Clone)]
pub struct BrowserHandle {
    pub(super) peer_id: PeerId,
    pub(super) commands: Commands<Command>,
    pub(super) streams: libp2p_stream::Control,
}

impl std::fmt::Debug for BrowserHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserHandle")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl BrowserHandle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Opens and accepts streams of protocols that own them (`/kwaainet/inference/1.0.0`).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Asks the bootstrap node (our relay) to host our signed record announcing `spans`
    /// (`/kwaainet/host/1.0.0`), so DHT clients find them through it; `Ok` once it stored
    /// it. Kept and sent again each time the relay reservation comes back (after a
    /// reconnect). An empty list withdraws our spans. Fails while we have no relayed
    /// address, or when the relay refuses (the error says why).
    pub async fn host(&self, spans: Vec<ServedSpan>, accelerator: Accelerator) -> Result<()> {
        if spans.len() > crate::record::MAX_SPANS {
            return Err(Error::Config(format!(
                "{} spans (max {})",
                spans.len(),
                crate::record::MAX_SPANS
            )));
        }
        for s in &spans {
            s.validate()?;
        }
        self.commands
            .ask(|tx| Command::Host(spans, accelerator, tx))
            .await?
    }

    /// Sets the signed contribution record our hosted record carries (what the swarm's
    /// leaderboards rank; at most [`crate::record::MAX_CONTRIBUTION_BYTES`]); while our
    /// relay hosts us, our record goes to it again now.
    pub async fn set_contribution(&self, signed: String) -> Result<()> {
        if signed.len() > crate::record::MAX_CONTRIBUTION_BYTES {
            return Err(Error::Config(format!(
                "a contribution record of {} bytes (max {})",
                signed.len(),
                crate::record::MAX_CONTRIBUTION_BYTES
            )));
        }
        self.commands
            .ask(|tx| Command::SetContribution(signed, tx))
            .await?
    }

    /// Waits until we are connected to the bootstrap node (at once if we are); fails if
    /// the node is offline. Returns its peer id and the address used.
    pub async fn connected(&self) -> Result<(PeerId, Multiaddr)> {
        self.commands.ask(Command::Connected).await?
    }

    /// A snapshot of the node.
    pub async fn state(&self) -> Result<BrowserState> {
        self.commands.ask(Command::State).await
    }

    /// Looks up `peer`'s signed node record in the DHT (verified; `None` if nobody has it).
    pub async fn get_node_record(&self, peer: PeerId) -> Result<Option<NodeRecord>> {
        let lookup = self
            .commands
            .ask(|tx| Command::GetRecord(peer, tx))
            .await??;
        Ok(lookup.record)
    }

    /// Asks a peer for its record directly (`/kwaainet/info/1.0.0`, one round trip).
    pub async fn ask_info(&self, peer: PeerId) -> Result<NodeRecord> {
        self.commands.ask(|tx| Command::AskInfo(peer, tx)).await?
    }

    /// Connects to `peer` (at once if connected): through the bootstrap node's relay circuit
    /// (another page with a reservation there), and at `addrs` (from its signed record: the
    /// WebRTC-direct or WebSocket addresses of a native node; the others fail at once in a
    /// browser). `Ok` once a connection is up; an error when every address failed.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<()> {
        if addrs.len() > MAX_CONNECT_ADDRS {
            return Err(Error::Config(format!(
                "{} addresses (max {MAX_CONNECT_ADDRS})",
                addrs.len()
            )));
        }
        self.commands
            .ask(|tx| Command::Connect(peer, addrs, tx))
            .await?
    }

    /// Opens a stream of `protocol` to `peer`, connecting first ([`connect`](Self::connect)).
    pub async fn open_stream(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream> {
        self.connect(peer, addrs).await?;
        self.streams
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|e| Error::Transport(format!("opening a stream to {peer}: {e}")))
    }

    /// Sends `data` to `peer` (another browser holding a reservation on our bootstrap node,
    /// reached through its relay circuit) and waits for its acknowledgement; returns the
    /// round-trip time.
    pub async fn send(&self, peer: PeerId, data: Vec<u8>) -> Result<Duration> {
        if data.len() > msg::MAX_MESSAGE_BYTES {
            return Err(Error::Config(format!(
                "message of {} bytes exceeds {}",
                data.len(),
                msg::MAX_MESSAGE_BYTES
            )));
        }
        self.commands
            .ask(|tx| Command::Send(peer, data, tx))
            .await?
    }
}
