//! Text ↔ token ids, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Two vocabulary kinds are supported, matching llama.cpp's ids:
//! - `gpt2`: byte-level BPE with ranked merges, after a pre-tokenizer split chosen by
//!   `tokenizer.ggml.pre` (see `pretok`);
//! - `llama`: SentencePiece-style BPE over scored pieces, `▁` for spaces and `<0xNN>`
//!   byte fallback.
//!
//! Control and user-defined tokens written literally in the text (`<|im_start|>`) are
//! matched first, longest first; user-defined tokens are always matched, control tokens
//! only when the caller asks (`parse_special`), as in llama.cpp.
//!
//! ```
//! use kwaainet_core::Tokenizer;
//! use kwaainet_core::gguf::{Gguf, Value};
//!
//! let strs = |v: &[&str]| Value::Array(v.iter().map(|t| Value::String(t.to_string())).collect());
//! let gguf = Gguf {
//!     version: 3,
//!     tensors: vec![],
//!     metadata: vec![
//!         ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
//!         ("tokenizer.ggml.tokens".into(), strs(&["h", "i", "hi", "Ġ", "Ġhi"])),
//!         ("tokenizer.ggml.merges".into(), strs(&["h i", "Ġ hi"])),
//!     ],
//! };
//! let tok = Tokenizer::from_gguf(&gguf)?;
//! let ids = tok.encode("hi hi", false)?;
//! assert_eq!(ids, [2, 4]);
//! assert_eq!(tok.decode(&ids, true), "hi hi");
//! # Ok::<(), kwaainet_core::Error>(())
//! ```

mod bpe;
mod pretok;
mod spm;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};

use pretok::PreTokenizer;

/// The kind of a vocabulary entry (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Ordinary text.
    Normal,
    /// The unknown-token placeholder.
    Unknown,
    /// A control token (`<|im_start|>`, `</s>`): never produced from plain text.
    Control,
    /// An added token that is always matched literally.
    UserDefined,
    /// A reserved slot.
    Unused,
    /// A `<0xNN>` byte-fallback token.
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> Option<Self> {
        Some(match v {
            // 0 is "undefined" in older converters; llama.cpp treats it as ordinary text.
            0 | 1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
    /// Whether `decode(.., skip_special = true)` leaves the token out.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::Unknown | Self::Unused)
    }
}

/// The vocabulary family (`tokenizer.ggml.model`).
#[derive(Debug)]
enum Model {
    /// `gpt2`: byte-level BPE.
    Bpe {
        bpe: Box<bpe::Bpe>,
        pre: PreTokenizer,
    },
    /// `llama`: SentencePiece pieces with scores.
    Spm {
        scores: Vec<f32>,
        byte_token: Box<[Option<u32>; 256]>,
    },
}

/// Token texts that end a turn in common chat formats (llama.cpp's EOG list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// A tokenizer for one model's vocabulary.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    token_id: HashMap<String, u32>,
    /// Tokens matched literally in the input, longest first.
    specials: Vec<u32>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.model {
            Model::Bpe { .. } => "gpt2",
            Model::Spm { .. } => "llama",
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

fn int(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::I8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

/// Typed metadata access that reports the key on a type mismatch.
struct Meta<'a>(&'a Gguf);

impl<'a> Meta<'a> {
    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("{key} is not a string"))),
        }
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(format!("{key} is not a bool"))),
        }
    }
    fn id(&self, key: &str, n_vocab: usize) -> Result<Option<u32>> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let id = int(v).ok_or_else(|| bad(format!("{key} is not an integer")))?;
        // Some converters write -1 for "none".
        if id == -1 {
            return Ok(None);
        }
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_vocab => Ok(Some(id)),
            _ => Err(bad(format!(
                "{key} = {id} is outside the vocabulary (size {n_vocab})"
            ))),
        }
    }
    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(bad(format!("{key} is not an array"))),
        }
    }
    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(bad(format!("{key}[{i}] is not a string"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Parses `<0xNN>`.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata, validating it: token types
    /// and scores must match the vocabulary length, merges must name existing tokens, and
    /// special ids must be inside the vocabulary.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let meta = Meta(gguf);
        let kind = meta
            .str("tokenizer.ggml.model")?
            .ok_or_else(|| bad("tokenizer.ggml.model is missing"))?;
        let tokens: Vec<String> = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing"))?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(bad(format!("vocabulary size {n} is out of range")));
        }
        let is_spm = match kind {
            "gpt2" => false,
            "llama" => true,
            other => return Err(Error::Unsupported(format!("tokenizer model {other:?}"))),
        };

        let types: Vec<TokenType> = match meta.array("tokenizer.ggml.token_type")? {
            Some(a) if a.len() != n => {
                return Err(bad(format!(
                    "token_type has {} entries for {n} tokens",
                    a.len()
                )));
            }
            Some(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    int(v)
                        .and_then(TokenType::from_gguf)
                        .ok_or_else(|| bad(format!("token_type[{i}] = {v:?} is invalid")))
                })
                .collect::<Result<_>>()?,
            // Without types, SentencePiece byte tokens are still recognisable by their text.
            None => tokens
                .iter()
                .map(|t| {
                    if is_spm && byte_token_value(t).is_some() {
                        TokenType::Byte
                    } else {
                        TokenType::Normal
                    }
                })
                .collect(),
        };
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TokenType::Byte && byte_token_value(t).is_none() {
                return Err(bad(format!(
                    "byte token {i} {t:?} is not of the form <0xNN>"
                )));
            }
        }

        // Later duplicates win, as in llama.cpp.
        let token_id: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();

        let model = if is_spm {
            let scores = match meta.array("tokenizer.ggml.scores")? {
                Some(a) if a.len() != n => {
                    return Err(bad(format!(
                        "scores has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                Some(a) => a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match *v {
                        Value::F32(x) => Ok(x),
                        Value::F64(x) => Ok(x as f32),
                        _ => Err(bad(format!("scores[{i}] is not a float"))),
                    })
                    .collect::<Result<_>>()?,
                None => vec![0.0; n],
            };
            let mut byte_token = Box::new([None; 256]);
            for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
                if let (TokenType::Byte, Some(b)) = (ty, byte_token_value(t)) {
                    byte_token[usize::from(b)].get_or_insert(i as u32);
                }
            }
            // Vocabularies without byte tokens fall back to one-character tokens.
            for (b, slot) in byte_token.iter_mut().enumerate().take(128) {
                if slot.is_none() {
                    *slot = token_id
                        .get(char::from(b as u8).encode_utf8(&mut [0; 4]) as &str)
                        .copied();
                }
            }
            Model::Spm { scores, byte_token }
        } else {
            let merges = meta
                .strings("tokenizer.ggml.merges")?
                .ok_or_else(|| bad("tokenizer.ggml.merges is missing"))?;
            let pre_name = meta.str("tokenizer.ggml.pre")?.unwrap_or("default");
            let pre = PreTokenizer::from_name(pre_name)
                .ok_or_else(|| Error::Unsupported(format!("pre-tokenizer {pre_name:?}")))?;
            Model::Bpe {
                bpe: Box::new(bpe::Bpe::new(&merges, &token_id)?),
                pre,
            }
        };

        // SentencePiece models conventionally use 1/2/0 when the ids are not written.
        let default = |id: u32| (is_spm && (id as usize) < n).then_some(id);
        let bos = meta.id("tokenizer.ggml.bos_token_id", n)?.or(default(1));
        let eos = meta.id("tokenizer.ggml.eos_token_id", n)?.or(default(2));
        let unk = meta
            .id("tokenizer.ggml.unknown_token_id", n)?
            .or(default(0));
        let pad = meta.id("tokenizer.ggml.padding_token_id", n)?;
        let mut eog: Vec<u32> = Vec::new();
        eog.extend(eos);
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eog.extend(meta.id(key, n)?);
        }
        for text in EOG_TEXTS {
            if let Some(&id) = token_id.get(*text)
                && matches!(
                    types[id as usize],
                    TokenType::Control | TokenType::UserDefined
                )
            {
                eog.push(id);
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let tok = Self {
            model,
            add_bos: meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(is_spm),
            add_eos: meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: meta
                .bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(is_spm),
            tokens,
            types,
            token_id,
            specials,
            eog,
            bos,
            eos,
            unk,
            pad,
        };
        tracing::debug!(?tok, "tokenizer loaded");
        Ok(tok)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    /// Whether callers should prepend [`Tokenizer::bos_id`] to a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    /// Whether callers should append [`Tokenizer::eos_id`] to a prompt.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }
    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    /// Unknown-token placeholder.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    /// Padding token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Whether generation should stop at `id` (EOS, or an end-of-turn token such as
    /// `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// All end-of-generation tokens, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// The token's text as stored in the vocabulary (`Ġ`/`▁` spellings included).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    /// The token's kind.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// The id of a token given its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_id.get(text).copied()
    }

    /// The bytes a token stands for: byte-level mapping undone, `▁` turned into a space,
    /// `<0xNN>` turned into its byte; control, user-defined and unknown tokens give their
    /// literal text. `None` for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        let i = id as usize;
        let text = self.tokens.get(i)?;
        let ty = self.types[i];
        Some(match (ty, &self.model) {
            (TokenType::Byte, _) => match byte_token_value(text) {
                Some(b) => Cow::Owned(vec![b]),
                None => Cow::Borrowed(text.as_bytes()),
            },
            (TokenType::Normal, Model::Bpe { bpe, .. }) => {
                let mut out = Vec::with_capacity(text.len());
                bpe.bytes.decode_into(text, &mut out);
                Cow::Owned(out)
            }
            (TokenType::Normal, Model::Spm { .. }) if text.contains(spm::SPACE) => {
                Cow::Owned(text.replace(spm::SPACE, " ").into_bytes())
            }
            _ => Cow::Borrowed(text.as_bytes()),
        })
    }

    /// Appends the bytes `decode` emits for one token and returns whether the token counts
    /// (a valid id that is not skipped). `first` is whether no token has counted yet: the
    /// space SentencePiece encoding adds in front is dropped there.
    fn piece_into(&self, id: u32, skip_special: bool, first: bool, out: &mut Vec<u8>) -> bool {
        let Some(ty) = self.token_type(id) else {
            return false;
        };
        if skip_special && ty.is_special() {
            return false;
        }
        let Some(bytes) = self.token_bytes(id) else {
            return false;
        };
        let strip = first && self.add_space_prefix && matches!(self.model, Model::Spm { .. });
        let bytes: &[u8] = if strip {
            bytes.strip_prefix(b" ").unwrap_or(&bytes)
        } else {
            &bytes
        };
        out.extend_from_slice(bytes);
        true
    }

    /// Checks that every id is in the vocabulary (`InvalidArgument` naming the first that
    /// is not): for ids that come from a caller rather than from this tokenizer.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.vocab_size();
        match ids.iter().find(|&&t| t as usize >= vocab) {
            Some(bad) => Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// Token ids back to text. Invalid UTF-8 becomes U+FFFD; ids outside the vocabulary
    /// are ignored. `skip_special` leaves out control, unknown and unused tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out = Vec::new();
        let mut first = true;
        for &id in ids {
            if self.piece_into(id, skip_special, first, &mut out) {
                first = false;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Text to token ids. With `parse_special`, control tokens written literally in the
    /// text become their ids; user-defined tokens always do. BOS/EOS are never added (see
    /// [`Tokenizer::add_bos`]).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Frag::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Frag::Text(s) => {
                    self.encode_text(s, prev_special, &mut out);
                    prev_special = false;
                }
            }
        }
        Ok(out)
    }

    fn encode_text(&self, text: &str, prev_special: bool, out: &mut Vec<u32>) {
        match &self.model {
            Model::Bpe { bpe, pre, .. } => {
                for word in pre.split(text) {
                    if pre.ignore_merges
                        && let Some(id) = self.whole_word_token(word)
                    {
                        out.push(id);
                        continue;
                    }
                    bpe.encode_word(word.as_bytes(), out);
                }
            }
            Model::Spm { scores, byte_token } => {
                let mut s = String::with_capacity(text.len() + 3);
                // llama.cpp adds the prefix at the start and after every special token.
                if self.add_space_prefix && prev_special {
                    s.push(spm::SPACE);
                }
                s.extend(text.chars().map(|c| if c == ' ' { spm::SPACE } else { c }));
                spm::encode(&s, &self.token_id, scores, byte_token, self.unk, out);
            }
        }
    }

    /// The token whose byte-level text is exactly `word`, if any.
    fn whole_word_token(&self, word: &str) -> Option<u32> {
        let mapped: String = word.bytes().map(bpe::byte_to_char).collect();
        self.token_id.get(&mapped).copied()
    }

    /// Cuts out literal special tokens, longest first (llama.cpp's `tokenizer_st_partition`).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Frag<'t>> {
        let mut frags = if text.is_empty() {
            Vec::new()
        } else {
            vec![Frag::Text(text)]
        };
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Frag::Text(s) if s.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Text(mut s) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = s.find(needle) {
                    if at > 0 {
                        next.push(Frag::Text(&s[..at]));
                    }
                    next.push(Frag::Token(id));
                    s = &s[at + needle.len()..];
                }
                if !s.is_empty() {
                    next.push(Frag::Text(s));
                }
            }
            frags = next;
        }
        frags
    }
}

/// A piece of the input: literal text, or a special token found in it.
#[derive(Debug, Clone, Copy)]
enum Frag<'t> {
    Text(&'t str),
    Token(u32),
}

/// Incremental detokenizer for streaming: yields only complete UTF-8 text and holds back
/// the start of a multi-byte character split across tokens.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    skip_special: bool,
    first: bool,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new(true)
    }
}

impl StreamDecoder {
    /// A decoder that, like [`Tokenizer::decode`], leaves special tokens out if asked.
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
            first: true,
        }
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if tok.piece_into(id, self.skip_special, self.first, &mut self.pending) {
            self.first = false;
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Invalid bytes: replace them as `from_utf8_lossy` would.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // A character cut short at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Flushes what is held back, lossily.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.first = true;
        out
    }
}
