//! `blockwise8` against Hivemind itself: for each input in
//! `tests/data/blockwise8-hivemind.json` our encoder writes exactly the buffer Hivemind's
//! `serialize_torch_tensor(x, BLOCKWISE_8BIT)` wrote (bitsandbytes' CPU quantizer), and our
//! decoder reads back exactly the values Hivemind's `deserialize_torch_tensor` gave. The
//! vectors were made by `tests/data/blockwise8_vectors.py` (how to rerun it is written there).
#![allow(clippy::unwrap_used)]

use kwaainet_core::codec::{Codec, DYNAMIC_CODE};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn f32s(s: &str) -> Vec<f32> {
    hex(s)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/blockwise8-hivemind.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_code_is_bitsandbytes_own() {
    let v = vectors();
    let code = f32s(v["code"].as_str().unwrap());
    assert_eq!(code.len(), 256);
    for (i, (a, b)) in code.iter().zip(DYNAMIC_CODE.iter()).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "entry {i}: {a} vs {b}");
    }
}

#[test]
fn buffers_are_hiveminds_byte_for_byte() {
    let v = vectors();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let n = usize::try_from(c["n"].as_u64().unwrap()).unwrap();
        let x = f32s(c["input"].as_str().unwrap());
        assert_eq!(x.len(), n, "{name}");
        let want = hex(c["buffer"].as_str().unwrap());
        let got = Codec::Blockwise8.encode(&x);
        assert_eq!(got.len(), want.len(), "{name}: length");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{name}: first difference at byte {i}: ours {} Hivemind's {}",
                got[i], want[i]
            );
        }
        // Hivemind's own decoding of its buffer, value for value.
        let decoded = Codec::Blockwise8.decode(&want, n).unwrap();
        let theirs = f32s(c["decoded"].as_str().unwrap());
        for (i, (a, b)) in decoded.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}: value {i}: {a} vs {b}");
        }
    }
}

#[test]
fn about_four_times_smaller_than_f32_for_prefill_sized_tensors() {
    // 64 prompt tokens of a 576-wide hidden state.
    let n = 64 * 576;
    let ratio = Codec::F32.encoded_len(n) as f64 / Codec::Blockwise8.encoded_len(n) as f64;
    assert!(ratio > 3.8, "{ratio}");
}
