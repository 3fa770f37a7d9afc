//! `/kwaainet/inference/1.0.0`: the messages between a client and one span server, one
//! stream per (session, server span).
//!
//! Every message is one frame:
//!
//! ```text
//! u8 version (1) | u32 header length | header: JSON Message | u32 payload length | payload
//! ```
//!
//! (lengths little-endian). The header is small and self-describing; the payload carries the
//! hidden states, in the session's [`Codec`](kwaainet_core::codec::Codec). A frame whose
//! version, lengths or header are wrong is refused whole: [`decode`] and [`read_frame`]
//! check every length against [`MAX_HEADER`] and the caller's payload limit before
//! allocating anything.
//!
//! A session: the client sends [`Open`] and gets [`Opened`] (or a [`Fail`], e.g. `busy`);
//! then each [`Step`] (with its hidden states) gets one [`Output`] (or a [`Fail`]); [`Message::Close`]
//! ends it, as does the stream closing.
//!
//! Server-to-server push: a step may name where its output goes next ([`PushTo`]: the next
//! server, that session's `key` from its [`Opened`], and the step id there). The server sends
//! its output there as a [`Push`] on a stream of its own (answered [`Message::Pushed`]) before
//! answering the client. The next server's client sends it a step with `pushed: true` and no
//! payload, which waits for that input: so a token crosses the chain once instead of going
//! back to the client at every hop. The key is the only way into a session from another
//! stream; a server that could not push says so in its [`Output`], and the client then sends
//! the input itself. Steps follow Petals' semantics: `step` ids are
//! unique per session and a repeated id is answered from the stored output without running
//! again; `position` says where the step's tokens start, so a client rolls the server's
//! cache back by sending an earlier position; `max_length` bounds the session's cache.

use std::io::Read;

use futures::{AsyncRead, AsyncReadExt};

use serde::{Deserialize, Serialize};

/// The protocol id on libp2p streams.
pub const PROTOCOL: &str = "/kwaainet/inference/1.0.0";
/// The frame format version.
pub const VERSION: u8 = 1;
/// Largest header (JSON) accepted.
pub const MAX_HEADER: usize = 4 * 1024;
/// Largest payload any frame may carry, whatever the session (a 4096-token prefill of a
/// 16384-wide model in f32 is 256 MiB; servers set their own, lower limit).
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Opens a session on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The client's id for the session (for logs and metrics; the stream is the session).
    pub session: String,
    /// The model, as the server announces it (name and content hash).
    pub model: String,
    /// First block the client wants run.
    pub start: u32,
    /// One past the last block.
    pub end: u32,
    /// Most positions this session will hold (the server reserves cache for them).
    pub max_length: u32,
    /// Codec of the hidden states both ways (`f32`, `f16`, `q8_0`, `blockwise8`).
    pub codec: String,
}

/// The server's yes to [`Open`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// The blocks it will run.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// The positions reserved.
    pub max_length: u32,
    /// The session's push key (random, 128 bits in hex): whoever holds it may [`Push`] this
    /// session's input. The client gives it only to the server before this one.
    #[serde(default)]
    pub key: String,
}

/// Where a step's output goes next (server-to-server push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTo {
    /// The next server (a peer id on the network).
    pub server: String,
    /// Its session's key ([`Opened::key`]).
    pub key: String,
    /// The step id the output is there.
    pub step: u64,
}

/// A step's input, pushed into a session by the server before it (or by the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The receiving session's key.
    pub key: String,
    /// The step it is the input of.
    pub step: u64,
    /// Position of its first token.
    pub position: u32,
    /// Rows in the payload.
    pub tokens: u32,
    /// The payload's codec.
    pub codec: String,
}

/// Hidden states to run (`tokens` rows, in the payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Unique per session; a repeated id gets the stored answer.
    pub step: u64,
    /// Position of the first token; earlier than the server's cache length rolls it back.
    pub position: u32,
    /// Rows in the payload.
    pub tokens: u32,
    /// This step's codec (both ways), when not the session's: a client letting the size
    /// decide sends a prefill in one codec and decoding steps in another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// The input comes as a [`Push`] for this step (the payload is empty): wait for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pushed: bool,
    /// Also send the output there, before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTo>,
}

/// The blocks' output for a [`Step`] (same rows, in the payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The step answered.
    pub step: u64,
    /// The server's cache length after it.
    pub length: u32,
    /// Why the output could not be pushed where the step said (the client then sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_error: Option<String>,
    /// The step's energy and carbon on this server (its grid's region, how it was
    /// obtained), when the server accounts them: a client sums its route's hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<kwaainet_footprint::Footprint>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailKind {
    /// The server's cache budget or session slots are full: try another server.
    Busy,
    /// The request is malformed or inconsistent (sizes, positions, order).
    BadRequest,
    /// The server does not serve that model or those blocks.
    NotServed,
    /// The server failed running it.
    Internal,
    /// A `pushed` step's input did not come in time (send the step with its input).
    NoInput,
}

/// A refusal; the session stays usable after `bad-request` on a step, not after others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fail {
    /// What kind of refusal.
    pub kind: FailKind,
    /// For people.
    pub message: String,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    /// Client → server.
    Open(Open),
    /// Server → client.
    Opened(Opened),
    /// Client → server, with hidden states.
    Step(Step),
    /// Server → client, with hidden states.
    Output(Output),
    /// Server → client.
    Fail(Fail),
    /// Client → server: the session is over (its cache is freed).
    Close,
    /// Server → server (or client → server), with hidden states: a session's input.
    Push(Push),
    /// The answer to a [`Push`]: queued for its step.
    Pushed,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub message: Message,
    /// The hidden states, if the message carries any.
    pub payload: Vec<u8>,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Another frame version.
    #[error("frame version {0} (this side speaks {VERSION})")]
    Version(u8),
    /// A length over its limit.
    #[error("{what} of {got} bytes is over the limit of {limit}")]
    TooLarge {
        /// Header or payload.
        what: &'static str,
        /// The length announced.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes end early, or go on after the frame.
    #[error("frame of {got} bytes where {expected} were announced")]
    Length {
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The header is not a message of this protocol.
    #[error("bad header: {0}")]
    Header(String),
    /// Reading the stream failed (or it closed mid-frame).
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` with `payload` as one frame.
pub fn encode(message: &Message, payload: &[u8]) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    let header = serde_json::to_vec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(9 + header.len() + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn parse_header(header: &[u8]) -> Result<Message, FrameError> {
    serde_json::from_slice(header).map_err(|e| FrameError::Header(e.to_string()))
}

fn check(what: &'static str, got: usize, limit: usize) -> Result<usize, FrameError> {
    if got > limit {
        Err(FrameError::TooLarge { what, got, limit })
    } else {
        Ok(got)
    }
}

fn le_u32(b: &[u8]) -> usize {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Decodes exactly one frame from `bytes`, with payloads up to `max_payload`.
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Frame, FrameError> {
    let short = |expected| FrameError::Length {
        expected,
        got: bytes.len(),
    };
    let (&version, rest) = bytes.split_first().ok_or(short(1))?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let header_len = check("header", le_u32(rest.get(..4).ok_or(short(5))?), MAX_HEADER)?;
    let header = rest.get(4..4 + header_len).ok_or(short(5 + header_len))?;
    let at = 4 + header_len;
    let payload_len = check(
        "payload",
        le_u32(rest.get(at..at + 4).ok_or(short(1 + at + 4))?),
        max_payload.min(MAX_PAYLOAD),
    )?;
    let expected = 1 + at + 4 + payload_len;
    if bytes.len() != expected {
        return Err(short(expected));
    }
    Ok(Frame {
        message: parse_header(header)?,
        payload: rest[at + 4..].to_vec(),
    })
}

/// Reads one whole frame's bytes (as [`protocol::decode`] takes them), refusing lengths over
/// [`MAX_HEADER`] and `max_payload` before reading them.
pub async fn read_frame_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    max_payload: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(FrameError::Version(head[0]));
    }
    let header_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if header_len > MAX_HEADER {
        return Err(FrameError::TooLarge {
            what: "header",
            got: header_len,
            limit: MAX_HEADER,
        });
    }
    let mut frame = head.to_vec();
    frame.resize(5 + header_len + 4, 0);
    r.read_exact(&mut frame[5..]).await?;
    let at = 5 + header_len;
    let payload_len =
        u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]) as usize;
    let limit = max_payload.min(MAX_PAYLOAD);
    if payload_len > limit {
        return Err(FrameError::TooLarge {
            what: "payload",
            got: payload_len,
            limit,
        });
    }
    frame.resize(at + 4 + payload_len, 0);
    r.read_exact(&mut frame[at + 4..]).await?;
    Ok(frame)
}

/// Reads one frame from a stream, with payloads up to `max_payload`; nothing is allocated
/// beyond the limits.
pub fn read_frame<R: Read>(r: &mut R, max_payload: usize) -> Result<Frame, FrameError> {
    let mut b1 = [0u8; 1];
    r.read_exact(&mut b1)?;
    if b1[0] != VERSION {
        return Err(FrameError::Version(b1[0]));
    }
    let mut b4 = [0u8; 4];
    r.read_exact(&mut b4)?;
    let header_len = check("header", le_u32(&b4), MAX_HEADER)?;
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)?;
    r.read_exact(&mut b4)?;
    let payload_len = check("payload", le_u32(&b4), max_payload.min(MAX_PAYLOAD))?;
    let mut payload = vec![0u8; payload_len];
    r.read_exact(&mut payload)?;
    Ok(Frame {
        message: parse_header(&header)?,
        payload,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn step() -> Message {
        Message::Step(Step {
            step: 7,
            position: 3,
            tokens: 2,
            codec: None,
            pushed: false,
            push: None,
        })
    }

    #[test]
    fn frames_round_trip_through_bytes_and_streams() {
        for (m, p) in [
            (step(), vec![1u8, 2, 3]),
            (Message::Close, vec![]),
            (
                Message::Fail(Fail {
                    kind: FailKind::Busy,
                    message: "full".into(),
                }),
                vec![],
            ),
        ] {
            let bytes = encode(&m, &p);
            let f = decode(&bytes, 1024).unwrap();
            assert_eq!((f.message, f.payload), (m.clone(), p.clone()));
            let f = read_frame(&mut &bytes[..], 1024).unwrap();
            assert_eq!((f.message, f.payload), (m, p));
        }
        // The header names the message kind.
        let bytes = encode(&Message::Close, &[]);
        assert_eq!(&bytes[5..bytes.len() - 4], br#"{"type":"close"}"#);
    }

    #[test]
    fn hostile_frames_are_refused_before_allocating() {
        let good = encode(&step(), &[0u8; 16]);
        // Version, truncation, trailing bytes.
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(matches!(decode(&v2, 1024), Err(FrameError::Version(2))));
        for cut in [0, 1, 4, 10, good.len() - 1] {
            assert!(decode(&good[..cut], 1024).is_err(), "cut at {cut}");
            assert!(read_frame(&mut &good[..cut], 1024).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long, 1024).is_err());
        // Lengths over the limits: refused from the length alone.
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..], 1024),
            Err(FrameError::TooLarge { what: "header", .. })
        ));
        assert!(matches!(
            decode(&good, 15),
            Err(FrameError::TooLarge {
                what: "payload",
                got: 16,
                limit: 15
            })
        ));
        // Headers that are not messages.
        for header in [
            &b"not json"[..],
            br#"{"type":"launch"}"#,
            br#"{"type":"step"}"#,
        ] {
            let mut f = vec![VERSION];
            f.extend_from_slice(&(header.len() as u32).to_le_bytes());
            f.extend_from_slice(header);
            f.extend_from_slice(&0u32.to_le_bytes());
            assert!(matches!(decode(&f, 1024), Err(FrameError::Header(_))));
        }
    }
}
