//! Tokenizer and chat-template tests: llama.cpp's reference ids on the real model, round
//! trips, streaming, a hand-made SentencePiece vocabulary and malformed metadata.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use common::{gguf, strs};
use kwaainet_core::gguf::{Gguf, Value};
use kwaainet_core::{ChatMessage, ChatTemplate, Error, StreamDecoder, TokenType, Tokenizer};

/// The real model's metadata, or `None` (with a skip line) when it is not downloaded.
fn model() -> Option<&'static Gguf> {
    static META: OnceLock<Option<Gguf>> = OnceLock::new();
    let meta = META.get_or_init(|| {
        let path = common::model_path()?;
        Some(common::read_metadata(&path).unwrap())
    });
    if meta.is_none() {
        eprintln!("skipping: SmolLM2-135M-Instruct.Q4_1.gguf not in ~/.cache/kwaainet/models");
    }
    meta.as_ref()
}

fn smollm() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| model().map(|g| Tokenizer::from_gguf(g).unwrap()))
        .as_ref()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn reference_prompt_ids() {
    let Some(tok) = smollm() else { return };
    for case in common::reference()["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            ids(&case["prompt_ids"]),
            "case {}",
            case["name"]
        );
    }
}

#[test]
fn reference_chat_template() {
    let Some(g) = model() else { return };
    let tmpl = ChatTemplate::from_gguf(g).unwrap().unwrap();
    let mut checked = 0;
    for case in common::reference()["cases"].as_array().unwrap() {
        let Some(msgs) = case["messages"].as_array() else {
            continue;
        };
        let msgs: Vec<ChatMessage> = msgs
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tmpl.render(&msgs, true).unwrap(),
            case["prompt"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn reference_output_text() {
    let Some(tok) = smollm() else { return };
    for case in common::reference()["cases"].as_array().unwrap() {
        let out = ids(&case["output_ids"]);
        let want = case["output_text"].as_str().unwrap();
        assert_eq!(tok.decode(&out, true), want, "case {}", case["name"]);
        let mut stream = StreamDecoder::new(true);
        let streamed: String = out
            .iter()
            .map(|&id| stream.push(tok, id))
            .collect::<String>()
            + &stream.finish();
        assert_eq!(streamed, want);
    }
}

#[test]
fn smollm_vocabulary_facts() {
    let Some(tok) = smollm() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1) && !tok.is_eog(198));
    assert_eq!(tok.token_type(1), Some(TokenType::Control));
    assert_eq!(tok.token_bytes(198).as_deref(), Some(&b"\n"[..]));
    assert_eq!(tok.token_bytes(u32::MAX), None);
    assert_eq!(tok.decode(&[1, 4093, 198], false), "<|im_start|>user\n");
    assert_eq!(tok.decode(&[1, 4093, 198], true), "user\n");
}

const SAMPLES: &[&str] = &[
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "multiple     spaces\tand\ttabs\n\nnew\r\nlines\n",
    "Ünïcödé àccents: café, naïve, Øresund, Straße",
    "中文字符和日本語のテキスト, 한국어",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 and flags 🇫🇷",
    "digits 1234567890 and ٣٤٥ and ½ Ⅻ",
    "it's we're they've I'm you'll he'd I'D",
    "code: fn main() { println!(\"{}\", 1 + 2); }",
    "\u{0378}\u{FFFF}\u{10FFFF} unassigned and noncharacters",
    "\u{301}combining first, e\u{301}, zero\u{200B}width",
    "<|im_start|> looks special <|im_end|>",
];

#[test]
fn round_trip() {
    let Some(tok) = smollm() else { return };
    for s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false), *s, "{s:?} -> {ids:?}");
    }
    // Pseudo-random text over many scripts and whitespace kinds.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let pool: Vec<char> = "aZ 0\t\n\r'sé中😀٣\u{2028}\u{a0}\u{3000}!?-_"
        .chars()
        .collect();
    for _ in 0..200 {
        let mut s = String::new();
        for _ in 0..(state % 60) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // SmolLM2's vocabulary cannot spell the lead bytes of planes 4-11 (0xF1, 0xF2);
            // stay below them.
            let c = if state.is_multiple_of(5) {
                char::from_u32((state >> 8) as u32 % 0x4_0000)
                    .filter(|c| !c.is_control())
                    .unwrap_or('x')
            } else {
                pool[(state >> 8) as usize % pool.len()]
            };
            s.push(c);
        }
        let ids = tok.encode(&s, false).unwrap();
        assert_eq!(tok.decode(&ids, false), s);
    }
}

/// Extra strings whose ids were cross-checked against Hugging Face `tokenizers` 0.23 built
/// from the same vocabulary and merges (Digits(individual) + ByteLevel), which agrees with
/// llama.cpp's "smollm" split except on unassigned code points.
#[test]
fn cross_checked_ids() {
    let Some(tok) = smollm() else { return };
    let cases: &[(&str, &[u32])] = &[
        (
            "multiple     spaces\tand\ttabs\n\nnew\r\nlines\n",
            &[
                30404, 289, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 201, 198, 5110, 198,
            ],
        ),
        (
            "digits 1234567890 and ٣٤٥ and ½ Ⅻ",
            &[
                37307, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 284, 216, 164, 113, 164, 114,
                164, 115, 284, 216, 16738, 216, 173, 223, 121,
            ],
        ),
        (
            "it's we're they've I'm you'll he'd I'D",
            &[
                269, 506, 392, 2316, 502, 3543, 339, 5248, 346, 3060, 384, 6737, 339, 23, 52,
            ],
        ),
        (
            "emoji 😀👍🏽 👨‍👩‍👧‍👦 and flags 🇫🇷",
            &[
                391, 33777, 40303, 218, 10813, 235, 231, 10813, 233, 138, 15107, 235, 118, 321,
                231, 10813, 235, 119, 321, 231, 10813, 235, 117, 321, 231, 10813, 235, 116, 284,
                13198, 15107, 225, 121, 10813, 225, 132,
            ],
        ),
        ("x  \n  y\t\t\n", &[104, 256, 3805, 329, 1656, 198]),
        (
            "$100.00 + 5% = ?!",
            &[20, 33, 32, 32, 30, 32, 32, 1232, 216, 37, 21, 446, 9148, 17],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text, true).unwrap(), *want, "{text:?}");
    }
}

#[test]
fn unspellable_bytes_are_dropped() {
    let Some(tok) = smollm() else { return };
    // No token for byte 0x04 or for the lead byte 0xF2 of U+8B667: dropped, never replaced
    // by the "unknown" id (which is `<|endoftext|>` here).
    let ids = tok.encode("a\u{4}b\u{8B667}c", false).unwrap();
    assert!(!ids.contains(&0), "{ids:?}");
    assert!(tok.decode(&ids, false).starts_with("ab"));
}

#[test]
fn parse_special_only_when_asked() {
    let Some(tok) = smollm() else { return };
    let text = "<|im_start|>user";
    let parsed = tok.encode(text, true).unwrap();
    assert_eq!(parsed, [1, 4093]);
    let plain = tok.encode(text, false).unwrap();
    assert!(!plain.contains(&1), "{plain:?}");
    assert_eq!(tok.decode(&plain, false), text);
    // Adjacent and repeated specials; the longest literal wins.
    assert_eq!(
        tok.encode("<|im_end|><|im_end|><|endoftext|>", true)
            .unwrap(),
        [2, 2, 0]
    );
    assert_eq!(tok.encode("", true).unwrap(), Vec::<u32>::new());
}

#[test]
fn stream_decoder_matches_decode() {
    let Some(tok) = smollm() else { return };
    for s in SAMPLES {
        let ids = tok.encode(s, true).unwrap();
        let mut dec = StreamDecoder::new(false);
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(tok, id);
            assert!(
                !piece.contains('\u{FFFD}') || s.contains('\u{FFFD}'),
                "{s:?}"
            );
            out += &piece;
        }
        out += &dec.finish();
        assert_eq!(out, tok.decode(&ids, false));
    }
    // A 4-byte emoji spelled as four byte tokens: nothing until the last one.
    let bytes: Vec<u32> = "😀".bytes().map(|b| byte_token(tok, b)).collect();
    let mut dec = StreamDecoder::default();
    let pieces: Vec<String> = bytes.iter().map(|&id| dec.push(tok, id)).collect();
    assert_eq!(pieces, ["", "", "", "😀"]);
    // A dangling lead byte is flushed lossily; an invalid byte does not stall the stream.
    assert_eq!(dec.push(tok, bytes[0]), "");
    assert_eq!(dec.push(tok, byte_token(tok, b'a')), "\u{FFFD}a");
    assert_eq!(dec.push(tok, bytes[0]), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
    assert_eq!(dec.push(tok, u32::MAX), "");
}

/// The token of a single byte in a byte-level vocabulary.
fn byte_token(tok: &Tokenizer, b: u8) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&id| {
            tok.token_bytes(id).as_deref() == Some(&[b][..])
                && tok.token_type(id) == Some(TokenType::Normal)
        })
        .unwrap()
}

#[test]
fn long_input_is_fast() {
    let Some(tok) = smollm() else { return };
    let unit = "The quick brown fox jumps over the lazy dog 1234. Ünïcödé 中文 😀\n\t  ";
    let text: String = unit.repeat(100_000 / unit.len() + 1);
    let t = Instant::now();
    let ids = tok.encode(&text, true).unwrap();
    let normal = t.elapsed();
    // Worst cases for a pre-tokenizer and BPE: one huge word, one huge whitespace run.
    let word = "a".repeat(100_000);
    let spaces = " ".repeat(100_000);
    let t = Instant::now();
    let w = tok.encode(&word, true).unwrap();
    let s = tok.encode(&spaces, true).unwrap();
    let degenerate = t.elapsed();
    println!(
        "encode 100 KB: text {normal:?} ({} tokens), one word + one space run {degenerate:?}",
        ids.len()
    );
    assert_eq!(tok.decode(&ids, false), text);
    assert_eq!(tok.decode(&w, false), word);
    assert_eq!(tok.decode(&s, false), spaces);
    let limit = if cfg!(debug_assertions) { 20.0 } else { 1.0 };
    assert!(normal.as_secs_f64() < limit && degenerate.as_secs_f64() < limit);
}

#[test]
fn decode_never_panics() {
    let Some(tok) = smollm() else { return };
    let ids: Vec<u32> = (0..2000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 60_000)
        .chain([u32::MAX, 49152])
        .collect();
    let _ = tok.decode(&ids, false);
    let _ = tok.decode(&ids, true);
    let mut dec = StreamDecoder::new(false);
    for &id in &ids {
        let _ = dec.push(tok, id);
    }
}

/// A SentencePiece vocabulary: `<unk> <s> </s>`, 256 byte tokens, then pieces.
fn spm_metadata() -> Vec<(&'static str, Value)> {
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("▁he", -4.0),
        ("ll", -3.5),
        ("llo", -4.5),
        ("▁hello", -5.0),
        ("▁w", -3.0),
        ("or", -3.0),
        ("▁wor", -4.0),
        ("ld", -3.0),
        ("▁world", -5.0),
    ];
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (p, s) in pieces {
        tokens.push(p.to_owned());
        types.push(1);
        scores.push(s);
    }
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ]
}

#[test]
fn sentencepiece_vocabulary() {
    let tok = Tokenizer::from_gguf(&gguf(spm_metadata())).unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert!(tok.add_bos());
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        [id("▁hello"), id("▁world")]
    );
    // `é` is not a piece: it falls back to its two UTF-8 bytes.
    let ids = tok.encode("hé", false).unwrap();
    assert_eq!(ids, [id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    // The space prefix comes back after a special token; decode drops the first one only.
    let ids = tok.encode("hello</s>world", true).unwrap();
    assert_eq!(ids, [id("▁hello"), 2, id("▁world")]);
    assert_eq!(tok.decode(&ids, true), "hello world");
    assert_eq!(tok.decode(&ids, false), "hello</s> world");
    for s in ["hello world", "  two  spaces ", "héllo wörld 😀", "", "\n"] {
        assert_eq!(
            tok.decode(&tok.encode(s, false).unwrap(), false),
            s,
            "{s:?}"
        );
    }
    let mut dec = StreamDecoder::default();
    let streamed: String = tok
        .encode("😀 hello", false)
        .unwrap()
        .iter()
        .map(|&i| dec.push(&tok, i))
        .collect();
    assert_eq!(streamed + &dec.finish(), "😀 hello");
    assert!(tok.is_eog(2));
}

fn bpe_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            strs(&["<|endoftext|>", "a", "b", "ab", "Ġ"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![
                Value::I32(3),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
            ]),
        ),
        ("tokenizer.ggml.merges", strs(&["a b"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ]
}

fn with(mut meta: Vec<(&'static str, Value)>, key: &'static str, v: Option<Value>) -> Gguf {
    meta.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        meta.push((key, v));
    }
    gguf(meta)
}

#[track_caller]
fn assert_tokenizer_error(g: &Gguf) {
    match Tokenizer::from_gguf(g) {
        Err(Error::Tokenizer(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected Error::Tokenizer, got {other:?}"),
    }
}

#[test]
fn tiny_bpe_vocabulary() {
    let tok = Tokenizer::from_gguf(&gguf(bpe_metadata())).unwrap();
    assert_eq!(tok.encode("ab a", false).unwrap(), [3, 4, 1]);
    // Bytes without a token are dropped rather than guessed (there is no unknown token).
    assert_eq!(tok.encode("abc", false).unwrap(), [3]);
    assert!(tok.is_eog(0));
    assert!(!tok.add_bos());
}

#[test]
fn malformed_metadata_is_an_error() {
    let bpe = bpe_metadata;
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.tokens", None));
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.tokens", Some(strs(&[]))));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.tokens",
        Some(Value::Array(vec![Value::U32(1)])),
    ));
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.model", None));
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.merges", None));
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.merges", Some(strs(&["a c"]))));
    assert_tokenizer_error(&with(bpe(), "tokenizer.ggml.merges", Some(strs(&["ab"]))));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.token_type",
        Some(Value::Array(vec![Value::I32(1)])),
    ));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.token_type",
        Some(Value::Array(vec![Value::I32(9); 5])),
    ));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.eos_token_id",
        Some(Value::U32(5)),
    ));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.bos_token_id",
        Some(Value::I32(-7)),
    ));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.bos_token_id",
        Some(Value::String("1".into())),
    ));
    assert_tokenizer_error(&with(
        bpe(),
        "tokenizer.ggml.add_bos_token",
        Some(Value::U32(1)),
    ));
    assert_tokenizer_error(&with(
        spm_metadata(),
        "tokenizer.ggml.scores",
        Some(Value::Array(vec![Value::F32(0.0)])),
    ));
    let mut bad_byte = spm_metadata();
    bad_byte.retain(|(k, _)| *k != "tokenizer.ggml.tokens");
    let mut toks: Vec<String> = (0..3 + 256 + 18).map(|i| format!("t{i}")).collect();
    toks[3] = "<0xZZ>".into();
    bad_byte.push((
        "tokenizer.ggml.tokens",
        Value::Array(toks.into_iter().map(Value::String).collect()),
    ));
    assert_tokenizer_error(&gguf(bad_byte));
    // Formats we do not implement are reported as such, not as corrupt.
    let other = with(
        bpe(),
        "tokenizer.ggml.model",
        Some(Value::String("bert".into())),
    );
    assert!(matches!(
        Tokenizer::from_gguf(&other),
        Err(Error::Unsupported(_))
    ));
    let other = with(
        bpe(),
        "tokenizer.ggml.pre",
        Some(Value::String("no-such-pre".into())),
    );
    assert!(matches!(
        Tokenizer::from_gguf(&other),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn chat_template_from_metadata() {
    let meta = vec![
        ("tokenizer.ggml.tokens", strs(&["<s>", "</s>"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        (
            "tokenizer.chat_template",
            Value::String("{{ bos_token }}{% for m in messages %}\n  {{- m.role }}: {{ m.content }}\n{% endfor %}{{ eos_token }}".into()),
        ),
    ];
    let t = ChatTemplate::from_gguf(&gguf(meta)).unwrap().unwrap();
    let out = t
        .render(
            &[
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "yo"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(out, "<s>user: hi\nassistant: yo\n</s>");
    assert!(ChatTemplate::from_gguf(&gguf(vec![])).unwrap().is_none());
    let bad = gguf(vec![("tokenizer.chat_template", Value::U32(3))]);
    assert!(matches!(
        ChatTemplate::from_gguf(&bad),
        Err(Error::Template(_))
    ));
}

#[test]
fn prompt_ids_of_every_form() {
    use kwaainet_core::chat::{Prompt, prompt_ids};
    let Some(tok) = smollm() else { return };
    let tmpl = ChatTemplate::from_gguf(model().unwrap()).unwrap();
    let text = "The capital of France is";
    let from_text = prompt_ids(tok, tmpl.as_ref(), Prompt::Text(text)).unwrap();
    assert_eq!(
        from_text,
        tok.encode(text, true).unwrap(),
        "SmolLM2 adds no BOS"
    );
    // The caller's own ids are taken as they are.
    let from_ids = prompt_ids(tok, tmpl.as_ref(), Prompt::Tokens(&from_text)).unwrap();
    assert_eq!(from_ids, from_text);
    let chat = [ChatMessage::new("user", "Hi")];
    let from_chat = prompt_ids(tok, tmpl.as_ref(), Prompt::Chat(&chat)).unwrap();
    let rendered = tmpl.as_ref().unwrap().render(&chat, true).unwrap();
    assert_eq!(from_chat, tok.encode(&rendered, true).unwrap());
    // Nothing to continue, or an id the model does not have: the caller's error.
    for bad in [
        Prompt::Text(""),
        Prompt::Tokens(&[]),
        Prompt::Tokens(&[1, 49_152]),
    ] {
        match prompt_ids(tok, tmpl.as_ref(), bad) {
            Err(Error::InvalidArgument(m)) => {
                assert!(
                    m.contains("empty") || m.contains("outside the vocabulary of 49152"),
                    "{m}"
                )
            }
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}
