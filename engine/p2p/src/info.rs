//! `/kwaainet/info/1.0.0`: ask a connected peer for its signed node record directly,
//! without a DHT lookup (one round trip).
//!
//! Wire format, both directions: a 4-byte big-endian length, then that many bytes.
//! Request: JSON [`InfoRequest`] (at most [`MAX_REQUEST_BYTES`]). Response: the peer's
//! signed node record as stored in the DHT (at most [`MAX_RECORD_BYTES`]). A frame over the
//! limit is not read: the stream fails and the node disconnects the sender
//! (see `node/runtime.rs`).

use std::io;

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frame::{Framed, invalid};
use crate::record::{MAX_RECORD_BYTES, NodeRecord, decode_node_record};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kwaainet/info/1.0.0");
/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// Version of [`InfoRequest`].
pub const INFO_REQUEST_VERSION: u16 = 1;

/// "Send me your node record."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoRequest {
    /// Message version ([`INFO_REQUEST_VERSION`]).
    pub v: u16,
}

/// What the codec reads from a peer. A request that breaks the protocol (oversized frame,
/// undecodable bytes, unknown version) is delivered as [`Request::Malformed`] rather than
/// as a read error, because libp2p's request-response drops read errors silently and the
/// node wants to act on them (it disconnects the sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A well-formed request.
    Info(InfoRequest),
    /// A protocol violation, with what was wrong. Never written to the wire.
    Malformed(String),
}

/// The signed record bytes (decode with [`crate::record::decode_node_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoResponse(pub Vec<u8>);

impl InfoResponse {
    /// The record `from` answered when asked about `asked`: a valid signed record of that
    /// very peer, or an error (a peer may not answer with someone else's record).
    pub fn verify(&self, asked: PeerId, from: PeerId) -> Result<NodeRecord> {
        let rec = decode_node_record(&self.0)?;
        if rec.peer_id == asked && asked == from {
            Ok(rec)
        } else {
            Err(Error::InvalidRecord("answer describes another peer".into()))
        }
    }
}

/// `/kwaainet/info/1.0.0` on [`crate::frame`]'s frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct InfoWire;

/// The protocol's codec.
pub type Codec = crate::frame::Codec<InfoWire>;

impl Framed for InfoWire {
    type Request = Request;
    type Response = InfoResponse;
    const MAX_REQUEST: usize = MAX_REQUEST_BYTES;
    const MAX_RESPONSE: usize = MAX_RECORD_BYTES;

    fn decode_request(frame: Result<Vec<u8>, String>) -> Request {
        let bytes = match frame {
            Ok(b) => b,
            Err(why) => return Request::Malformed(why),
        };
        match serde_json::from_slice::<InfoRequest>(&bytes) {
            Ok(req) if req.v == 0 => Request::Malformed("version 0".into()),
            Ok(req) => Request::Info(req),
            Err(e) => Request::Malformed(format!("undecodable request: {e}")),
        }
    }

    fn encode_request(req: Request) -> io::Result<Vec<u8>> {
        let Request::Info(req) = req else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a request"));
        };
        serde_json::to_vec(&req).map_err(|e| invalid(e.to_string()))
    }

    fn decode_response(frame: Vec<u8>) -> io::Result<InfoResponse> {
        Ok(InfoResponse(frame))
    }

    fn encode_response(res: InfoResponse) -> io::Result<Vec<u8>> {
        Ok(res.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    fn malformed(r: io::Result<Request>) -> bool {
        matches!(r, Ok(Request::Malformed(_)))
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_flagged_unread() {
        let mut c = Codec::default();
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&PROTOCOL, &mut buf, Request::Info(InfoRequest { v: 1 }))
            .await
            .unwrap();
        buf.set_position(0);
        assert_eq!(
            c.read_request(&PROTOCOL, &mut buf).await.unwrap(),
            Request::Info(InfoRequest { v: 1 })
        );
        // A 4 GiB length prefix: flagged before any allocation or read of the body.
        let mut huge = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(malformed(c.read_request(&PROTOCOL, &mut huge).await));
        let mut huge = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(c.read_response(&PROTOCOL, &mut huge).await.is_err());
        // Garbage inside a well-sized frame; version 0.
        let mut g = Cursor::new([&3u32.to_be_bytes()[..], b"\xff\x00{"].concat());
        assert!(malformed(c.read_request(&PROTOCOL, &mut g).await));
        let mut v0 = Cursor::new([&7u32.to_be_bytes()[..], b"{\"v\":0}"].concat());
        assert!(malformed(c.read_request(&PROTOCOL, &mut v0).await));
        // A truncated frame is an I/O error (the stream ended).
        let mut t = Cursor::new([&10u32.to_be_bytes()[..], b"{}"].concat());
        assert!(c.read_request(&PROTOCOL, &mut t).await.is_err());
        // Malformed is never written.
        let mut out = Cursor::new(Vec::new());
        assert!(
            c.write_request(&PROTOCOL, &mut out, Request::Malformed("x".into()))
                .await
                .is_err()
        );
    }
}
