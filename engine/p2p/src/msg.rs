//! `/kwaainet/msg/1.0.0`: a small application message from one peer to another (browser
//! pages talk to each other with it through a relay circuit), acknowledged in the same
//! round trip.
//!
//! Wire format: the length-prefixed frames of [`crate::frame`]. Request: one version byte
//! ([`MSG_VERSION`]) then the payload, at most [`MAX_MESSAGE_BYTES`]. Response: the version
//! byte then a status byte (0 = accepted, 1 = refused: the receiver's inbox is full). Both
//! sides give up after [`TIMEOUT`]. An oversized or unversioned request is delivered as
//! [`Request::Malformed`] so the receiver can drop the sender.

use std::io;
use std::time::Duration;

use libp2p::StreamProtocol;

use crate::frame::{Framed, invalid};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kwaainet/msg/1.0.0");
/// Largest payload of one message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Version byte of requests and responses.
pub const MSG_VERSION: u8 = 1;
/// How long one message (request and acknowledgement) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the codec reads from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A message's payload.
    Message(Vec<u8>),
    /// A protocol violation, with what was wrong. Never written to the wire.
    Malformed(String),
}

/// The receiver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Delivered to the application.
    Accepted,
    /// Not delivered (the receiver is overloaded).
    Refused,
}

/// `/kwaainet/msg/1.0.0` on [`crate::frame`]'s frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgWire;

/// The protocol's codec.
pub type Codec = crate::frame::Codec<MsgWire>;

impl Framed for MsgWire {
    type Request = Request;
    type Response = Response;
    const MAX_REQUEST: usize = MAX_MESSAGE_BYTES + 1;
    const MAX_RESPONSE: usize = 2;

    fn decode_request(frame: Result<Vec<u8>, String>) -> Request {
        let bytes = match frame {
            Ok(b) => b,
            Err(why) => return Request::Malformed(why),
        };
        match bytes.split_first() {
            Some((&MSG_VERSION, payload)) => Request::Message(payload.to_vec()),
            Some((v, _)) => Request::Malformed(format!("message version {v}")),
            None => Request::Malformed("empty frame".into()),
        }
    }

    fn encode_request(req: Request) -> io::Result<Vec<u8>> {
        let Request::Message(payload) = req else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a message"));
        };
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                    payload.len()
                ),
            ));
        }
        let mut frame = Vec::with_capacity(payload.len() + 1);
        frame.push(MSG_VERSION);
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    fn decode_response(frame: Vec<u8>) -> io::Result<Response> {
        match frame.as_slice() {
            [MSG_VERSION, 0] => Ok(Response::Accepted),
            [MSG_VERSION, 1] => Ok(Response::Refused),
            _ => Err(invalid("malformed acknowledgement")),
        }
    }

    fn encode_response(res: Response) -> io::Result<Vec<u8>> {
        let status = match res {
            Response::Accepted => 0,
            Response::Refused => 1,
        };
        Ok(vec![MSG_VERSION, status])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    #[tokio::test]
    async fn messages_round_trip_within_limits() {
        let mut c = Codec::default();
        for payload in [Vec::new(), b"hello".to_vec(), vec![7u8; MAX_MESSAGE_BYTES]] {
            let mut buf = Cursor::new(Vec::new());
            c.write_request(&PROTOCOL, &mut buf, Request::Message(payload.clone()))
                .await
                .unwrap();
            buf.set_position(0);
            assert_eq!(
                c.read_request(&PROTOCOL, &mut buf).await.unwrap(),
                Request::Message(payload)
            );
        }
        for res in [Response::Accepted, Response::Refused] {
            let mut buf = Cursor::new(Vec::new());
            c.write_response(&PROTOCOL, &mut buf, res).await.unwrap();
            buf.set_position(0);
            assert_eq!(c.read_response(&PROTOCOL, &mut buf).await.unwrap(), res);
        }
    }

    #[tokio::test]
    async fn bad_messages_are_refused_before_reading_them() {
        let mut c = Codec::default();
        let mut out = Cursor::new(Vec::new());
        let big = Request::Message(vec![0; MAX_MESSAGE_BYTES + 1]);
        assert!(c.write_request(&PROTOCOL, &mut out, big).await.is_err());
        let malformed = |r: io::Result<Request>| matches!(r, Ok(Request::Malformed(_)));
        // A 4 GiB length prefix, an unknown version, an empty frame.
        let mut huge = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(malformed(c.read_request(&PROTOCOL, &mut huge).await));
        let mut v2 = Cursor::new([&2u32.to_be_bytes()[..], &[2, b'x']].concat());
        assert!(malformed(c.read_request(&PROTOCOL, &mut v2).await));
        let mut empty = Cursor::new(0u32.to_be_bytes().to_vec());
        assert!(malformed(c.read_request(&PROTOCOL, &mut empty).await));
        // Acknowledgements are exactly two bytes.
        let mut ack = Cursor::new([&3u32.to_be_bytes()[..], &[1, 0, 0]].concat());
        assert!(c.read_response(&PROTOCOL, &mut ack).await.is_err());
    }
}
