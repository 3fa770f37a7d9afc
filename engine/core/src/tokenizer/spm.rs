//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`).
//!
//! Spaces are spelled `▁` in token texts. Encoding starts from single code points and
//! repeatedly merges the adjacent pair whose concatenation is the highest-scoring token
//! (ties go to the leftmost pair), as llama.cpp's `llm_tokenizer_spm` does; what is left
//! that is not a token falls back to `<0xNN>` byte tokens.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// The `▁` that stands for a space in SentencePiece vocabularies.
pub(crate) const SPACE: char = '\u{2581}';

/// A pair candidate: higher score first, then leftmost.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

/// Appends the tokens of `text` (spaces already replaced by `▁`).
/// `byte_token` maps a byte to its `<0xNN>` token (or `unk` when the vocabulary lacks it).
pub(crate) fn encode(
    text: &str,
    token_id: &HashMap<String, u32>,
    scores: &[f32],
    byte_token: &[Option<u32>; 256],
    unk: Option<u32>,
    out: &mut Vec<u32>,
) {
    #[derive(Clone, Copy)]
    struct Sym {
        start: usize,
        end: usize,
        prev: usize,
        next: usize,
    }
    const NONE: usize = usize::MAX;
    let mut syms: Vec<Sym> = Vec::new();
    for (i, c) in text.char_indices() {
        let k = syms.len();
        syms.push(Sym {
            start: i,
            end: i + c.len_utf8(),
            prev: k.wrapping_sub(1),
            next: k + 1,
        });
    }
    let Some(last) = syms.last_mut() else { return };
    last.next = NONE;

    let mut heap = BinaryHeap::new();
    let try_pair = |syms: &[Sym], l: usize, heap: &mut BinaryHeap<Bigram>| {
        let (Some(ls), Some(rs)) = (syms.get(l), syms.get(syms.get(l).map_or(NONE, |s| s.next)))
        else {
            return;
        };
        let Some(piece) = text.get(ls.start..rs.end) else {
            return;
        };
        if let Some(&id) = token_id.get(piece) {
            let score = scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram {
                score,
                left: l,
                right: ls.next,
                len: piece.len(),
            });
        }
    };
    for i in 0..syms.len() {
        try_pair(&syms, i, &mut heap);
    }
    while let Some(b) = heap.pop() {
        let (ls, rs) = (syms[b.left], syms[b.right]);
        // Stale if either side changed: a merged symbol's length no longer adds up.
        if ls.end == ls.start
            || rs.end == rs.start
            || ls.next != b.right
            || (rs.end - ls.start) != b.len
        {
            continue;
        }
        syms[b.left].end = rs.end;
        syms[b.left].next = rs.next;
        syms[b.right].end = syms[b.right].start;
        if let Some(nx) = syms.get_mut(rs.next) {
            nx.prev = b.left;
        }
        if ls.prev != NONE {
            try_pair(&syms, ls.prev, &mut heap);
        }
        try_pair(&syms, b.left, &mut heap);
    }

    let mut i = if syms.is_empty() { NONE } else { 0 };
    while i != NONE {
        let s = syms[i];
        let piece = &text[s.start..s.end];
        match token_id.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(
                piece
                    .bytes()
                    .filter_map(|b| byte_token[usize::from(b)].or(unk)),
            ),
        }
        i = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_score_wins() {
        let toks = ["a", "b", "ab", "bc", "c", "ca"];
        let scores = [0.0, 0.0, -2.0, -1.0, 0.0, -0.5];
        let id: HashMap<String, u32> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect();
        let bytes = [None; 256];
        let mut out = Vec::new();
        // "bc" (-1) beats "ab" (-2); then "a"+"bc" is not a token, so: a, bc.
        encode("abc", &id, &scores, &bytes, None, &mut out);
        assert_eq!(out, [0, 3]);
        out.clear();
        encode("", &id, &scores, &bytes, None, &mut out);
        assert!(out.is_empty());
    }
}
