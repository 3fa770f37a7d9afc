//! How a client reaches span servers: a [`Connector`] opens a [`Link`] (one stream) to a
//! server by id; a link carries one request frame and its reply at a time.
//!
//! [`LocalServers`] connects to servers in this process (a node's own spans, and tests);
//! the libp2p streams of `/kwaainet/inference/1.0.0` are another implementation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use crate::protocol::{self, Message};
use crate::server::{Connection, SpanServer};

/// Why a link failed: the client treats any of these as the server gone for this session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No such server, or it cannot be reached.
    #[error("server {0} unreachable")]
    Unreachable(String),
    /// The stream closed or broke mid-request.
    #[error("server {0} closed the stream")]
    Closed(String),
    /// No reply within the step timeout.
    #[error("server {0} did not answer in time")]
    Timeout(String),
    /// The reply broke the protocol's framing (a length over its limit, a bad header).
    #[error("server {server}: {reason}")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        reason: String,
    },
}

/// One stream to one server. Requests are answered in order, one reply each; a client may
/// [`send`](Link::send) several before it [`recv`](Link::recv)s their replies (a pushed step
/// is sent ahead and answered when its input arrives).
pub trait Link: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError>;

    /// The reply to the oldest request not yet answered (`Ok(None)`: the server ended the
    /// stream). A reply whose payload would exceed `max_reply_payload` bytes is an error,
    /// refused from its length alone.
    fn recv(&mut self, max_reply_payload: usize) -> Result<Option<Vec<u8>>, LinkError>;

    /// Sends one frame and returns its reply.
    fn exchange(
        &mut self,
        frame: &[u8],
        max_reply_payload: usize,
    ) -> Result<Option<Vec<u8>>, LinkError> {
        self.send(frame)?;
        self.recv(max_reply_payload)
    }

    /// Ends the session: sends `Close` and closes the stream, without waiting for a reply.
    fn close(&mut self);
}

/// Opens links by server id.
pub trait Connector: Send + Sync {
    /// A new stream to `server`.
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError>;
}

/// Servers in this process, by id. A server can be killed: its links then fail, as a peer
/// that died would.
#[derive(Debug, Default, Clone)]
pub struct LocalServers {
    servers: Arc<Mutex<HashMap<String, Local>>>,
}

/// A server of [`LocalServers`] and whether it still lives.
#[derive(Debug)]
struct Local {
    server: Arc<SpanServer>,
    alive: Arc<AtomicBool>,
}

impl LocalServers {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `server` under `id`; it pushes to the others of this set.
    pub fn add(&self, id: &str, server: Arc<SpanServer>) {
        server.set_pusher(Arc::new(LocalPusher(Arc::downgrade(&self.servers))));
        if let Ok(mut m) = self.servers.lock() {
            let alive = Arc::new(AtomicBool::new(true));
            m.insert(id.to_owned(), Local { server, alive });
        }
    }

    /// Kills `id`: its open links fail from now on and no new one opens; its sessions' caches
    /// are freed as their links are dropped.
    pub fn kill(&self, id: &str) {
        if let Ok(mut m) = self.servers.lock()
            && let Some(local) = m.remove(id)
        {
            local.alive.store(false, Ordering::SeqCst);
        }
    }

    /// The server under `id`, if alive.
    pub fn get(&self, id: &str) -> Option<Arc<SpanServer>> {
        self.servers
            .lock()
            .ok()?
            .get(id)
            .map(|l| Arc::clone(&l.server))
    }
}

/// A stream to a server of this process: frames sent wait in `queued` and the server
/// handles each when its reply is asked for (so pushes between servers happen in the order a
/// network would deliver them to a client reading replies in order).
struct LocalLink {
    id: String,
    conn: Option<Connection>,
    alive: Arc<AtomicBool>,
    queued: VecDeque<Vec<u8>>,
}

impl Link for LocalLink {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if !self.alive.load(Ordering::SeqCst) || self.conn.is_none() {
            // The peer is gone: so is its state.
            self.conn = None;
            return Err(LinkError::Closed(self.id.clone()));
        }
        self.queued.push_back(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, _max: usize) -> Result<Option<Vec<u8>>, LinkError> {
        // In-process replies come from our own server code; client.rs decodes them with
        // the same limit.
        if !self.alive.load(Ordering::SeqCst) {
            self.conn = None;
            return Err(LinkError::Closed(self.id.clone()));
        }
        let frame = self
            .queued
            .pop_front()
            .ok_or_else(|| LinkError::Closed(self.id.clone()))?;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| LinkError::Closed(self.id.clone()))?;
        let reply = conn.handle(&frame);
        if reply.is_none() {
            self.conn = None;
        }
        Ok(reply)
    }

    fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.handle(&protocol::encode(&Message::Close, &[]));
        }
    }
}

fn connect_local(
    servers: &Mutex<HashMap<String, Local>>,
    server: &str,
) -> Result<Box<dyn Link>, LinkError> {
    let m = servers
        .lock()
        .map_err(|_| LinkError::Unreachable(server.to_owned()))?;
    let local = m
        .get(server)
        .ok_or_else(|| LinkError::Unreachable(server.to_owned()))?;
    Ok(Box::new(LocalLink {
        id: server.to_owned(),
        conn: Some(local.server.connection()),
        alive: Arc::clone(&local.alive),
        queued: VecDeque::new(),
    }))
}

impl Connector for LocalServers {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        connect_local(&self.servers, server)
    }
}

/// How a server of [`LocalServers`] reaches the others (weakly: the set owns its servers).
struct LocalPusher(Weak<Mutex<HashMap<String, Local>>>);

impl Connector for LocalPusher {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        let servers = self
            .0
            .upgrade()
            .ok_or_else(|| LinkError::Unreachable(server.to_owned()))?;
        connect_local(&servers, server)
    }
}

/// Adds a one-way delay to every frame its links carry, both ways: for benchmarks that ask
/// what a chain costs over a wide-area network when the kernel offers no `netem`.
///
/// Frames are in flight concurrently, as on a network: `send` returns at once and the frame
/// is written `one_way` later by the link's own thread, which also reads each reply as soon
/// as it comes; `recv` hands a reply over `one_way` after it came.
pub struct Delayed {
    inner: Arc<dyn Connector>,
    one_way: Duration,
}

impl std::fmt::Debug for Delayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("one_way", &self.one_way)
            .finish_non_exhaustive()
    }
}

impl Delayed {
    /// Links of `inner`, each frame delayed by `one_way`.
    pub fn new(inner: Arc<dyn Connector>, one_way: Duration) -> Self {
        Self { inner, one_way }
    }
}

impl Connector for Delayed {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        // Opening a stream costs a round trip.
        std::thread::sleep(self.one_way * 2);
        let mut inner = self.inner.connect(server)?;
        let (to_worker, commands) = mpsc::channel::<Option<(Vec<u8>, Instant)>>();
        let (replies, results) = mpsc::channel();
        std::thread::spawn(move || {
            // `None`: close. The channel closing (the link dropped) ends the thread too.
            while let Ok(Some((frame, at))) = commands.recv() {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let reply = inner
                    .send(&frame)
                    .and_then(|()| inner.recv(protocol::MAX_PAYLOAD));
                if replies.send((reply, Instant::now())).is_err() {
                    return;
                }
            }
            inner.close();
        });
        Ok(Box::new(DelayedLink {
            server: server.to_owned(),
            to_worker,
            results,
            one_way: self.one_way,
        }))
    }
}

type Reply = (Result<Option<Vec<u8>>, LinkError>, Instant);

struct DelayedLink {
    server: String,
    to_worker: mpsc::Sender<Option<(Vec<u8>, Instant)>>,
    results: mpsc::Receiver<Reply>,
    one_way: Duration,
}

impl Link for DelayedLink {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.to_worker
            .send(Some((frame.to_vec(), Instant::now() + self.one_way)))
            .map_err(|_| LinkError::Closed(self.server.clone()))
    }

    fn recv(&mut self, _max: usize) -> Result<Option<Vec<u8>>, LinkError> {
        let (reply, came) = self
            .results
            .recv()
            .map_err(|_| LinkError::Closed(self.server.clone()))?;
        std::thread::sleep((came + self.one_way).saturating_duration_since(Instant::now()));
        reply
    }

    fn close(&mut self) {
        let _ = self.to_worker.send(None);
    }
}
