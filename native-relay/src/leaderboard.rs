//! The swarm's leaderboard and community figures, from records every contributor signs.
//!
//! Each node puts its signed contribution record (`kwaainet-footprint`'s
//! [`SignedContribution`]) in its node record in the DHT: 10 s after it starts and every
//! `--contribution-every` seconds (five minutes by default) after. `GET /api/v1/leaderboard` reads the node records of
//! the peers this node knows (its routing table) and of the pages they host (a page's
//! signed contribution travels in the record its relay stores for it: the SDK publishes it
//! while the page serves), at most [`MAX_PEERS`] lookups each bounded by [`LOOKUP_TIMEOUT`], checks every contribution against its contributor's own key (a
//! record edited by anyone else, or an impossible one, is refused and counted), and ranks
//! the contributors by verified work and by renewable share. The answer is cached for
//! [`CACHE_FOR`], so a page polling it costs the DHT nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kwaainet_footprint::contribution::{Leaderboard, SignedContribution, leaderboard};
use kwaainet_p2p::NodeHandle;
use serde_json::{Value, json};

use crate::footprint::NodeFootprint;

/// Node records read per leaderboard.
pub const MAX_PEERS: usize = 32;
/// How long one node record lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer is served again.
pub const CACHE_FOR: Duration = Duration::from_secs(15);

/// The leaderboard's state: the node, its own record, the cached answer.
pub struct Board {
    node: NodeHandle,
    footprint: Arc<NodeFootprint>,
    cache: tokio::sync::Mutex<Option<(Instant, Value)>>,
}

impl Board {
    /// A leaderboard read through `node`, with `footprint`'s own record in it.
    pub fn new(node: NodeHandle, footprint: Arc<NodeFootprint>) -> Arc<Self> {
        Arc::new(Self {
            node,
            footprint,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Publishes the node's signed contribution record in its node record.
    pub async fn publish(&self) {
        let signed = match self.footprint.contribution() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign the contribution record");
                return;
            }
        };
        let text = match serde_json::to_string(&signed) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "contribution record");
                return;
            }
        };
        if let Err(e) = self.node.set_contribution(text).await {
            tracing::debug!(error = %e, "the contribution record was not stored yet");
        }
    }

    /// The leaderboard (cached for [`CACHE_FOR`]).
    pub async fn get(&self) -> Value {
        let mut cache = self.cache.lock().await;
        if let Some((at, v)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return v.clone();
        }
        let v = self.gather().await;
        *cache = Some((Instant::now(), v.clone()));
        v
    }

    async fn gather(&self) -> Value {
        let me = self.node.peer_id();
        let key = kwaainet_p2p::record::node_key(&me);
        let peers = (self.node.closest_peers(key, MAX_PEERS).await).unwrap_or_default();
        let mut texts = Vec::new();
        // The nodes, then the pages they host (their records stored by their relays), up to
        // MAX_PEERS lookups in all.
        let mut asked: std::collections::HashSet<_> = peers.iter().copied().collect();
        let mut hosted = Vec::new();
        for (contribution, pages) in self.lookup(&peers).await {
            texts.extend(contribution);
            hosted.extend(pages.into_iter().filter(|p| *p != me && asked.insert(*p)));
        }
        if let Ok(st) = self.node.state().await {
            // Pages this node hosts itself.
            let own: Vec<_> = (st.hosted.iter())
                .filter(|p| asked.insert(**p))
                .copied()
                .collect();
            hosted.extend(own);
        }
        hosted.truncate(MAX_PEERS.saturating_sub(peers.len()));
        for (contribution, _) in self.lookup(&hosted).await {
            texts.extend(contribution);
        }
        let mut records = Vec::new();
        let mut malformed = Vec::new();
        for text in texts {
            match serde_json::from_str::<SignedContribution>(&text) {
                Ok(r) => records.push(r),
                Err(e) => malformed.push(format!("malformed contribution record: {e}")),
            }
        }
        match self.footprint.contribution() {
            Ok(own) => records.push(own),
            Err(e) => tracing::warn!(error = %e, "cannot sign the contribution record"),
        }
        let key_of = |did: &str| {
            kwaainet_p2p::did::to_ed25519(did)
                .ok()
                .map(|k| k.to_bytes())
        };
        let mut board = leaderboard(&records, key_of, crate::audit::now_ms());
        board.refused.extend(malformed);
        describe(&board, asked.len())
    }

    /// The contribution record and hosted pages of each of `peers`' node records (those
    /// found within [`LOOKUP_TIMEOUT`]).
    async fn lookup(
        &self,
        peers: &[kwaainet_p2p::libp2p::PeerId],
    ) -> Vec<(Option<String>, Vec<kwaainet_p2p::libp2p::PeerId>)> {
        let mut lookups = tokio::task::JoinSet::new();
        for peer in peers {
            let node = self.node.clone();
            let peer = *peer;
            lookups.spawn(async move {
                match tokio::time::timeout(LOOKUP_TIMEOUT, node.get_node_record(peer)).await {
                    Ok(Ok(Some(record))) => Some((record.contribution, record.hosted)),
                    _ => None,
                }
            });
        }
        let mut found = Vec::new();
        while let Some(r) = lookups.join_next().await {
            if let Ok(Some(r)) = r {
                found.push(r);
            }
        }
        found
    }
}

/// The JSON answer: the rankings, the community's totals, and what was refused.
fn describe(board: &Leaderboard, peers: usize) -> Value {
    let sum = |f: fn(&kwaainet_footprint::contribution::Standing) -> u64| {
        (board.by_work.iter()).fold(0u64, |a, s| a.saturating_add(f(s)))
    };
    let (tokens, carbon) = (sum(|s| s.tokens), sum(|s| s.carbon_ug));
    let energy = sum(|s| s.energy_uwh);
    let sci = kwaainet_footprint::formula::sci(
        kwaainet_footprint::Carbon(carbon),
        kwaainet_footprint::Carbon(0),
        tokens,
        1_000,
    );
    // The renewable share of the whole, weighted by each contributor's energy.
    let renewable = (board.by_work.iter())
        .fold(0u128, |a, s| {
            a + u128::from(s.energy_uwh) * u128::from(s.renewable_permille)
        })
        .checked_div(u128::from(energy))
        .map(|p| p as u64);
    json!({
        "by_work": board.by_work,
        "by_renewable": board.by_renewable,
        "refused": board.refused,
        "network": {
            "contributors": board.by_work.len(),
            "work": sum(|s| s.work),
            "tokens": tokens,
            "uptime_s": sum(|s| s.uptime_s),
            "energy_uwh": energy,
            "carbon_ug": carbon,
            "sci_ug_per_1k_tokens": sci.map(|c| c.0),
            "renewable_permille": renewable,
        },
        "peers_asked": peers,
        "checked_at_ms": crate::audit::now_ms(),
        "method": "each contributor's own signed record, read from its node record in the DHT and verified with its key",
    })
}

/// `GET /api/v1/leaderboard`.
pub fn router(board: &Arc<Board>) -> axum::Router {
    let board = Arc::clone(board);
    axum::Router::new().route(
        "/api/v1/leaderboard",
        axum::routing::get(move || {
            let board = Arc::clone(&board);
            async move { axum::Json(board.get().await) }
        }),
    )
}
