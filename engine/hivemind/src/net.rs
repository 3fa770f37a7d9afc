//! `/kwaainet/averaging/1.0.0` over libp2p streams (`libp2p-stream`): one stream per frame,
//! members authenticated by the peer ids of their (noise) connections.
//!
//! An [`Averager`] answers a node's inbound averaging streams: it reads one frame per
//! stream (size-checked before the payload is read, within a read timeout, a bounded
//! number of streams at once), hands it to the round open for the frame's group key,
//! naming the sender by its index among the round's members, and answers one byte: 1 when
//! the frame was taken, 0 when it was not. A sender counts a frame as sent only on that
//! byte, and opens a new stream when a stream fails before it (libp2p-stream drops inbound
//! streams that arrive while the previous one is being handed over), a few times within
//! the round's timeout. A frame from a peer that is not a member, or for a key no round
//! here expects, never reaches a round. Frames that arrive just before this member opens its
//! round (a faster peer) wait a bounded time, in a bounded buffer.
//!
//! A joining peer takes the current state from a member ([`Averager::download_state`]): it
//! asks under a key with a [`Kind::StateAsk`] frame, and a node that serves that key
//! ([`Averager::serve_state`]) answers with the whole vector in a [`Kind::State`] frame.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::Control;
use tokio::sync::{Semaphore, mpsc};

use crate::allreduce::Transport;
use crate::frame::{self, Header, Kind};
use kwaainet_core::codec::Codec;

/// The protocol's name.
pub const PROTOCOL: &str = "/kwaainet/averaging/1.0.0";

/// Limits and timeouts of a node's averaging.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// How long opening a stream to a member may take (dial included).
    pub open: Duration,
    /// How long a peer may take to send one frame.
    pub read: Duration,
    /// The largest payload read.
    pub max_payload: usize,
    /// Inbound streams read at once; more are dropped.
    pub max_streams: usize,
    /// Bytes of early frames kept for rounds not open yet.
    pub max_pending_bytes: usize,
    /// How long an early frame is kept.
    pub pending_for: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            open: Duration::from_secs(10),
            read: Duration::from_secs(30),
            max_payload: 64 << 20,
            max_streams: 64,
            max_pending_bytes: 256 << 20,
            pending_for: Duration::from_secs(60),
        }
    }
}

/// Why a round cannot open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A round with this key is open already.
    #[error("a round with this group key is already open on this node")]
    Duplicate,
    /// This node is not the member it claims to be.
    #[error("member {me} of {size} is not this node")]
    NotMe {
        /// The index given.
        me: usize,
        /// Members.
        size: usize,
    },
    /// The protocol is answered by another handler already.
    #[error("{PROTOCOL} already has a handler on this node")]
    Taken,
    /// A task holding the node's rounds panicked.
    #[error("the node's averaging rounds are unavailable (a task panicked)")]
    Poisoned,
}

type Frame = (usize, Vec<u8>);

struct Open {
    members: Vec<PeerId>,
    tx: mpsc::Sender<Frame>,
}

#[derive(Default)]
struct Rounds {
    open: HashMap<[u8; 16], Open>,
    pending: VecDeque<(Instant, [u8; 16], PeerId, Vec<u8>)>,
    pending_bytes: usize,
}

impl Rounds {
    fn expire(&mut self, keep: Duration) {
        while let Some((at, ..)) = self.pending.front() {
            if at.elapsed() < keep {
                break;
            }
            if let Some((_, _, _, f)) = self.pending.pop_front() {
                self.pending_bytes -= f.len();
            }
        }
    }

    /// Hands a frame to its round, or keeps it for a round not open yet; whether it was taken.
    fn deliver(&mut self, config: &NetConfig, key: [u8; 16], peer: PeerId, bytes: Vec<u8>) -> bool {
        self.expire(config.pending_for);
        match self.open.get(&key) {
            Some(open) => match open.members.iter().position(|m| *m == peer) {
                Some(i) => {
                    let taken = open.tx.try_send((i, bytes)).is_ok();
                    if !taken {
                        tracing::debug!(%peer, "averaging frame dropped: the round's inbox is full");
                    }
                    taken
                }
                None => {
                    tracing::debug!(%peer, "averaging frame from a peer outside the group dropped");
                    false
                }
            },
            None if self.pending_bytes + bytes.len() <= config.max_pending_bytes => {
                self.pending_bytes += bytes.len();
                self.pending.push_back((Instant::now(), key, peer, bytes));
                true
            }
            None => {
                tracing::debug!(%peer, "averaging frame for no open round dropped (buffer full)");
                false
            }
        }
    }
}

/// What a node answers a peer that asks for the state under a key: its progress (samples
/// trained) and the vector, or `None` when it has none to give.
pub type StateSource = Arc<dyn Fn() -> Option<(f32, Vec<f32>)> + Send + Sync>;

/// Why a state could not be downloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The peer could not be reached, or the stream failed.
    #[error("state from {peer}: {why}")]
    Unreachable {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        why: String,
    },
    /// The peer serves no state under this key.
    #[error("{0} has no state under this key")]
    NoState(PeerId),
    /// The answer is not a state.
    #[error("state from {peer} refused: {why}")]
    Refused {
        /// The peer asked.
        peer: PeerId,
        /// What is wrong with it.
        why: String,
    },
}

/// A node's averaging: answers the protocol, opens rounds, serves and downloads states.
#[derive(Clone)]
pub struct Averager {
    control: Control,
    config: NetConfig,
    me: PeerId,
    rounds: Arc<Mutex<Rounds>>,
    states: Arc<Mutex<HashMap<[u8; 16], StateSource>>>,
}

impl std::fmt::Debug for Averager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Averager")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL)
}

impl Averager {
    /// Starts answering `/kwaainet/averaging/1.0.0` on the node of `control` (whose own
    /// peer id is `me`), on the current tokio runtime.
    pub fn start(mut control: Control, me: PeerId, config: NetConfig) -> Result<Self, NetError> {
        let mut incoming = control.accept(protocol()).map_err(|_| NetError::Taken)?;
        let averager = Self {
            control,
            config,
            me,
            rounds: Arc::default(),
            states: Arc::default(),
        };
        let a = averager.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(a.config.max_streams));
            while let Some((peer, mut stream)) = incoming.next().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "averaging stream refused: all {} slots busy", a.config.max_streams);
                    continue;
                };
                let a = a.clone();
                tokio::spawn(async move {
                    // A frame that could not be taken is refused from its header, before its
                    // payload is read: from a peer outside an open round, or for no open
                    // round when the early buffer is full.
                    let admit = |h: &Header, len: usize| a.admit(h, peer, len);
                    let read = frame::read_admitted(&mut stream, a.config.max_payload, admit);
                    let taken = match tokio::time::timeout(a.config.read, read).await {
                        Ok(Ok(bytes)) => match frame::header(&bytes) {
                            Ok((h, _)) if h.kind == Kind::StateAsk => {
                                let answer = a.state_frame(h.group);
                                let _ = stream.write_all(&answer).await;
                                let _ = stream.close().await;
                                drop(slot);
                                return;
                            }
                            Ok((h, _)) => a
                                .rounds
                                .lock()
                                .is_ok_and(|mut r| r.deliver(&a.config, h.group, peer, bytes)),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "averaging frame refused");
                                false
                            }
                        },
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "averaging frame refused");
                            false
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "averaging stream sent no frame in time");
                            false
                        }
                    };
                    let _ = stream.write_all(&[taken as u8]).await;
                    let _ = stream.close().await;
                    drop(slot);
                });
            }
        });
        Ok(averager)
    }

    /// Whether a frame with header `h` and a payload of `len` bytes from `peer` could be
    /// taken (checked again when it is delivered).
    fn admit(&self, h: &Header, peer: PeerId, len: usize) -> Result<(), String> {
        if h.kind == Kind::StateAsk {
            return Ok(());
        }
        let rounds = self
            .rounds
            .lock()
            .map_err(|_| "the node's rounds are unavailable".to_string())?;
        match rounds.open.get(&h.group) {
            Some(open) if open.members.contains(&peer) => Ok(()),
            Some(_) => Err(format!("{peer} is not a member of this round")),
            None if rounds.pending_bytes + frame::HEADER_LEN + len
                <= self.config.max_pending_bytes =>
            {
                Ok(())
            }
            None => Err("no round open for this key and no room to keep the frame".into()),
        }
    }

    /// Answers peers that ask for the state under `key` with what `source` gives (replacing
    /// an earlier source for the key).
    pub fn serve_state(&self, key: [u8; 16], source: StateSource) {
        if let Ok(mut s) = self.states.lock() {
            s.insert(key, source);
        }
    }

    /// Stops serving the state under `key`.
    pub fn stop_serving_state(&self, key: [u8; 16]) {
        if let Ok(mut s) = self.states.lock() {
            s.remove(&key);
        }
    }

    /// The frame that answers a state request for `key`.
    fn state_frame(&self, key: [u8; 16]) -> Vec<u8> {
        let source = self.states.lock().ok().and_then(|s| s.get(&key).cloned());
        let (progress, values) = source.and_then(|f| f()).unwrap_or((0.0, Vec::new()));
        let header = Header {
            kind: Kind::State,
            group: key,
            from: 0,
            part: 0,
            codec: Codec::F32,
            weight: progress,
            values: values.len() as u32,
        };
        frame::encode(&header, &Codec::F32.encode(&values))
    }

    /// Downloads the state `peer` serves under `key` (a joining peer takes the current model
    /// this way): its progress and the vector, at most [`NetConfig::max_payload`] bytes.
    pub async fn download_state(
        &self,
        peer: PeerId,
        key: [u8; 16],
    ) -> Result<(f32, Vec<f32>), StateError> {
        let unreachable = |why: String| StateError::Unreachable { peer, why };
        let refused = |why: String| StateError::Refused { peer, why };
        let mut control = self.control.clone();
        let mut stream =
            tokio::time::timeout(self.config.open, control.open_stream(peer, protocol()))
                .await
                .map_err(|_| unreachable(format!("no stream within {:?}", self.config.open)))?
                .map_err(|e| unreachable(e.to_string()))?;
        let ask = Header {
            kind: Kind::StateAsk,
            group: key,
            from: 0,
            part: 0,
            codec: Codec::F32,
            weight: 0.0,
            values: 0,
        };
        stream
            .write_all(&frame::encode(&ask, &[]))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        stream
            .flush()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let bytes = tokio::time::timeout(
            self.config.read,
            frame::read(&mut stream, self.config.max_payload),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", self.config.read)))?
        .map_err(|e| match e {
            frame::FrameError::Io(why) => unreachable(why),
            other => refused(other.to_string()),
        })?;
        let _ = stream.close().await;
        let (h, payload) =
            frame::decode(&bytes, self.config.max_payload).map_err(|e| refused(e.to_string()))?;
        if h.kind != Kind::State || h.group != key || h.codec != Codec::F32 {
            return Err(refused("not the state asked for".into()));
        }
        if h.values == 0 {
            return Err(StateError::NoState(peer));
        }
        if !(h.weight.is_finite() && h.weight >= 0.0) {
            return Err(refused(format!("progress {}", h.weight)));
        }
        let values = Codec::F32
            .decode(payload, h.values as usize)
            .map_err(|e| refused(e.to_string()))?;
        Ok((h.weight, values))
    }

    /// Opens the round of group `key` among `members` (every member lists the same peers in
    /// the same order), this node being `members[me]`.
    pub fn round(
        &self,
        key: [u8; 16],
        members: Vec<PeerId>,
        me: usize,
    ) -> Result<NetTransport, NetError> {
        if members.get(me) != Some(&self.me) {
            return Err(NetError::NotMe {
                me,
                size: members.len(),
            });
        }
        // Two frames from each other member, and room for hostile extras that are refused.
        let (tx, rx) = mpsc::channel(4 * members.len() + 4);
        let mut rounds = self.rounds.lock().map_err(|_| NetError::Poisoned)?;
        if rounds.open.contains_key(&key) {
            return Err(NetError::Duplicate);
        }
        rounds.expire(self.config.pending_for);
        let open = Open {
            members: members.clone(),
            tx,
        };
        let early: Vec<_> = {
            let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut rounds.pending)
                .into_iter()
                .partition(|(_, k, ..)| *k == key);
            rounds.pending = rest;
            mine.into_iter().collect()
        };
        rounds.open.insert(key, open);
        for (_, k, peer, bytes) in early {
            rounds.pending_bytes -= bytes.len();
            rounds.deliver(&self.config, k, peer, bytes);
        }
        Ok(NetTransport {
            key,
            members,
            control: self.control.clone(),
            open: self.config.open,
            rx,
            rounds: self.rounds.clone(),
        })
    }
}

/// One round's transport over libp2p streams; closing it (drop) closes the round.
pub struct NetTransport {
    key: [u8; 16],
    members: Vec<PeerId>,
    control: Control,
    open: Duration,
    rx: mpsc::Receiver<Frame>,
    rounds: Arc<Mutex<Rounds>>,
}

impl std::fmt::Debug for NetTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetTransport")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Drop for NetTransport {
    fn drop(&mut self) {
        if let Ok(mut r) = self.rounds.lock() {
            r.open.remove(&self.key);
        }
    }
}

/// Streams a frame is tried on before the member counts as unreachable.
const SEND_ATTEMPTS: u32 = 5;

impl NetTransport {
    /// One stream: the frame out, the receiver's byte back (whether it took the frame).
    async fn send_once(&self, peer: PeerId, frame: &[u8]) -> Result<bool, String> {
        let mut control = self.control.clone();
        let mut stream = tokio::time::timeout(self.open, control.open_stream(peer, protocol()))
            .await
            .map_err(|_| format!("no stream to {peer} within {:?}", self.open))?
            .map_err(|e| format!("no stream to {peer}: {e}"))?;
        let io = |e: std::io::Error| format!("sending to {peer}: {e}");
        stream.write_all(frame).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.map_err(io)?;
        let _ = stream.close().await;
        Ok(answer[0] == 1)
    }
}

impl Transport for NetTransport {
    async fn send(&self, to: usize, frame: Vec<u8>) -> Result<(), String> {
        let peer = *self
            .members
            .get(to)
            .ok_or_else(|| format!("no member {to}"))?;
        let mut last = String::new();
        for attempt in 0..SEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
            match self.send_once(peer, &frame).await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(format!("{peer} did not take the frame")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn recv(&mut self) -> Option<(usize, Vec<u8>)> {
        self.rx.recv().await
    }
}
