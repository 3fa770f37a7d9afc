//! A page answers `/kwaainet/inference/1.0.0` streams that reach it through its relay's
//! circuit. Each inbound stream is read frame by frame with the reader and limits a native
//! node uses (`kwaainet_swarm::protocol`), each frame goes to a JavaScript handler (the SDK
//! gives it to the span server in its serving worker), and the handler's reply is written
//! back. What a frame means is the span server's business; this module only moves bytes,
//! within bounds:
//!
//! - at most [`ServeConfig::max_streams`] streams at once (more are dropped at once, so the
//!   client tries another server);
//! - a stream idle for [`ServeConfig::idle`] is closed (its session goes with it);
//! - a frame over the limits, or not a frame, gets a `bad-request` Fail frame, then the
//!   stream is closed (it cannot be resynchronised);
//! - a handler that throws, returns something else than bytes, or does not answer within
//!   [`ServeConfig::reply`] gets the client an `internal` Fail frame and a closed stream,
//!   never a hang;
//! - [`Serving::stop`] (or dropping it) ends the accept loop and every stream at once: new
//!   streams are then refused by the protocol negotiation, and clients fail over.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, Either, select};
use futures::{AsyncWriteExt, StreamExt};
use futures_timer::Delay;
use kwaainet_p2p::libp2p::{PeerId, Stream, StreamProtocol};
use kwaainet_swarm::protocol::{self, Fail, FailKind, FrameError, Message};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};

/// The bounds of a page's inference serving.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Streams served at once.
    pub max_streams: usize,
    /// A stream with no frame for this long is closed.
    pub idle: Duration,
    /// The handler must answer a frame within this long.
    pub reply: Duration,
    /// Largest payload of an inbound frame (hidden states of one step).
    pub max_payload: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_streams: 64,
            idle: Duration::from_secs(120),
            reply: Duration::from_secs(120),
            max_payload: 16 << 20,
        }
    }
}

#[derive(Default)]
struct Tasks {
    accept: Option<AbortHandle>,
    streams: HashMap<u32, AbortHandle>,
    next: u32,
    served: u64,
}

/// Inbound inference streams being answered; [`Serving::stop`] or dropping it ends them.
pub struct Serving {
    tasks: Rc<RefCell<Tasks>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.tasks.borrow();
        f.debug_struct("Serving")
            .field("streams", &t.streams.len())
            .field("served", &t.served)
            .finish()
    }
}

impl Serving {
    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.tasks.borrow().streams.len()
    }

    /// Streams accepted since serving started.
    pub fn accepted(&self) -> u64 {
        self.tasks.borrow().served
    }

    /// Stops accepting and ends every open stream.
    pub fn stop(&self) {
        let mut t = self.tasks.borrow_mut();
        if let Some(a) = t.accept.take() {
            a.abort();
        }
        for (_, h) in t.streams.drain() {
            h.abort();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts answering inference streams: `handler(streamId, frame, peer)` gets each frame
/// (`frame` a `Uint8Array`) and returns the reply (`Uint8Array`, or a Promise of one), or
/// `null`/`undefined` to end the stream; `handler(streamId, null, peer)` is called once when
/// a stream ends. Fails when inference streams are already accepted on this node.
pub fn start(
    control: &mut libp2p_stream::Control,
    handler: js_sys::Function,
    config: ServeConfig,
) -> Result<Serving, String> {
    let mut incoming = control
        .accept(StreamProtocol::new(protocol::PROTOCOL))
        .map_err(|_| "inference streams are already being served on this node".to_owned())?;
    let tasks = Rc::new(RefCell::new(Tasks::default()));
    let (accept, registration) = AbortHandle::new_pair();
    tasks.borrow_mut().accept = Some(accept);
    let handler = Rc::new(handler);
    let shared = Rc::clone(&tasks);
    spawn_local(async move {
        let accept_loop = async move {
            while let Some((peer, stream)) = incoming.next().await {
                let (id, registration) = {
                    let mut t = shared.borrow_mut();
                    if t.streams.len() >= config.max_streams {
                        // Dropping it resets the stream: the client tries another server.
                        continue;
                    }
                    let id = t.next;
                    t.next = t.next.wrapping_add(1);
                    let (h, r) = AbortHandle::new_pair();
                    t.streams.insert(id, h);
                    t.served += 1;
                    (id, r)
                };
                let handler = Rc::clone(&handler);
                let tasks = Rc::clone(&shared);
                spawn_local(async move {
                    let _ = Abortable::new(
                        serve_stream(id, peer, stream, &handler, config),
                        registration,
                    )
                    .await;
                    tasks.borrow_mut().streams.remove(&id);
                });
            }
        };
        let _ = Abortable::new(accept_loop, registration).await;
    });
    Ok(Serving { tasks })
}

/// What became of a wait for a frame.
enum Read {
    Frame(Vec<u8>),
    Bad(FrameError),
    Gone,
}

async fn serve_stream(
    id: u32,
    peer: PeerId,
    mut stream: Stream,
    handler: &js_sys::Function,
    config: ServeConfig,
) {
    let peer = JsValue::from_str(&peer.to_string());
    loop {
        let read = {
            let frame = Box::pin(protocol::read_frame_bytes(&mut stream, config.max_payload));
            match select(frame, Delay::new(config.idle)).await {
                Either::Left((Ok(f), _)) => Read::Frame(f),
                Either::Left((Err(FrameError::Io(_)), _)) => Read::Gone,
                Either::Left((Err(e), _)) => Read::Bad(e),
                Either::Right(_) => Read::Gone, // idle: the session goes with the stream
            }
        };
        let frame = match read {
            Read::Frame(f) => f,
            Read::Gone => break,
            Read::Bad(e) => {
                fail(&mut stream, FailKind::BadRequest, e.to_string()).await;
                break;
            }
        };
        match call(handler, id, &frame, &peer, &config).await {
            Ok(Some(reply)) => {
                if stream.write_all(&reply).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(message) => {
                fail(&mut stream, FailKind::Internal, message).await;
                break;
            }
        }
    }
    // The span server drops the stream's session (and the cache it held).
    let _ = handler.call3(&JsValue::NULL, &JsValue::from(id), &JsValue::NULL, &peer);
    let _ = stream.close().await;
}

/// Says why, then the caller closes the stream.
async fn fail(stream: &mut Stream, kind: FailKind, message: String) {
    let frame = protocol::encode(&Message::Fail(Fail { kind, message }), &[]);
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
}

fn describe(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "the span server failed".to_owned())
}

/// Hands one frame to the handler; its reply (`None`: end the stream) or why it failed.
async fn call(
    handler: &js_sys::Function,
    id: u32,
    frame: &[u8],
    peer: &JsValue,
    config: &ServeConfig,
) -> Result<Option<Vec<u8>>, String> {
    let arg = js_sys::Uint8Array::from(frame);
    let returned = handler
        .call3(&JsValue::NULL, &JsValue::from(id), &arg, peer)
        .map_err(|e| describe(&e))?;
    let answer = JsFuture::from(js_sys::Promise::resolve(&returned));
    let value = match select(answer, Delay::new(config.reply)).await {
        Either::Left((r, _)) => r.map_err(|e| describe(&e))?,
        Either::Right(_) => {
            return Err(format!(
                "the span server did not answer within {} s",
                config.reply.as_secs()
            ));
        }
    };
    if value.is_null() || value.is_undefined() {
        return Ok(None);
    }
    let bytes: js_sys::Uint8Array = value
        .dyn_into()
        .map_err(|_| "the span server answered something other than bytes".to_owned())?;
    let limit = protocol::MAX_HEADER + config.max_payload + 9;
    if bytes.length() as usize > limit {
        return Err(format!(
            "the span server's reply of {} bytes exceeds {limit}",
            bytes.length()
        ));
    }
    Ok(Some(bytes.to_vec()))
}
