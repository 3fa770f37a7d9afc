//! Hivemind's `BLOCKWISE_8BIT` compression, byte for byte.
//!
//! Values go in blocks of [`BLOCKWISE8_BLOCK`]; each block is scaled by its largest
//! magnitude (`absmax`) and each value stored as the index of a near entry of bitsandbytes'
//! signed dynamic code ([`DYNAMIC_CODE`], `create_dynamic_map(signed=True)`), chosen as
//! bitsandbytes' CPU quantizer chooses it (a 65,536-slot lookup table). The buffer is
//! Hivemind's:
//!
//! ```text
//! i64 n_absmax | i64 256 | f32 absmax[n_absmax] | f32 code[256] | u8 index[n]   (little-endian)
//! ```
//!
//! A decoder reads the code from the buffer (as Hivemind does), so it accepts any 256-entry
//! code a peer sends; the values must still come out finite.

use super::CodecError;

/// Values per block (Hivemind's `blocksize=4096`).
pub const BLOCKWISE8_BLOCK: usize = 4096;
const CODE_LEN: usize = 256;
const NAME: &str = "blockwise8";

/// bitsandbytes' signed dynamic quantization map: 7 exponent ranges of linearly spaced
/// fractions, both signs, 0 and 1, sorted (its ends are -0.99297 and 1). The bits are
/// bitsandbytes 0.50.2's own (`QuantState.code` of `quantize_blockwise`; computing them
/// again here would depend on torch's float32 `linspace`); `tests/codec.rs` checks them and
/// whole buffers against Hivemind's.
#[rustfmt::skip]
pub const DYNAMIC_CODE: [f32; CODE_LEN] = [
    f32::from_bits(0xbf7e3333), f32::from_bits(0xbf7a999a), f32::from_bits(0xbf770000), f32::from_bits(0xbf736666),
    f32::from_bits(0xbf6fcccd), f32::from_bits(0xbf6c3333), f32::from_bits(0xbf68999a), f32::from_bits(0xbf650000),
    f32::from_bits(0xbf616666), f32::from_bits(0xbf5dcccd), f32::from_bits(0xbf5a3333), f32::from_bits(0xbf56999a),
    f32::from_bits(0xbf530000), f32::from_bits(0xbf4f6666), f32::from_bits(0xbf4bcccd), f32::from_bits(0xbf483333),
    f32::from_bits(0xbf44999a), f32::from_bits(0xbf410000), f32::from_bits(0xbf3d6666), f32::from_bits(0xbf39cccd),
    f32::from_bits(0xbf363334), f32::from_bits(0xbf32999a), f32::from_bits(0xbf2f0000), f32::from_bits(0xbf2b6666),
    f32::from_bits(0xbf27cccd), f32::from_bits(0xbf243334), f32::from_bits(0xbf20999a), f32::from_bits(0xbf1d0000),
    f32::from_bits(0xbf196666), f32::from_bits(0xbf15cccd), f32::from_bits(0xbf123334), f32::from_bits(0xbf0e999a),
    f32::from_bits(0xbf0b0000), f32::from_bits(0xbf076666), f32::from_bits(0xbf03cccc), f32::from_bits(0xbf003333),
    f32::from_bits(0xbef93332), f32::from_bits(0xbef20000), f32::from_bits(0xbeeacccc), f32::from_bits(0xbee3999a),
    f32::from_bits(0xbedc6666), f32::from_bits(0xbed53333), f32::from_bits(0xbece0000), f32::from_bits(0xbec6cccc),
    f32::from_bits(0xbebf999a), f32::from_bits(0xbeb86666), f32::from_bits(0xbeb13333), f32::from_bits(0xbeaa0000),
    f32::from_bits(0xbea2cccc), f32::from_bits(0xbe9b999a), f32::from_bits(0xbe946666), f32::from_bits(0xbe8d3334),
    f32::from_bits(0xbe860000), f32::from_bits(0xbe7d9999), f32::from_bits(0xbe6f3333), f32::from_bits(0xbe60cccd),
    f32::from_bits(0xbe526666), f32::from_bits(0xbe440000), f32::from_bits(0xbe35999a), f32::from_bits(0xbe273333),
    f32::from_bits(0xbe18cccd), f32::from_bits(0xbe0a6666), f32::from_bits(0xbdf80000), f32::from_bits(0xbddb3334),
    f32::from_bits(0xbdc9eb85), f32::from_bits(0xbdc428f7), f32::from_bits(0xbdbe6667), f32::from_bits(0xbdb8a3d7),
    f32::from_bits(0xbdb2e148), f32::from_bits(0xbdad1eb8), f32::from_bits(0xbda75c2a), f32::from_bits(0xbda1999a),
    f32::from_bits(0xbd9bd70a), f32::from_bits(0xbd96147b), f32::from_bits(0xbd9051eb), f32::from_bits(0xbd8a8f5d),
    f32::from_bits(0xbd84cccd), f32::from_bits(0xbd7e147b), f32::from_bits(0xbd728f5d), f32::from_bits(0xbd670a3d),
    f32::from_bits(0xbd5b851f), f32::from_bits(0xbd500000), f32::from_bits(0xbd447ae1), f32::from_bits(0xbd38f5c3),
    f32::from_bits(0xbd2d70a3), f32::from_bits(0xbd21eb85), f32::from_bits(0xbd166667), f32::from_bits(0xbd0ae148),
    f32::from_bits(0xbcfeb852), f32::from_bits(0xbce7ae15), f32::from_bits(0xbcd0a3d7), f32::from_bits(0xbcb9999a),
    f32::from_bits(0xbca28f5d), f32::from_bits(0xbc8b851f), f32::from_bits(0xbc68f5c3), f32::from_bits(0xbc3ae148),
    f32::from_bits(0xbc1f3b64), f32::from_bits(0xbc160418), f32::from_bits(0xbc0ccccd), f32::from_bits(0xbc039581),
    f32::from_bits(0xbbf4bc6a), f32::from_bits(0xbbe24dd3), f32::from_bits(0xbbcfdf3b), f32::from_bits(0xbbbd70a4),
    f32::from_bits(0xbbab020d), f32::from_bits(0xbb989374), f32::from_bits(0xbb8624dd), f32::from_bits(0xbb676c8a),
    f32::from_bits(0xbb428f5c), f32::from_bits(0xbb1db22d), f32::from_bits(0xbaf1a9fc), f32::from_bits(0xbaa7ef9d),
    f32::from_bits(0xba7765ff), f32::from_bits(0xba59e83e), f32::from_bits(0xba3c6a80), f32::from_bits(0xba1eecc1),
    f32::from_bits(0xba016f01), f32::from_bits(0xb9c7e283), f32::from_bits(0xb98ce705), f32::from_bits(0xb923d70b),
    f32::from_bits(0xb8ba1f4b), f32::from_bits(0xb88aefb3), f32::from_bits(0xb8378034), f32::from_bits(0xb7b24206),
    f32::from_bits(0xb70205ff), f32::from_bits(0xb65a1a94), f32::from_bits(0xb513a3b7), f32::from_bits(0x00000000),
    f32::from_bits(0x3513a3b7), f32::from_bits(0x365a1a94), f32::from_bits(0x370205ff), f32::from_bits(0x37b24206),
    f32::from_bits(0x38378034), f32::from_bits(0x388aefb3), f32::from_bits(0x38ba1f4b), f32::from_bits(0x3923d70b),
    f32::from_bits(0x398ce705), f32::from_bits(0x39c7e283), f32::from_bits(0x3a016f01), f32::from_bits(0x3a1eecc1),
    f32::from_bits(0x3a3c6a80), f32::from_bits(0x3a59e83e), f32::from_bits(0x3a7765ff), f32::from_bits(0x3aa7ef9d),
    f32::from_bits(0x3af1a9fc), f32::from_bits(0x3b1db22d), f32::from_bits(0x3b428f5c), f32::from_bits(0x3b676c8a),
    f32::from_bits(0x3b8624dd), f32::from_bits(0x3b989374), f32::from_bits(0x3bab020d), f32::from_bits(0x3bbd70a4),
    f32::from_bits(0x3bcfdf3b), f32::from_bits(0x3be24dd3), f32::from_bits(0x3bf4bc6a), f32::from_bits(0x3c039581),
    f32::from_bits(0x3c0ccccd), f32::from_bits(0x3c160418), f32::from_bits(0x3c1f3b64), f32::from_bits(0x3c3ae148),
    f32::from_bits(0x3c68f5c3), f32::from_bits(0x3c8b851f), f32::from_bits(0x3ca28f5d), f32::from_bits(0x3cb9999a),
    f32::from_bits(0x3cd0a3d7), f32::from_bits(0x3ce7ae15), f32::from_bits(0x3cfeb852), f32::from_bits(0x3d0ae148),
    f32::from_bits(0x3d166667), f32::from_bits(0x3d21eb85), f32::from_bits(0x3d2d70a3), f32::from_bits(0x3d38f5c3),
    f32::from_bits(0x3d447ae1), f32::from_bits(0x3d500000), f32::from_bits(0x3d5b851f), f32::from_bits(0x3d670a3d),
    f32::from_bits(0x3d728f5d), f32::from_bits(0x3d7e147b), f32::from_bits(0x3d84cccd), f32::from_bits(0x3d8a8f5d),
    f32::from_bits(0x3d9051eb), f32::from_bits(0x3d96147b), f32::from_bits(0x3d9bd70a), f32::from_bits(0x3da1999a),
    f32::from_bits(0x3da75c2a), f32::from_bits(0x3dad1eb8), f32::from_bits(0x3db2e148), f32::from_bits(0x3db8a3d7),
    f32::from_bits(0x3dbe6667), f32::from_bits(0x3dc428f7), f32::from_bits(0x3dc9eb85), f32::from_bits(0x3ddb3334),
    f32::from_bits(0x3df80000), f32::from_bits(0x3e0a6666), f32::from_bits(0x3e18cccd), f32::from_bits(0x3e273333),
    f32::from_bits(0x3e35999a), f32::from_bits(0x3e440000), f32::from_bits(0x3e526666), f32::from_bits(0x3e60cccd),
    f32::from_bits(0x3e6f3333), f32::from_bits(0x3e7d9999), f32::from_bits(0x3e860000), f32::from_bits(0x3e8d3334),
    f32::from_bits(0x3e946666), f32::from_bits(0x3e9b999a), f32::from_bits(0x3ea2cccc), f32::from_bits(0x3eaa0000),
    f32::from_bits(0x3eb13333), f32::from_bits(0x3eb86666), f32::from_bits(0x3ebf999a), f32::from_bits(0x3ec6cccc),
    f32::from_bits(0x3ece0000), f32::from_bits(0x3ed53333), f32::from_bits(0x3edc6666), f32::from_bits(0x3ee3999a),
    f32::from_bits(0x3eeacccc), f32::from_bits(0x3ef20000), f32::from_bits(0x3ef93332), f32::from_bits(0x3f003333),
    f32::from_bits(0x3f03cccc), f32::from_bits(0x3f076666), f32::from_bits(0x3f0b0000), f32::from_bits(0x3f0e999a),
    f32::from_bits(0x3f123334), f32::from_bits(0x3f15cccd), f32::from_bits(0x3f196666), f32::from_bits(0x3f1d0000),
    f32::from_bits(0x3f20999a), f32::from_bits(0x3f243334), f32::from_bits(0x3f27cccd), f32::from_bits(0x3f2b6666),
    f32::from_bits(0x3f2f0000), f32::from_bits(0x3f32999a), f32::from_bits(0x3f363334), f32::from_bits(0x3f39cccd),
    f32::from_bits(0x3f3d6666), f32::from_bits(0x3f410000), f32::from_bits(0x3f44999a), f32::from_bits(0x3f483333),
    f32::from_bits(0x3f4bcccd), f32::from_bits(0x3f4f6666), f32::from_bits(0x3f530000), f32::from_bits(0x3f56999a),
    f32::from_bits(0x3f5a3333), f32::from_bits(0x3f5dcccd), f32::from_bits(0x3f616666), f32::from_bits(0x3f650000),
    f32::from_bits(0x3f68999a), f32::from_bits(0x3f6c3333), f32::from_bits(0x3f6fcccd), f32::from_bits(0x3f736666),
    f32::from_bits(0x3f770000), f32::from_bits(0x3f7a999a), f32::from_bits(0x3f7e3333), f32::from_bits(0x3f800000),
];

pub(super) fn encoded_len(n: usize) -> usize {
    16 + n.div_ceil(BLOCKWISE8_BLOCK) * 4 + CODE_LEN * 4 + n
}

/// bitsandbytes' CPU quantizer does not search the code: it looks the index up in a table
/// of [`LUT_SIZE`] evenly spaced values over [-1, 1], each mapped to the code entry whose
/// midpoints bracket it. That is nearest-entry rounding up to the table's step (3e-5),
/// which near 0, where the code's entries are closer than that, is not the nearest entry:
/// for the same bytes we follow the table, not the exact nearest.
const LUT_SIZE: usize = 1 << 16;

fn build_lut(code: &[f32; CODE_LEN]) -> Vec<u8> {
    let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let step_den = (LUT_SIZE - 1) as f32;
    let mut entry = 0usize;
    (0..LUT_SIZE)
        .map(|i| {
            let val = -1.0f32 + (2.0f32 * i as f32) / step_den;
            while entry < CODE_LEN - 1 && mid[entry] < val {
                entry += 1;
            }
            u8::try_from(entry).unwrap_or(u8::MAX)
        })
        .collect()
}

/// The table slot of a normalized value (as bitsandbytes rounds it: clamp, scale, +0.5,
/// truncate).
fn lut_slot(x: f32) -> usize {
    let v = x.clamp(-1.0, 1.0);
    // `as` truncates toward zero and saturates (NaN gives 0), as the C cast does here.
    usize::from(((v + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as u16)
}

fn dynamic_lut() -> &'static [u8] {
    static LUT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| build_lut(&DYNAMIC_CODE))
}

pub(super) fn encode(values: &[f32]) -> Vec<u8> {
    let lut = dynamic_lut();
    let n_blocks = values.len().div_ceil(BLOCKWISE8_BLOCK);
    let mut out = Vec::with_capacity(encoded_len(values.len()));
    out.extend_from_slice(&(n_blocks as i64).to_le_bytes());
    out.extend_from_slice(&(CODE_LEN as i64).to_le_bytes());
    let absmax: Vec<f32> = values
        .chunks(BLOCKWISE8_BLOCK)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    for a in &absmax {
        out.extend_from_slice(&a.to_le_bytes());
    }
    for c in &DYNAMIC_CODE {
        out.extend_from_slice(&c.to_le_bytes());
    }
    for (block, &a) in values.chunks(BLOCKWISE8_BLOCK).zip(&absmax) {
        if a == 0.0 {
            // Every index decodes to 0 then; bitsandbytes writes index 0.
            out.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        // Times the reciprocal, not a division: the last bit matters at the table's edges.
        let inv = 1.0f32 / a;
        out.extend(block.iter().map(|&v| lut[lut_slot(v * inv)]));
    }
    out
}

fn read_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    let malformed = |reason: String| CodecError::Malformed {
        codec: NAME,
        reason,
    };
    let expected = encoded_len(n);
    if bytes.len() != expected {
        return Err(CodecError::Length {
            codec: NAME,
            values: n,
            expected,
            got: bytes.len(),
        });
    }
    let header = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        i64::from_le_bytes(b)
    };
    let (n_absmax, code_len) = (header(0), header(8));
    let blocks = n.div_ceil(BLOCKWISE8_BLOCK);
    if usize::try_from(n_absmax).ok() != Some(blocks)
        || usize::try_from(code_len).ok() != Some(CODE_LEN)
    {
        return Err(malformed(format!(
            "header says {n_absmax} blocks and a {code_len}-entry code; {n} values need {blocks} and {CODE_LEN}"
        )));
    }
    let absmax: Vec<f32> = read_f32s(&bytes[16..16 + blocks * 4]).collect();
    let code_at = 16 + blocks * 4;
    let code: Vec<f32> = read_f32s(&bytes[code_at..code_at + CODE_LEN * 4]).collect();
    let code = &code;
    let indices = &bytes[code_at + CODE_LEN * 4..];
    Ok(indices
        .chunks(BLOCKWISE8_BLOCK)
        .zip(&absmax)
        .flat_map(|(block, &a)| block.iter().map(move |&i| code[usize::from(i)] * a))
        .collect())
}
