//! `/kwaainet/inference/1.0.0` over libp2p streams (`libp2p-stream`): [`serve`] answers a
//! node's inbound streams with a [`SpanServer`], [`NetConnector`] opens streams to servers by
//! peer id for a [`crate::SwarmSession`].
//!
//! Every read has a size limit (checked from the frame's lengths before allocating) and a
//! timeout: a server closes a stream idle for [`NetConfig::idle`]; a client gives up on a
//! step after [`NetConfig::step`] and fails over. The model runs on tokio's blocking pool,
//! never on the network's threads.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::Control;

use crate::link::{Connector, Link, LinkError};
use crate::protocol::{self, Fail, FailKind, FrameError, Message, PROTOCOL, read_frame_bytes};
use crate::server::SpanServer;

/// Timeouts and caps of the network side.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// A client waits this long for an answer to one request (open or step).
    pub step: Duration,
    /// A server closes a stream that sends nothing for this long (the session is freed).
    pub idle: Duration,
    /// A client waits this long for a stream to open (dial included).
    pub open: Duration,
    /// Inbound streams served at once; more are refused at once.
    pub max_streams: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            open: Duration::from_secs(10),
            max_streams: 64,
        }
    }
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Another part of this node already accepts the protocol.
    #[error("{PROTOCOL} is already served on this node")]
    AlreadyServed,
}

fn protocol_id() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL)
}

/// The span server a node answers new streams with; replaced when the node moves to other
/// blocks (sessions already open stay with the server they opened on until they end).
#[derive(Debug)]
pub struct ServerSlot(std::sync::RwLock<Arc<SpanServer>>);

impl ServerSlot {
    /// A slot holding `server`.
    pub fn new(server: Arc<SpanServer>) -> Self {
        Self(std::sync::RwLock::new(server))
    }

    /// The server new streams get.
    pub fn get(&self) -> Arc<SpanServer> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `server` in place for new streams; the previous one.
    pub fn replace(&self, server: Arc<SpanServer>) -> Arc<SpanServer> {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *slot, server)
    }
}

/// Answers inbound `/kwaainet/inference/1.0.0` streams with the server in `slot` until
/// `control`'s node stops. Runs on a tokio runtime.
pub async fn serve(
    mut control: Control,
    slot: Arc<ServerSlot>,
    config: NetConfig,
) -> Result<(), NetError> {
    let mut incoming = control
        .accept(protocol_id())
        .map_err(|_| NetError::AlreadyServed)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_streams));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "inference stream refused: all {} slots busy", config.max_streams);
            drop(stream);
            continue;
        };
        let server = slot.get();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(&server, stream, config).await {
                tracing::debug!(%peer, error = %e, "inference stream ended");
            }
        });
    }
    Ok(())
}

async fn serve_stream(
    server: &Arc<SpanServer>,
    mut stream: Stream,
    config: NetConfig,
) -> std::io::Result<()> {
    let mut conn = server.connection();
    loop {
        let frame = match tokio::time::timeout(
            config.idle,
            read_frame_bytes(&mut stream, conn.max_payload()),
        )
        .await
        {
            Err(_) => break, // idle: the session goes with the connection
            Ok(Err(FrameError::Io(_))) => break,
            Ok(Err(e)) => {
                // The stream cannot be resynchronised after a bad frame: say why, then close.
                let fail = Message::Fail(Fail {
                    kind: FailKind::BadRequest,
                    message: e.to_string(),
                });
                stream.write_all(&protocol::encode(&fail, &[])).await?;
                break;
            }
            Ok(Ok(frame)) => frame,
        };
        let (back, reply) = tokio::task::spawn_blocking(move || {
            let reply = conn.handle(&frame);
            (conn, reply)
        })
        .await
        .map_err(std::io::Error::other)?;
        conn = back;
        match reply {
            Some(reply) => {
                stream.write_all(&reply).await?;
                stream.flush().await?;
            }
            None => break,
        }
    }
    stream.close().await
}

/// Opens inference streams to servers named by their peer id, through a node's [`Control`].
///
/// Its links block the calling thread on `runtime` for each exchange: use it from a thread
/// that is not one of the runtime's workers (a plain thread, `spawn_blocking`), as the
/// engine's synchronous `Session` needs.
#[derive(Clone)]
pub struct NetConnector {
    control: Control,
    runtime: tokio::runtime::Handle,
    config: NetConfig,
}

impl std::fmt::Debug for NetConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConnector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NetConnector {
    /// A connector over `control`, running its I/O on `runtime`.
    pub fn new(control: Control, runtime: tokio::runtime::Handle, config: NetConfig) -> Self {
        Self {
            control,
            runtime,
            config,
        }
    }
}

impl Connector for NetConnector {
    fn connect(&self, server: &str) -> Result<Box<dyn Link>, LinkError> {
        let peer: PeerId = server
            .parse()
            .map_err(|_| LinkError::Unreachable(server.to_owned()))?;
        let mut control = self.control.clone();
        let opened = self.runtime.block_on(async {
            tokio::time::timeout(self.config.open, control.open_stream(peer, protocol_id())).await
        });
        match opened {
            Ok(Ok(stream)) => Ok(Box::new(NetLink {
                server: server.to_owned(),
                stream: Some(stream),
                runtime: self.runtime.clone(),
                timeout: self.config.step,
            })),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "cannot open an inference stream");
                Err(LinkError::Unreachable(server.to_owned()))
            }
            Err(_) => Err(LinkError::Timeout(server.to_owned())),
        }
    }
}

struct NetLink {
    server: String,
    stream: Option<Stream>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl NetLink {
    /// Runs `io` on the stream within the step timeout; any failure ends the stream (a late
    /// answer would be read as the next one).
    fn io<T>(
        &mut self,
        io: impl AsyncFnOnce(&mut Stream) -> Result<T, FrameError>,
    ) -> Result<T, LinkError> {
        let server = self.server.clone();
        let Some(stream) = self.stream.as_mut() else {
            return Err(LinkError::Closed(server));
        };
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, io(stream)).await });
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.stream = None;
                Err(match e {
                    FrameError::Io(_) => LinkError::Closed(server),
                    other => LinkError::Protocol {
                        server,
                        reason: other.to_string(),
                    },
                })
            }
            Err(_) => {
                self.stream = None;
                Err(LinkError::Timeout(server))
            }
        }
    }
}

impl Link for NetLink {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.io(async |stream: &mut Stream| {
            stream.write_all(frame).await?;
            stream.flush().await?;
            Ok(())
        })
    }

    fn recv(&mut self, max_reply_payload: usize) -> Result<Option<Vec<u8>>, LinkError> {
        self.io(async |stream: &mut Stream| {
            read_frame_bytes(stream, max_reply_payload).await.map(Some)
        })
    }

    fn close(&mut self) {
        // Fire and forget, on the runtime: a link may be dropped on one of its threads (a
        // server's session ending with its task), where blocking is not allowed.
        if let Some(mut stream) = self.stream.take() {
            let close = protocol::encode(&Message::Close, &[]);
            let timeout = self.timeout;
            self.runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, async {
                    stream.write_all(&close).await?;
                    stream.close().await
                })
                .await;
            });
        }
    }
}
