//! Route planning: the cheapest chain of servers over a range of blocks.
//!
//! Petals' rule, in our own code: a shortest path (Dijkstra) over block boundaries, where
//! running blocks `i..j` on server `s` costs a hop (half the client's round trip to `s`,
//! plus a fixed overhead per hop), `j - i` blocks at `s`'s announced throughput, and a
//! penalty when `s` has less free cache than the session needs (it would answer `busy`).
//! Servers with no measurements get neutral defaults, so with no information at all the
//! plan is the one with fewest hops, the servers listed first winning ties.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::time::Duration;

use crate::client::ServerEntry;

/// The cost model's constants.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// Added to every hop (serialisation, scheduling): Petals uses 18 ms.
    pub per_hop: Duration,
    /// Round trip assumed for a server never measured.
    pub default_rtt: Duration,
    /// Blocks per second (one token through one block) assumed for a server that announces
    /// no throughput.
    pub default_throughput: f64,
    /// Added when a server's free cache is below what the session needs.
    pub cache_penalty: Duration,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            per_hop: Duration::from_millis(18),
            default_rtt: Duration::from_millis(100),
            default_throughput: 100.0,
            cache_penalty: Duration::from_secs(10),
        }
    }
}

impl Costs {
    /// Microseconds to run `blocks` blocks on `s` as one hop of a session needing `cache`
    /// positions. Whole microseconds, so equal routes cost exactly the same and ties are
    /// broken by the order servers are listed in, not by rounding.
    pub fn hop(&self, s: &ServerEntry, blocks: usize, cache: usize) -> u64 {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let rtt = micros(s.rtt.unwrap_or(self.default_rtt));
        let throughput = s
            .throughput
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(self.default_throughput);
        // Saturating float-to-int: a throughput of 1e-300 is a very long block, not a panic.
        let per_block = (1e6 / throughput).round() as u64;
        let penalty = match s.free_cache {
            Some(free) if free < cache => micros(self.cache_penalty),
            _ => 0,
        };
        (rtt / 2)
            .saturating_add(micros(self.per_hop))
            .saturating_add(per_block.saturating_mul(blocks as u64))
            .saturating_add(penalty)
    }
}

/// A planned route: which server (index into the list given) runs which blocks.
pub type Plan = Vec<(usize, Range<usize>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Visit {
    cost: u64,
    at: usize,
}

impl Ord for Visit {
    fn cmp(&self, other: &Self) -> Ordering {
        // A min-heap on cost; on equal cost the nearest boundary first.
        other.cost.cmp(&self.cost).then(other.at.cmp(&self.at))
    }
}

impl PartialOrd for Visit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The cheapest route over `blocks` through the servers `usable` accepts, for a session of
/// `cache` positions; or the first blocks no usable server covers.
pub fn plan(
    servers: &[ServerEntry],
    blocks: Range<usize>,
    cache: usize,
    costs: &Costs,
    usable: impl Fn(&ServerEntry) -> bool,
) -> Result<Plan, Range<usize>> {
    let (start, end) = (blocks.start, blocks.end);
    if start >= end {
        return Ok(Vec::new());
    }
    let n = end - start;
    let usable: Vec<usize> = (0..servers.len())
        .filter(|&k| usable(&servers[k]))
        .collect();
    // Boundary `b` (0..=n) is block `start + b`; best[b] = (cost, previous boundary, server).
    let mut best: Vec<Option<(u64, usize, usize)>> = vec![None; n + 1];
    let mut done = vec![false; n + 1];
    let mut heap = BinaryHeap::from([Visit { cost: 0, at: 0 }]);
    let mut reached = vec![false; n + 1];
    reached[0] = true;
    while let Some(Visit { cost, at }) = heap.pop() {
        if done[at] {
            continue;
        }
        done[at] = true;
        if at == n {
            break;
        }
        let block = start + at;
        for &k in &usable {
            let s = &servers[k];
            if !(s.blocks.start <= block && block < s.blocks.end) {
                continue;
            }
            let last = s.blocks.end.min(end) - start;
            for to in at + 1..=last {
                let c = cost.saturating_add(costs.hop(s, to - at, cache));
                reached[to] = true;
                if best[to].is_none_or(|(b, _, _)| c < b) {
                    best[to] = Some((c, at, k));
                    heap.push(Visit { cost: c, at: to });
                }
            }
        }
    }
    if best[n].is_none() {
        // The furthest boundary reached, and where the next usable server starts after it.
        let gap = (0..=n).rev().find(|&b| reached[b]).unwrap_or(0) + start;
        let next = usable
            .iter()
            .map(|&k| servers[k].blocks.start)
            .filter(|&b| b > gap)
            .min()
            .unwrap_or(end)
            .min(end);
        return Err(gap..next);
    }
    let mut route = Vec::new();
    let mut at = n;
    while at > 0 {
        let Some((_, from, k)) = best[at] else {
            break;
        };
        route.push((k, start + from..start + at));
        at = from;
    }
    route.reverse();
    Ok(route)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn server(id: &str, blocks: Range<usize>) -> ServerEntry {
        ServerEntry::new(id, blocks)
    }

    fn ids(servers: &[ServerEntry], plan: &Plan) -> Vec<(String, Range<usize>)> {
        plan.iter()
            .map(|(k, r)| (servers[*k].id.clone(), r.clone()))
            .collect()
    }

    #[test]
    fn with_no_measurements_the_fewest_hops_win_and_ties_go_to_the_first_listed() {
        let s = vec![
            server("a", 0..10),
            server("b", 10..30),
            server("b2", 10..30),
            server("long", 0..20),
            server("c", 20..30),
        ];
        let p = plan(&s, 0..30, 64, &Costs::default(), |_| true).unwrap();
        assert_eq!(ids(&s, &p), vec![("a".into(), 0..10), ("b".into(), 10..30)]);
        // A sub-range (a failed hop's blocks) starts mid-span.
        let p = plan(&s, 5..25, 64, &Costs::default(), |_| true).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].1.start, 5);
        assert_eq!(p.last().unwrap().1.end, 25);
    }

    #[test]
    fn round_trips_throughput_and_cache_shape_the_route() {
        let costs = Costs::default();
        // Far away: two nearby hops beat one distant server.
        let mut far = server("far", 0..30);
        far.rtt = Some(Duration::from_millis(400));
        let mut near1 = server("near1", 0..15);
        near1.rtt = Some(Duration::from_millis(2));
        let mut near2 = server("near2", 15..30);
        near2.rtt = Some(Duration::from_millis(2));
        let s = vec![far.clone(), near1.clone(), near2.clone()];
        let p = plan(&s, 0..30, 64, &costs, |_| true).unwrap();
        assert_eq!(
            ids(&s, &p),
            vec![("near1".into(), 0..15), ("near2".into(), 15..30)]
        );
        // A slow server is left for a faster one over the same blocks.
        let mut slow = server("slow", 0..30);
        slow.throughput = Some(5.0);
        let mut fast = server("fast", 0..30);
        fast.throughput = Some(500.0);
        let s = vec![slow, fast];
        let p = plan(&s, 0..30, 64, &costs, |_| true).unwrap();
        assert_eq!(ids(&s, &p), vec![("fast".into(), 0..30)]);
        // No free cache for the session: penalised, used only when nothing else covers.
        let mut full = server("full", 0..30);
        full.free_cache = Some(10);
        let s = vec![full, near1.clone(), near2.clone()];
        let p = plan(&s, 0..30, 64, &costs, |_| true).unwrap();
        assert_eq!(p.len(), 2);
        let p = plan(&s, 0..30, 64, &costs, |e| e.id == "full").unwrap();
        assert_eq!(ids(&s, &p), vec![("full".into(), 0..30)]);
    }

    #[test]
    fn a_gap_is_named() {
        let s = vec![server("a", 0..10), server("c", 20..30), server("d", 25..30)];
        assert_eq!(plan(&s, 0..30, 1, &Costs::default(), |_| true), Err(10..20));
        // Servers left out (banned) leave their blocks uncovered.
        assert_eq!(
            plan(&s, 0..30, 1, &Costs::default(), |e| e.id != "a"),
            Err(0..20)
        );
        assert_eq!(plan(&[], 0..30, 1, &Costs::default(), |_| true), Err(0..30));
        assert_eq!(plan(&s, 3..3, 1, &Costs::default(), |_| true), Ok(vec![]));
    }
}
