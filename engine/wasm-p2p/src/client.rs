//! A page opens `/kwaainet/inference/1.0.0` streams to span servers, as a client: the SDK's
//! swarm client (the engine's `SwarmSession` in a worker) sends each request frame through
//! one and reads its reply. Frames are read with the reader and limits every node uses
//! (`kwaainet_swarm::protocol`); every read has a deadline, and a broken, timed-out or
//! malformed stream is an error whose `kind` (`closed`, `timeout`, `protocol`) tells the
//! client how to fail over. What a frame means is the client's business: this module only
//! moves bytes, within bounds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use futures_timer::Delay;
use kwaainet_p2p::libp2p::Stream;
use kwaainet_swarm::protocol::{self, FrameError};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

use crate::P2pCode;

/// Longest wait the page may ask for, for one read or write.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// An inference stream's failure as JavaScript sees it: a `KwaaiNetP2pError` with a
/// `kind` for the client's failover.
fn stream_err(code: P2pCode, kind: &str, e: impl std::fmt::Display) -> JsValue {
    let error = crate::bindings::err(code, e);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("kind"), &JsValue::from_str(kind));
    error
}

fn wait(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_millis(ms as u64).min(MAX_WAIT)
    } else {
        MAX_WAIT
    }
}

/// One half of the stream, lent to one operation at a time.
type Half<T> = Rc<RefCell<Option<T>>>;

/// An open inference stream to one server.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmInferenceStream {
    server: String,
    reader: Half<ReadHalf<Stream>>,
    writer: Half<WriteHalf<Stream>>,
}

impl WasmInferenceStream {
    pub(crate) fn new(server: String, stream: Stream) -> Self {
        let (r, w) = stream.split();
        Self {
            server,
            reader: Rc::new(RefCell::new(Some(r))),
            writer: Rc::new(RefCell::new(Some(w))),
        }
    }
}

/// Takes a half out for one operation; an error when another has it or the stream closed.
fn lend<T>(half: &Half<T>, what: &str) -> Result<T, JsValue> {
    half.borrow_mut().take().ok_or_else(|| {
        stream_err(
            P2pCode::InvalidArgument,
            "closed",
            format_args!("the stream is closed, or another {what} is in progress"),
        )
    })
}

#[wasm_bindgen]
impl WasmInferenceStream {
    /// The server's peer id.
    #[wasm_bindgen(getter)]
    pub fn server(&self) -> String {
        self.server.clone()
    }

    /// Writes one request frame (the client encodes it); resolves once it is flushed, within
    /// `timeoutMs` (default and most: 10 minutes). One write at a time.
    pub fn send(
        &self,
        frame: Vec<u8>,
        #[wasm_bindgen(js_name = timeoutMs)] timeout_ms: f64,
    ) -> js_sys::Promise {
        let limit = 5 + protocol::MAX_HEADER + 4 + protocol::MAX_PAYLOAD;
        if frame.len() > limit || frame.len() < 9 {
            return js_sys::Promise::reject(&stream_err(
                P2pCode::InvalidArgument,
                "protocol",
                format_args!("a frame of {} bytes (9 to {limit})", frame.len()),
            ));
        }
        let half = Rc::clone(&self.writer);
        let server = self.server.clone();
        future_to_promise(async move {
            let mut w = lend(&half, "send")?;
            let write = Box::pin(async {
                w.write_all(&frame).await?;
                w.flush().await
            });
            let result = match select(write, Delay::new(wait(timeout_ms))).await {
                Either::Left((r, _)) => r.map_err(|e| {
                    stream_err(
                        P2pCode::Unreachable,
                        "closed",
                        format_args!("server {server}: {e}"),
                    )
                }),
                Either::Right(_) => Err(stream_err(
                    P2pCode::Query,
                    "timeout",
                    format_args!("server {server} did not take the frame in time"),
                )),
            };
            // A failed write leaves the stream unusable: keep it closed.
            if result.is_ok() {
                *half.borrow_mut() = Some(w);
            }
            result.map(|()| JsValue::UNDEFINED)
        })
    }

    /// Reads the next reply frame (whole, as the client decodes it), refusing a payload over
    /// `maxPayload` bytes from its length alone; resolves with `null` when the server ended
    /// the stream, rejects after `timeoutMs` (kind `timeout`), on a broken stream (`closed`)
    /// or on a malformed frame (`protocol`). One read at a time.
    pub fn recv(
        &self,
        #[wasm_bindgen(js_name = maxPayload)] max_payload: f64,
        #[wasm_bindgen(js_name = timeoutMs)] timeout_ms: f64,
    ) -> js_sys::Promise {
        let max = if max_payload.is_finite() && max_payload >= 0.0 {
            (max_payload as usize).min(protocol::MAX_PAYLOAD)
        } else {
            0
        };
        let half = Rc::clone(&self.reader);
        let server = self.server.clone();
        future_to_promise(async move {
            let mut r = lend(&half, "recv")?;
            let read = Box::pin(protocol::read_frame_bytes(&mut r, max));
            let result = match select(read, Delay::new(wait(timeout_ms))).await {
                Either::Left((Ok(frame), _)) => {
                    Ok(js_sys::Uint8Array::from(frame.as_slice()).into())
                }
                Either::Left((Err(FrameError::Io(e)), _))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    Ok(JsValue::NULL)
                }
                Either::Left((Err(FrameError::Io(e)), _)) => Err(stream_err(
                    P2pCode::Unreachable,
                    "closed",
                    format_args!("server {server}: {e}"),
                )),
                Either::Left((Err(e), _)) => Err(stream_err(
                    P2pCode::Query,
                    "protocol",
                    format_args!("server {server}: {e}"),
                )),
                Either::Right(_) => Err(stream_err(
                    P2pCode::Query,
                    "timeout",
                    format_args!("server {server} did not answer in time"),
                )),
            };
            // Only a whole frame leaves the stream in sync for the next read.
            if matches!(&result, Ok(v) if !v.is_null()) {
                *half.borrow_mut() = Some(r);
            }
            result
        })
    }

    /// Closes the stream (the server's session ends with it). Reads and writes after this
    /// fail; closing twice does nothing.
    pub fn close(&self) {
        self.reader.borrow_mut().take();
        if let Some(mut w) = self.writer.borrow_mut().take() {
            spawn_local(async move {
                let _ = w.close().await;
            });
        }
    }
}
