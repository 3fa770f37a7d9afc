//! The node's DHT queries in flight: record lookups (the table shared with the page-side
//! node, [`crate::lookup`]), provider lookups, and publications of our record, each
//! answered when its query ends.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use libp2p::kad::{self, QueryResult, store::MemoryStore};

use super::runtime::Runtime;
use crate::command::Reply;
use crate::error::{Error, Result};
use crate::lookup::RecordLookups;
use crate::record::unix_now;

/// A provider lookup: the providers found so far, and who waits for them.
type ProvidersQuery = (HashSet<PeerId>, Reply<Result<Vec<PeerId>>>);

#[derive(Default)]
pub(super) struct Queries {
    /// `GetRecord` queries of node records.
    pub(super) records: RecordLookups,
    /// `GetProviders` queries.
    providers: HashMap<kad::QueryId, ProvidersQuery>,
    /// `PutRecord` queries of our record, and who waits (none for scheduled ones).
    publishes: HashMap<kad::QueryId, Vec<Reply<Result<()>>>>,
}

impl Queries {
    /// Looks up the providers of `key`.
    pub(super) fn start_providers(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        key: kad::RecordKey,
        tx: Reply<Result<Vec<PeerId>>>,
    ) {
        let id = kad.get_providers(key);
        self.providers.insert(id, (HashSet::new(), tx));
    }

    /// A publication of our record started as query `id`.
    pub(super) fn publishing(&mut self, id: kad::QueryId, reply: Option<Reply<Result<()>>>) {
        self.publishes.insert(id, reply.into_iter().collect());
    }

    fn on_providers(&mut self, id: kad::QueryId, res: kad::GetProvidersResult, last: bool) {
        let Some((set, _)) = self.providers.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        match res {
            Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => set.extend(providers),
            Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
            Err(e) => failed = Some(e.to_string()),
        }
        if (last || failed.is_some())
            && let Some((set, tx)) = self.providers.remove(&id)
        {
            let _ = tx.send(match failed {
                Some(e) if set.is_empty() => Err(Error::Query(e)),
                _ => Ok(set.into_iter().collect()),
            });
        }
    }

    fn on_published(&mut self, id: kad::QueryId, outcome: &Result<()>) {
        for tx in self.publishes.remove(&id).into_iter().flatten() {
            let _ = tx.send(
                outcome
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| Error::Query(e.to_string())),
            );
        }
    }
}

impl Runtime {
    pub(super) fn on_query(
        &mut self,
        id: kad::QueryId,
        result: QueryResult,
        last: bool,
        stats: &kad::QueryStats,
    ) {
        match result {
            QueryResult::Bootstrap(Ok(ok)) if ok.num_remaining == 0 => {
                tracing::info!(peer = %ok.peer, "DHT bootstrap done");
                self.publish(None);
            }
            QueryResult::Bootstrap(Ok(_)) => {}
            QueryResult::Bootstrap(Err(e)) => tracing::debug!(error = %e, "bootstrap failed"),
            QueryResult::GetRecord(res) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                if self.queries.records.on_progress(kad, id, res, last, stats) {
                    self.ours.rejected_records.inc();
                }
            }
            QueryResult::GetProviders(res) => self.queries.on_providers(id, res, last),
            QueryResult::PutRecord(_) if self.hosted.is_put(id, last) => {}
            QueryResult::PutRecord(res) => {
                if !last {
                    return;
                }
                let outcome = match res {
                    Ok(_) => {
                        self.record_published_at = Some(unix_now());
                        self.ours.records_published.inc();
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing our record failed");
                        Err(Error::Query(e.to_string()))
                    }
                };
                self.queries.on_published(id, &outcome);
            }
            _ => {}
        }
    }
}
