//! Which blocks a server should serve: Petals' rule, in our own code.
//!
//! Each block's *coverage* is the summed throughput of the servers holding it. A joining
//! server of `len` blocks takes the window whose coverage, sorted, is smallest
//! lexicographically: first the window with the weakest block, then the least served
//! overall; the earliest on a tie. A serving server moves when that would raise the swarm's
//! weakest block enough: when the coverage minimum before the move is below
//! `balance_quality` times the minimum after it (Petals uses 0.75). A server pinned to its
//! blocks by its operator never asks.

use std::ops::Range;

/// One server's span as the swarm announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// Its blocks.
    pub blocks: Range<usize>,
    /// Tokens per second through one block (what it adds to each block's coverage).
    pub throughput: f64,
}

/// Each block's summed throughput over `spans`, for a model of `n` blocks.
pub fn coverage(spans: &[Placed], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n];
    for s in spans {
        let (a, b) = (s.blocks.start.min(n), s.blocks.end.min(n));
        for v in &mut c[a..b.max(a)] {
            *v += s.throughput.max(0.0);
        }
    }
    c
}

fn window_key(c: &[f64]) -> Vec<f64> {
    let mut w = c.to_vec();
    w.sort_by(f64::total_cmp);
    w
}

fn lexicographic(a: &[f64], b: &[f64]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.total_cmp(y) {
            std::cmp::Ordering::Equal => {}
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// The start of the best window of `len` blocks over `coverage` (the least served; the
/// earliest, or `prefer` when it is among the best, on a tie).
pub fn choose_start(coverage: &[f64], len: usize, prefer: Option<usize>) -> usize {
    let n = coverage.len();
    if len >= n {
        return 0;
    }
    let mut best = 0;
    let mut best_key = window_key(&coverage[..len]);
    for start in 1..=n - len {
        let key = window_key(&coverage[start..start + len]);
        if lexicographic(&key, &best_key).is_lt() {
            best = start;
            best_key = key;
        }
    }
    match prefer {
        Some(p)
            if p + len <= n
                && lexicographic(&window_key(&coverage[p..p + len]), &best_key).is_eq() =>
        {
            p
        }
        _ => best,
    }
}

/// Where a server of `swarm[me]` should move, if anywhere: the best window once its own
/// throughput is taken out, when moving there raises the weakest block's coverage enough.
pub fn should_move(swarm: &[Placed], me: usize, n: usize, balance_quality: f64) -> Option<usize> {
    let mine = swarm.get(me)?;
    let len = mine.blocks.len();
    let mut c = coverage(swarm, n);
    let before = c.iter().copied().fold(f64::INFINITY, f64::min);
    let (a, b) = (mine.blocks.start.min(n), mine.blocks.end.min(n));
    for v in &mut c[a..b.max(a)] {
        *v -= mine.throughput.max(0.0);
    }
    let start = choose_start(&c, len, Some(mine.blocks.start));
    if start == mine.blocks.start {
        return None;
    }
    for v in &mut c[start..(start + len).min(n)] {
        *v += mine.throughput.max(0.0);
    }
    let after = c.iter().copied().fold(f64::INFINITY, f64::min);
    if after <= before || after <= 1e-9 {
        return None;
    }
    (before / after < balance_quality).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(blocks: Range<usize>, throughput: f64) -> Placed {
        Placed { blocks, throughput }
    }

    #[test]
    fn joining_servers_fill_the_least_served_window() {
        // Nobody yet: the first window.
        assert_eq!(choose_start(&coverage(&[], 30), 15, None), 0);
        // Blocks 0..15 served: the other half.
        let c = coverage(&[placed(0..15, 10.0)], 30);
        assert_eq!(choose_start(&c, 15, None), 15);
        // Three servers able to hold half each cover the model after two join.
        let mut swarm = Vec::new();
        for _ in 0..3 {
            let start = choose_start(&coverage(&swarm, 30), 15, None);
            swarm.push(placed(start..start + 15, 10.0));
        }
        assert!(coverage(&swarm, 30).iter().all(|&c| c > 0.0));
        // A weak block decides over a lower sum elsewhere.
        let c = [5.0, 5.0, 1.0, 9.0, 9.0, 9.0];
        assert_eq!(choose_start(&c, 2, None), 1);
        // The whole model, or more.
        assert_eq!(choose_start(&c, 6, None), 0);
        assert_eq!(choose_start(&c, 9, None), 0);
    }

    #[test]
    fn a_server_moves_only_when_it_helps_enough() {
        // Two servers on 0..15, nobody on 15..30: one of them moves to 15.
        let swarm = [placed(0..15, 10.0), placed(0..15, 10.0)];
        assert_eq!(should_move(&swarm, 0, 30, 0.75), Some(15));
        // Balanced: nobody moves.
        let swarm = [placed(0..15, 10.0), placed(15..30, 10.0)];
        assert_eq!(should_move(&swarm, 0, 30, 0.75), None);
        assert_eq!(should_move(&swarm, 1, 30, 0.75), None);
        // A small gain is not worth a move: 0..15 at 10+1, 15..30 at 10; moving the slow
        // one raises nothing (the minimum stays 10).
        let swarm = [
            placed(0..15, 10.0),
            placed(0..15, 1.0),
            placed(15..30, 10.0),
        ];
        assert_eq!(should_move(&swarm, 1, 30, 0.75), None);
        // Equal windows: stay where it is.
        let swarm = [placed(10..20, 10.0)];
        assert_eq!(should_move(&swarm, 0, 30, 0.75), None);
    }
}
