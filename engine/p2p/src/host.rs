//! `/kwaainet/host/1.0.0`: a peer that cannot be a DHT server (a browser page, reached only
//! through a relay circuit) asks the relay node it holds a reservation on to store its
//! signed node record and make its spans findable.
//!
//! The record stays the page's own: signed by the page's key inside the same envelope as
//! every node record, so the relay can store it and vouch for where it is ("hosted" in the
//! relay's record, a provider registration per model) but never change it. A record with no
//! spans withdraws them; closing the connection to the relay ends the hosting.
//!
//! Wire format: the length-prefixed frames of [`crate::frame`]. Request: the signed record
//! (at most [`MAX_RECORD_BYTES`]). Response: JSON [`HostResponse`] (at most
//! [`MAX_RESPONSE_BYTES`]). An oversized request is delivered as [`Request::Malformed`] so
//! the relay can drop the sender.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::command::Reply;
use crate::error::{Error, Result};
use crate::frame::{Framed, invalid};
use crate::record::{MAX_RECORD_BYTES, NodeRecord, Role, decode_node_record};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kwaainet/host/1.0.0");
/// Largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 1024;
/// Version of [`HostResponse`].
pub const HOST_RESPONSE_VERSION: u16 = 1;
/// How long one request (and its answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Fewest seconds between two accepted records of one peer (a record with fewer spans, a
/// withdrawal, is always accepted).
pub const MIN_INTERVAL_SECS: u64 = 1;

/// What the codec reads from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The sender's signed node record (not yet verified).
    Record(Vec<u8>),
    /// A protocol violation, with what was wrong. Never written to the wire.
    Malformed(String),
}

/// The relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResponse {
    /// Message version ([`HOST_RESPONSE_VERSION`]).
    pub v: u16,
    /// Whether the record is stored and its spans findable.
    pub accepted: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HostResponse {
    /// An acceptance.
    pub fn accepted() -> Self {
        Self {
            v: HOST_RESPONSE_VERSION,
            accepted: true,
            reason: None,
        }
    }

    /// A refusal, saying why (cut to fit the response limit).
    pub fn refused(reason: impl std::fmt::Display) -> Self {
        Self {
            v: HOST_RESPONSE_VERSION,
            accepted: false,
            reason: Some(reason.to_string().chars().take(512).collect()),
        }
    }
}

/// Verifies a record `from` asked `relay` to host: validly signed by `from` itself, a
/// client's (DHT servers publish their own), reachable only through `relay`'s circuits.
pub fn verify(bytes: &[u8], from: PeerId, relay: PeerId) -> Result<NodeRecord> {
    let rec = decode_node_record(bytes)?;
    if rec.peer_id != from {
        return Err(Error::InvalidRecord(
            "the record describes another peer".into(),
        ));
    }
    check_hostable(&rec, relay)?;
    Ok(rec)
}

/// Whether `rec` (already verified as signed by its peer) is one `relay` may host: a
/// client's, hosting nobody, reachable only through `relay`'s circuits. Readers that find a
/// hosted record through its relay check the same.
pub fn check_hostable(rec: &NodeRecord, relay: PeerId) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRecord(m));
    if rec.roles != [Role::Client] {
        return bad(format!(
            "only a client's record is hosted (roles {:?})",
            rec.roles
        ));
    }
    if !rec.hosted.is_empty() {
        return bad("a hosted record cannot host others".into());
    }
    if rec.addrs.is_empty() {
        return bad("the record has no address".into());
    }
    for a in &rec.addrs {
        if !through(&a.addr, relay, rec.peer_id) {
            return bad(format!(
                "address {} is not a circuit through this relay",
                a.addr
            ));
        }
    }
    Ok(())
}

/// Whether `addr` is `<relay's address>/p2p/<relay>/p2p-circuit/p2p/<peer>`.
fn through(addr: &libp2p::Multiaddr, relay: PeerId, peer: PeerId) -> bool {
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    matches!(
        parts.as_slice(),
        [.., Protocol::P2p(r), Protocol::P2pCircuit, Protocol::P2p(p)] if *r == relay && *p == peer
    )
}

/// Our `/kwaainet/host/1.0.0` requests in flight, and who waits for each answer.
#[derive(Default)]
pub(crate) struct HostAsks(HashMap<OutboundRequestId, Reply<Result<()>>>);

impl HostAsks {
    /// Asks `relay` to host our signed record `bytes`.
    pub(crate) fn start(
        &mut self,
        host: &mut request_response::Behaviour<Codec>,
        relay: PeerId,
        bytes: Vec<u8>,
        reply: Reply<Result<()>>,
    ) {
        let id = host.send_request(&relay, Request::Record(bytes));
        self.0.insert(id, reply);
    }

    /// Requests in flight.
    #[cfg(wasm_browser)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The relay answered request `id`.
    pub(crate) fn on_response(&mut self, id: OutboundRequestId, response: HostResponse) {
        if let Some(tx) = self.0.remove(&id) {
            let _ = tx.send(if response.accepted {
                Ok(())
            } else {
                Err(Error::Query(format!(
                    "the relay refused to host our record: {}",
                    response.reason.as_deref().unwrap_or("no reason given")
                )))
            });
        }
    }

    /// Request `id` failed (timeout, refused protocol, closed connection).
    pub(crate) fn on_failure(
        &mut self,
        id: OutboundRequestId,
        error: &request_response::OutboundFailure,
    ) {
        if let Some(tx) = self.0.remove(&id) {
            let _ = tx.send(Err(Error::Query(error.to_string())));
        }
    }
}

/// `/kwaainet/host/1.0.0` on [`crate::frame`]'s frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostWire;

/// The protocol's codec.
pub type Codec = crate::frame::Codec<HostWire>;

impl Framed for HostWire {
    type Request = Request;
    type Response = HostResponse;
    const MAX_REQUEST: usize = MAX_RECORD_BYTES;
    const MAX_RESPONSE: usize = MAX_RESPONSE_BYTES;

    fn decode_request(frame: Result<Vec<u8>, String>) -> Request {
        match frame {
            Ok(b) => Request::Record(b),
            Err(why) => Request::Malformed(why),
        }
    }

    fn encode_request(req: Request) -> io::Result<Vec<u8>> {
        match req {
            Request::Record(bytes) => Ok(bytes),
            Request::Malformed(_) => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, "not a request"))
            }
        }
    }

    fn decode_response(frame: Vec<u8>) -> io::Result<HostResponse> {
        serde_json::from_slice(&frame).map_err(|e| invalid(e.to_string()))
    }

    fn encode_response(res: HostResponse) -> io::Result<Vec<u8>> {
        serde_json::to_vec(&res).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use libp2p::identity::Keypair;

    use super::*;
    use crate::record::{AddressEntry, NODE_RECORD_VERSION, ServedSpan};

    fn page_record(page: &Keypair, relay: PeerId) -> NodeRecord {
        let me = page.public().to_peer_id();
        let addr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{me}");
        NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: me,
            roles: vec![Role::Client],
            addrs: vec![AddressEntry::new(addr.parse().unwrap())],
            accelerator: Default::default(),
            version: "0.1.0".into(),
            region: None,
            spans: vec![ServedSpan::new("m", 10, 20)],
            hosted: vec![],
            contribution: None,
            issued_at: 1,
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_records_are_flagged_unread() {
        use futures::io::Cursor;
        use libp2p::request_response::Codec as _;

        let mut c = Codec::default();
        let mut wire = Vec::new();
        c.write_request(&PROTOCOL, &mut wire, Request::Record(vec![7; 100]))
            .await
            .unwrap();
        let got = c.read_request(&PROTOCOL, &mut Cursor::new(wire)).await;
        assert_eq!(got.unwrap(), Request::Record(vec![7; 100]));
        // Over the record limit: malformed, its body never read.
        let mut wire = Vec::new();
        c.write_request(
            &PROTOCOL,
            &mut wire,
            Request::Record(vec![0; MAX_RECORD_BYTES + 1]),
        )
        .await
        .unwrap();
        let got = c.read_request(&PROTOCOL, &mut Cursor::new(wire)).await;
        assert!(matches!(got, Ok(Request::Malformed(_))), "{got:?}");
        for res in [HostResponse::accepted(), HostResponse::refused("full")] {
            let mut wire = Vec::new();
            c.write_response(&PROTOCOL, &mut wire, res.clone())
                .await
                .unwrap();
            let got = c.read_response(&PROTOCOL, &mut Cursor::new(wire)).await;
            assert_eq!(got.unwrap(), res);
        }
        // A response that is not one: an error, not a panic.
        let mut wire = Vec::new();
        crate::frame::write_frame(&mut wire, b"not json")
            .await
            .unwrap();
        assert!(
            c.read_response(&PROTOCOL, &mut Cursor::new(wire))
                .await
                .is_err()
        );
    }

    #[test]
    fn a_page_record_through_this_relay_is_hosted() {
        let (page, relay) = (Keypair::generate_ed25519(), PeerId::random());
        let me = page.public().to_peer_id();
        let bytes = page_record(&page, relay).sign(&page).unwrap();
        assert_eq!(verify(&bytes, me, relay).unwrap().spans.len(), 1);
    }

    #[test]
    fn records_that_are_not_a_clients_through_this_relay_are_refused() {
        let (page, relay) = (Keypair::generate_ed25519(), PeerId::random());
        let me = page.public().to_peer_id();
        let good = page_record(&page, relay);
        // Sent by someone else.
        let bytes = good.sign(&page).unwrap();
        assert!(verify(&bytes, PeerId::random(), relay).is_err());
        // Through another relay.
        assert!(verify(&bytes, me, PeerId::random()).is_err());
        // A DHT server's record.
        let mut full = good.clone();
        full.roles = vec![Role::Full];
        assert!(verify(&full.sign(&page).unwrap(), me, relay).is_err());
        // A direct address.
        let mut direct = good.clone();
        direct.addrs = vec![AddressEntry::new("/ip4/1.2.3.4/tcp/1".parse().unwrap())];
        assert!(verify(&direct.sign(&page).unwrap(), me, relay).is_err());
        // No address at all.
        let mut none = good.clone();
        none.addrs.clear();
        assert!(verify(&none.sign(&page).unwrap(), me, relay).is_err());
        // Hosting others in turn.
        let mut chain = good;
        chain.hosted = vec![PeerId::random()];
        assert!(verify(&chain.sign(&page).unwrap(), me, relay).is_err());
        // Not a record at all.
        assert!(verify(b"{}", me, relay).is_err());
    }
}
