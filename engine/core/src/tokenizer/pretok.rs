//! Pre-tokenizer splits for byte-level BPE vocabularies (`tokenizer.ggml.pre`).
//!
//! Each pre-tokenizer is a list of passes, applied in order as llama.cpp does: a pass
//! cuts every fragment into its matches *and* the text between them, so later passes only
//! ever see text inside one earlier fragment. The GPT-2 and Llama-3 regexes are
//! hand-written scanners (ports of llama.cpp's `unicode_regex_split_custom_*`) so that no
//! regex engine is needed and every pass is linear in the input.

use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// Character classes the split patterns need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    const LETTER: u8 = 1;
    const NUMBER: u8 = 2;
    const WHITESPACE: u8 = 4;
    const PUNCT: u8 = 8;
    /// Any assigned code point. llama.cpp gives unassigned code points no flags at all,
    /// which keeps them out of `[^\s\p{L}\p{N}]+` runs; we do the same to match its ids.
    const ASSIGNED: u8 = 16;

    fn of(c: char) -> Self {
        let mut f = match get_general_category(c) {
            Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter => Self::LETTER,
            Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber => Self::NUMBER,
            Gc::ConnectorPunctuation
            | Gc::DashPunctuation
            | Gc::OpenPunctuation
            | Gc::ClosePunctuation
            | Gc::InitialPunctuation
            | Gc::FinalPunctuation
            | Gc::OtherPunctuation => Self::PUNCT,
            Gc::Unassigned => 0,
            _ => Self::ASSIGNED,
        };
        if f != 0 {
            f |= Self::ASSIGNED;
        }
        // `char::is_whitespace` is exactly the Unicode White_Space property, i.e. regex `\s`.
        if c.is_whitespace() {
            f |= Self::WHITESPACE | Self::ASSIGNED;
        }
        Self(f)
    }
    fn letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    fn number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    fn space(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    fn punct(self) -> bool {
        self.0 & Self::PUNCT != 0
    }
    /// `[^\s\p{L}\p{N}]`, restricted to assigned code points (see [`Flags::ASSIGNED`]).
    fn other(self) -> bool {
        self.0 & (Self::LETTER | Self::NUMBER | Self::WHITESPACE) == 0
            && self.0 & Self::ASSIGNED != 0
    }
}

/// One split pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// `\p{N}`: every number code point on its own.
    EachDigit,
    /// `\p{N}+`.
    DigitRuns,
    /// `[\p{P}\$\+<=>\^`\|]+`.
    PunctRuns,
    /// `[0-9][0-9][0-9]`.
    AsciiTriples,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
}

/// A pre-tokenizer: the `tokenizer.ggml.pre` value resolved to its passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    passes: &'static [Pass],
    /// Whether a word that is itself a token skips BPE (llama.cpp's `ignore_merges`).
    pub(crate) ignore_merges: bool,
}

impl PreTokenizer {
    /// Resolves a `tokenizer.ggml.pre` name; `None` for names we do not implement.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        const DEFAULT: &[Pass] = &[
            Pass::PunctRuns,
            Pass::Gpt2,
            Pass::DigitRuns,
            Pass::AsciiTriples,
        ];
        const GPT2: &[Pass] = &[Pass::Gpt2];
        const DIGITS_GPT2: &[Pass] = &[Pass::EachDigit, Pass::Gpt2];
        const LLAMA3: &[Pass] = &[Pass::Llama3];
        let (passes, ignore_merges) = match name {
            "default" => (DEFAULT, false),
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es"
            | "jina-v2-de" | "jina-v2-code" | "mpt" | "olmo" | "jais" | "trillion" => (GPT2, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => (DIGITS_GPT2, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (LLAMA3, true),
            "dbrx" | "smaug-bpe" => (LLAMA3, false),
            _ => return None,
        };
        Some(Self {
            passes,
            ignore_merges,
        })
    }

    /// Splits `text` into words, in order; their concatenation is `text`.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let chars: Vec<(usize, char, Flags)> = text
            .char_indices()
            .map(|(i, c)| (i, c, Flags::of(c)))
            .collect();
        let mut frags: Vec<(usize, usize)> = if chars.is_empty() {
            Vec::new()
        } else {
            vec![(0, chars.len())]
        };
        for &pass in self.passes {
            let mut next = Vec::with_capacity(frags.len() * 2);
            for &(lo, hi) in &frags {
                let s = Scan {
                    chars: &chars,
                    lo,
                    hi,
                };
                match pass {
                    Pass::EachDigit => s.class_runs(&mut next, |f, _| f.number(), true),
                    Pass::DigitRuns => s.class_runs(&mut next, |f, _| f.number(), false),
                    Pass::PunctRuns => s.class_runs(&mut next, punct_like, false),
                    Pass::AsciiTriples => s.ascii_triples(&mut next),
                    Pass::Gpt2 => s.gpt2(&mut next),
                    Pass::Llama3 => s.llama3(&mut next),
                }
            }
            frags = next;
        }
        let byte_at = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
        frags
            .into_iter()
            .filter_map(|(lo, hi)| text.get(byte_at(lo)..byte_at(hi)))
            .collect()
    }
}

fn punct_like(f: Flags, c: char) -> bool {
    f.punct() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|')
}

/// One fragment `chars[lo..hi]` being cut; pieces are pushed as code point ranges.
struct Scan<'a> {
    chars: &'a [(usize, char, Flags)],
    lo: usize,
    hi: usize,
}

impl Scan<'_> {
    /// The code point at `pos`, `None` outside the fragment (so look-ahead stops there).
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.lo..self.hi).contains(&pos).then(|| self.chars[pos].1)
    }
    fn flags(&self, pos: usize) -> Flags {
        if (self.lo..self.hi).contains(&pos) {
            self.chars[pos].2
        } else {
            Flags::default()
        }
    }

    /// Runs of code points in a class (or single ones when `single`), with the gaps.
    fn class_runs(
        &self,
        out: &mut Vec<(usize, usize)>,
        class: impl Fn(Flags, char) -> bool,
        single: bool,
    ) {
        let mut gap = self.lo;
        let mut pos = self.lo;
        while pos < self.hi {
            let in_class = |p: usize| p < self.hi && class(self.chars[p].2, self.chars[p].1);
            if !in_class(pos) {
                pos += 1;
                continue;
            }
            push(out, gap, pos);
            let start = pos;
            pos += 1;
            while !single && in_class(pos) {
                pos += 1;
            }
            push(out, start, pos);
            gap = pos;
        }
        push(out, gap, self.hi);
    }

    /// Non-overlapping `[0-9]{3}` matches, left to right, with the gaps.
    fn ascii_triples(&self, out: &mut Vec<(usize, usize)>) {
        let digit = |p: usize| self.cpt(p).is_some_and(|c| c.is_ascii_digit());
        let mut gap = self.lo;
        let mut pos = self.lo;
        while pos < self.hi {
            if digit(pos) && digit(pos + 1) && digit(pos + 2) {
                push(out, gap, pos);
                push(out, pos, pos + 3);
                pos += 3;
                gap = pos;
            } else {
                pos += 1;
            }
        }
        push(out, gap, self.hi);
    }

    /// Contractions `'s 't 're 've 'm 'll 'd` at `pos`; returns the match length.
    fn contraction(&self, pos: usize, fold_case: bool) -> usize {
        if self.cpt(pos) != Some('\'') {
            return 0;
        }
        let low = |p: usize| {
            self.cpt(p)
                .map(|c| if fold_case { c.to_ascii_lowercase() } else { c })
        };
        match (low(pos + 1), low(pos + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => 2,
            (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => 3,
            _ => 0,
        }
    }

    /// Whitespace handling shared by both patterns: `\s+(?!\S)|\s+` starting at `pos`.
    /// Returns the end of the match, or `None` when `pos` is not whitespace.
    fn trailing_space(&self, pos: usize) -> Option<usize> {
        let mut n = 0;
        while self.flags(pos + n).space() {
            n += 1;
        }
        match n {
            0 => None,
            // A run followed by more text leaves its last space to prefix the next word.
            n if n > 1 && self.cpt(pos + n).is_some() => Some(pos + n - 1),
            n => Some(pos + n),
        }
    }

    fn gpt2(&self, out: &mut Vec<(usize, usize)>) {
        let mut pos = self.lo;
        while pos < self.hi {
            let start = pos;
            let n = self.contraction(pos, false);
            if n > 0 {
                pos += n;
                push(out, start, pos);
                continue;
            }
            let cpt = self.chars[pos].1;
            let lead = usize::from(cpt == ' ');
            let f2 = self.flags(pos + lead);
            let class: Option<fn(Flags) -> bool> = if f2.letter() {
                Some(Flags::letter)
            } else if f2.number() {
                Some(Flags::number)
            } else if f2.other() {
                Some(Flags::other)
            } else {
                None
            };
            if let Some(class) = class {
                pos += lead;
                while class(self.flags(pos)) {
                    pos += 1;
                }
            } else if let Some(end) = self.trailing_space(pos) {
                pos = end;
            } else {
                pos += 1;
            }
            push(out, start, pos);
        }
    }

    fn llama3(&self, out: &mut Vec<(usize, usize)>) {
        let mut pos = self.lo;
        while pos < self.hi {
            let start = pos;
            let n = self.contraction(pos, true);
            if n > 0 {
                pos += n;
                push(out, start, pos);
                continue;
            }
            let cpt = self.chars[pos].1;
            let flags = self.flags(pos);
            let newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(newline(Some(cpt)) || flags.number())
                && (flags.letter() || self.flags(pos + 1).letter())
            {
                pos += 1;
                while self.flags(pos).letter() {
                    pos += 1;
                }
                push(out, start, pos);
                continue;
            }
            // \p{N}{1,3}
            if flags.number() {
                let mut ini = pos;
                while self.flags(pos).number() {
                    pos += 1;
                    if pos - ini >= 3 {
                        push(out, ini, pos);
                        ini = pos;
                    }
                }
                push(out, ini, pos);
                continue;
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            let lead = usize::from(cpt == ' ');
            if self.flags(pos + lead).other() {
                pos += lead;
                while self.flags(pos).other() {
                    pos += 1;
                }
                while newline(self.cpt(pos)) {
                    pos += 1;
                }
                push(out, start, pos);
                continue;
            }
            // \s*[\r\n]+ : the longest whitespace run that ends in a newline.
            let mut n = 0;
            let mut last_newline_end = None;
            while self.flags(pos + n).space() {
                if newline(self.cpt(pos + n)) {
                    last_newline_end = Some(pos + n + 1);
                }
                n += 1;
            }
            pos = match (last_newline_end, self.trailing_space(pos)) {
                (Some(end), _) | (None, Some(end)) => end,
                (None, None) => pos + 1,
            };
            push(out, start, pos);
        }
    }
}

fn push(out: &mut Vec<(usize, usize)>, lo: usize, hi: usize) {
    if hi > lo {
        out.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str, s: &str) -> Vec<String> {
        let p = PreTokenizer::from_name(name).map(|p| p.split(s));
        p.unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn gpt2_pattern() {
        assert_eq!(
            split("gpt2", "Hello world's  3.14  \n\tend  "),
            [
                "Hello", " world", "'s", " ", " 3", ".", "14", "  \n", "\t", "end", "  "
            ]
        );
        assert_eq!(split("gpt2", ""), Vec::<String>::new());
        assert_eq!(split("gpt2", " ?!x"), [" ?!", "x"]);
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            split("smollm", "in 2024, é٣"),
            ["in", " ", "2", "0", "2", "4", ",", " é", "٣"]
        );
    }

    #[test]
    fn llama3_pattern() {
        assert_eq!(
            split("llama3", "I'M 12345 ok?\n\n  x"),
            ["I", "'M", " ", "123", "45", " ok", "?\n\n", " ", " x"]
        );
    }

    #[test]
    fn default_pattern() {
        assert_eq!(
            split("default", "a+b 1234"),
            ["a", "+", "b", " ", "123", "4"]
        );
    }

    #[test]
    fn concatenation_is_identity() {
        let s = "  héllo, 世界!! 123\r\n\u{0378}x\t\t 😀'll ";
        for name in ["default", "gpt2", "smollm", "llama3"] {
            assert_eq!(split(name, s).concat(), s, "{name}");
        }
    }
}
