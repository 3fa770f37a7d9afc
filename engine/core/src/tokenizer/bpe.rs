//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`).
//!
//! Token texts are stored with GPT-2's byte-to-unicode mapping (bytes that are not
//! printable become code points from U+0100 up, e.g. a space is `Ġ`). Encoding works on
//! raw bytes and token ids, so no strings are built per word: every byte starts as the
//! id of its one-character token, and the lowest-ranked adjacent pair is merged until no
//! pair has a rank, exactly like llama.cpp (ties go to the leftmost pair).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::{Error, Result};

/// GPT-2's `bytes_to_unicode`: the code point that stands for each byte in token texts.
pub(crate) fn byte_to_char(b: u8) -> char {
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        return char::from(b);
    }
    // Non-printable bytes are numbered in byte order from U+0100.
    let rank = (0..b)
        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
        .count() as u32;
    char::from_u32(0x100 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The inverse of [`byte_to_char`] as a table over U+0000..U+0143.
pub(crate) struct ByteMap {
    to_byte: [u16; 0x144],
}

impl ByteMap {
    const NONE: u16 = u16::MAX;

    pub(crate) fn new() -> Self {
        let mut to_byte = [Self::NONE; 0x144];
        for b in 0..=255u8 {
            let c = byte_to_char(b) as usize;
            if let Some(slot) = to_byte.get_mut(c) {
                *slot = u16::from(b);
            }
        }
        Self { to_byte }
    }

    /// Undoes the byte-level mapping; code points outside the map keep their UTF-8 bytes
    /// (only a malformed vocabulary has them).
    pub(crate) fn decode_into(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.to_byte.get(c as usize) {
                Some(&b) if b != Self::NONE => out.push(b as u8),
                _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
}

impl std::fmt::Debug for ByteMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteMap")
    }
}

/// Merge table of a byte-level BPE vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    /// `(left id, right id)` → `(rank, id of the merged text if it is a token)`.
    merges: HashMap<(u32, u32), (u32, Option<u32>)>,
    /// The token of each byte's one-character text.
    byte_token: [Option<u32>; 256],
    /// For decoding.
    pub(crate) bytes: ByteMap,
}

/// Pending merges: `(rank, left index, right index, left id, right id)`, lowest first.
type PairHeap = BinaryHeap<Reverse<(u32, usize, usize, u32, u32)>>;

impl Bpe {
    /// Builds the merge table from `tokenizer.ggml.merges` (`"left right"` strings, rank =
    /// position). Both halves must be tokens; the first occurrence of a pair wins.
    pub(crate) fn new(merges: &[&str], token_id: &HashMap<String, u32>) -> Result<Self> {
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = token_id
                .get(byte_to_char(b as u8).encode_utf8(&mut [0; 4]) as &str)
                .copied();
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // The separator is the first space after the first byte (as in llama.cpp), so a
            // left half may itself be a space in vocabularies that keep raw spaces.
            let split = m
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1);
            let (left, right) = match split {
                Some(p) => (&m[..p], &m[p + 1..]),
                None => {
                    return Err(Error::Tokenizer(format!(
                        "merge {rank} {m:?} has no space separator"
                    )));
                }
            };
            let id = |s: &str| {
                token_id.get(s).copied().ok_or_else(|| {
                    Error::Tokenizer(format!("merge {rank} {m:?} refers to unknown token {s:?}"))
                })
            };
            let (l, r) = (id(left)?, id(right)?);
            let merged = token_id.get(&format!("{left}{right}")).copied();
            let rank =
                u32::try_from(rank).map_err(|_| Error::Tokenizer("too many merges".into()))?;
            table.entry((l, r)).or_insert((rank, merged));
        }
        Ok(Self {
            merges: table,
            byte_token,
            bytes: ByteMap::new(),
        })
    }

    /// Appends the tokens of one pre-tokenized word (raw bytes). Bytes whose one-character
    /// token is missing from the vocabulary are dropped, as llama.cpp does (SmolLM2 has no
    /// token for e.g. 0xF1/0xF2; its "unknown" id is `<|endoftext|>`, which must not be
    /// injected into a prompt).
    pub(crate) fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Sym {
            id: Option<u32>,
            start: usize,
            end: usize,
            prev: usize,
            next: usize,
        }
        const NONE: usize = usize::MAX;
        if word.is_empty() {
            return;
        }
        let n = word.len();
        let mut syms: Vec<Sym> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Sym {
                id: self.byte_token[usize::from(b)],
                start: i,
                end: i + 1,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();

        // Min-heap on (rank, left position); entries are validated lazily when popped.
        let mut heap = BinaryHeap::new();
        let pair = |syms: &[Sym], l: usize, heap: &mut PairHeap| {
            let Some(ls) = syms.get(l) else { return };
            let Some(rs) = syms.get(ls.next) else { return };
            if let (Some(a), Some(b)) = (ls.id, rs.id)
                && let Some(&(rank, _)) = self.merges.get(&(a, b))
            {
                heap.push(Reverse((rank, l, ls.next, a, b)));
            }
        };
        for i in 0..n {
            pair(&syms, i, &mut heap);
        }
        while let Some(Reverse((_, l, r, a, b))) = heap.pop() {
            // Stale if either side has merged since the entry was pushed.
            let (ls, rs) = (syms[l], syms[r]);
            if ls.end == ls.start
                || rs.end == rs.start
                || ls.next != r
                || ls.id != Some(a)
                || rs.id != Some(b)
            {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(a, b)) else {
                continue;
            };
            syms[l].id = merged;
            syms[l].end = rs.end;
            syms[l].next = rs.next;
            syms[r].end = syms[r].start; // dead
            if let Some(nx) = syms.get_mut(rs.next) {
                nx.prev = l;
            }
            if ls.prev != NONE {
                pair(&syms, ls.prev, &mut heap);
            }
            pair(&syms, l, &mut heap);
        }

        let mut i = 0;
        while i != NONE {
            let s = syms[i];
            match s.id {
                Some(id) => out.push(id),
                // A merge whose text is not a token, or a byte without a token: spell it out.
                None => out.extend(
                    word[s.start..s.end]
                        .iter()
                        .filter_map(|&b| self.byte_token[usize::from(b)]),
                ),
            }
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        let m = ByteMap::new();
        for b in 0..=255u8 {
            let mut out = Vec::new();
            m.decode_into(&byte_to_char(b).to_string(), &mut out);
            assert_eq!(out, [b]);
        }
    }

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect()
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let v = vocab(&["a", "b", "ab", "ba", "aba", "bab"]);
        // "ba" outranks "ab"; in "abab" the only "ba" pair merges first.
        let bpe = Bpe::new(&["b a", "a b", "a ba"], &v).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        bpe.encode_word(b"abab", &mut out);
        assert_eq!(out, [4, 1]); // "aba", "b"
        out.clear();
        bpe.encode_word(b"aaa", &mut out);
        assert_eq!(out, [0, 0, 0]);
    }

    #[test]
    fn bad_merges_are_errors() {
        let v = vocab(&["a", "b"]);
        assert!(matches!(Bpe::new(&["a c"], &v), Err(Error::Tokenizer(_))));
        assert!(matches!(Bpe::new(&["ab"], &v), Err(Error::Tokenizer(_))));
    }
}
