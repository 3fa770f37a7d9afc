//! Lookups in flight, shared by the native node and the page-side node: DHT record
//! queries and `/kwaainet/info/1.0.0` asks, each in a table by its id; what comes back is
//! verified (signature, key, the peer asked for) before whoever waits gets it.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::kad::{self, GetRecordOk, store::MemoryStore};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{Multiaddr, PeerId};

use crate::command::Reply;
use crate::error::{Error, Result};
use crate::info::{self, INFO_REQUEST_VERSION, InfoRequest, InfoResponse};
use crate::record::{NodeRecord, decode_node_record, node_key};

/// The outcome of one DHT lookup of a node record, with Kademlia's query statistics.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The verified record, if found.
    pub record: Option<NodeRecord>,
    /// Requests the query sent (peers contacted).
    pub requests: u32,
    /// Requests that were answered.
    pub successes: u32,
    /// Wall time of the query.
    pub elapsed: Duration,
}

/// Node-record queries in flight: the peer whose record each seeks, and who waits.
#[derive(Default)]
pub(crate) struct RecordLookups(HashMap<kad::QueryId, (PeerId, Reply<Result<Lookup>>)>);

impl RecordLookups {
    /// Starts a query for `peer`'s record; `reply` gets the outcome.
    pub(crate) fn start(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        peer: PeerId,
        reply: Reply<Result<Lookup>>,
    ) {
        let id = kad.get_record(node_key(&peer));
        self.0.insert(id, (peer, reply));
    }

    /// Queries in flight (the page caps its requests in flight; the node does not).
    #[cfg(wasm_browser)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// One step of query `id`. The first record signed by the peer asked for ends the query
    /// and answers; a forged or foreign record is skipped and the query goes on, and if it
    /// ends without a good one the answer is "not found". Returns whether a record was
    /// refused (for the caller's metrics). Steps of queries not started here are ignored.
    #[must_use]
    pub(crate) fn on_progress(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        id: kad::QueryId,
        res: kad::GetRecordResult,
        last: bool,
        stats: &kad::QueryStats,
    ) -> bool {
        let Some((peer, _)) = self.0.get(&id) else {
            return false;
        };
        let peer = *peer;
        let mut refused = false;
        let outcome = match res {
            Ok(GetRecordOk::FoundRecord(found)) => match decode_node_record(&found.record.value) {
                Ok(rec) if rec.peer_id == peer => Some(Ok(Some(rec))),
                _ => {
                    refused = true;
                    last.then_some(Ok(None))
                }
            },
            Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. })
            | Err(kad::GetRecordError::NotFound { .. }) => Some(Ok(None)),
            Err(e) => Some(Err(Error::Query(e.to_string()))),
        };
        let Some(outcome) = outcome else {
            return refused;
        };
        if let Some(mut q) = kad.query_mut(&id) {
            q.finish();
        }
        if let Some((_, tx)) = self.0.remove(&id) {
            let _ = tx.send(outcome.map(|record| Lookup {
                record,
                requests: stats.num_requests(),
                successes: stats.num_successes(),
                elapsed: stats.duration().unwrap_or_default(),
            }));
        }
        refused
    }
}

/// `/kwaainet/info/1.0.0` requests in flight: the peer asked, and who waits for its record.
#[derive(Default)]
pub(crate) struct InfoAsks(HashMap<OutboundRequestId, (PeerId, Reply<Result<NodeRecord>>)>);

impl InfoAsks {
    /// Asks `peer` for its record, dialing `addrs` if we are not connected to it.
    pub(crate) fn start(
        &mut self,
        info: &mut request_response::Behaviour<info::Codec>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<Result<NodeRecord>>,
    ) {
        let req = info::Request::Info(InfoRequest {
            v: INFO_REQUEST_VERSION,
        });
        let id = info.send_request_with_addresses(&peer, req, addrs);
        self.0.insert(id, (peer, reply));
    }

    /// Requests in flight (the page caps its requests in flight; the node does not).
    #[cfg(wasm_browser)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// `from` answered request `id`: the record must be signed by the peer asked.
    pub(crate) fn on_response(
        &mut self,
        id: OutboundRequestId,
        from: PeerId,
        response: &InfoResponse,
    ) {
        if let Some((asked, tx)) = self.0.remove(&id) {
            let _ = tx.send(response.verify(asked, from));
        }
    }

    /// Request `id` failed (timeout, refused protocol, closed connection).
    pub(crate) fn on_failure(
        &mut self,
        id: OutboundRequestId,
        error: &request_response::OutboundFailure,
    ) {
        if let Some((_, tx)) = self.0.remove(&id) {
            let _ = tx.send(Err(Error::Query(error.to_string())));
        }
    }
}
