//! Hidden states on the wire: the codecs peers use to pass activations along a chain of
//! span servers.
//!
//! | codec | bytes per value | exact? | layout |
//! |---|---|---|---|
//! | [`Codec::F32`] | 4 | yes | little-endian `f32` |
//! | [`Codec::F16`] | 2 | ~3 decimal digits | little-endian IEEE half (round to nearest even) |
//! | [`Codec::Q8_0`] | 34/32 | 8-bit, per 32 values | llama.cpp's `block_q8_0`: `f16` scale, 32 × `i8` (tail padded) |
//! | [`Codec::Blockwise8`] | ~1 + 1 KiB | 8-bit dynamic code, per 4096 values | Hivemind's `BLOCKWISE_8BIT` buffer, byte for byte |
//!
//! Decoding never trusts the peer: lengths must match what the caller expects exactly and
//! every decoded value must be finite, else [`CodecError`].
//!
//! ```
//! use kwaainet_core::codec::Codec;
//! let x = [0.5f32, -1.25, 3.0];
//! let wire = Codec::F16.encode(&x);
//! assert_eq!(wire.len(), 6);
//! assert_eq!(Codec::F16.decode(&wire, 3).unwrap(), x);
//! ```

mod blockwise8;

pub use blockwise8::{BLOCKWISE8_BLOCK, DYNAMIC_CODE};

use crate::kernels::{self, QK};

/// How a tensor of `f32` values is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Lossless.
    F32,
    /// IEEE half precision.
    F16,
    /// 8-bit, llama.cpp's Q8_0 blocks (what distributed-llama sends).
    Q8_0,
    /// 8-bit, Hivemind's BLOCKWISE_8BIT (bitsandbytes' signed dynamic code, blocks of 4096).
    Blockwise8,
}

/// At or above this many values, [`Codec::auto`] picks [`Codec::Blockwise8`] (Hivemind's
/// size-adaptive threshold): its 1 KiB code table is then under 2 % of the buffer.
pub const AUTO_BLOCKWISE8_MIN: usize = 1 << 16;

/// Why a buffer from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The buffer's size is not what the expected number of values needs.
    #[error("{codec}: {got} bytes for {values} values (expected {expected})")]
    Length {
        /// The codec.
        codec: &'static str,
        /// Values expected.
        values: usize,
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The buffer's own header is inconsistent (Blockwise8's counts).
    #[error("{codec}: {reason}")]
    Malformed {
        /// The codec.
        codec: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A decoded value is NaN or infinite (a scale or code entry that is).
    #[error("{codec}: value {index} is not finite")]
    NonFinite {
        /// The codec.
        codec: &'static str,
        /// Index of the first such value.
        index: usize,
    },
}

impl Codec {
    /// Every codec, lossless first.
    pub const ALL: [Codec; 4] = [Codec::F32, Codec::F16, Codec::Q8_0, Codec::Blockwise8];

    /// The codec's name on the wire and in the CLI (`f32`, `f16`, `q8_0`, `blockwise8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Blockwise8 => "blockwise8",
        }
    }

    /// The codec named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The codec chosen for `n` values when the client lets the size decide: f16 for the
    /// small tensors of decoding (a few hidden vectors), blockwise 8-bit for large ones.
    pub fn auto(n: usize) -> Self {
        if n >= AUTO_BLOCKWISE8_MIN {
            Self::Blockwise8
        } else {
            Self::F16
        }
    }

    /// The encoded size of `n` values.
    pub fn encoded_len(self, n: usize) -> usize {
        match self {
            Self::F32 => n * 4,
            Self::F16 => n * 2,
            Self::Q8_0 => n.div_ceil(QK) * Q8_0_BLOCK_BYTES,
            Self::Blockwise8 => blockwise8::encoded_len(n),
        }
    }

    /// Encodes `values`.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Self::Q8_0 => encode_q8_0(values),
            Self::Blockwise8 => blockwise8::encode(values),
        }
    }

    /// Decodes a buffer that must hold exactly `n` values.
    pub fn decode(self, bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
        let name = self.name();
        if self != Self::Blockwise8 && bytes.len() != self.encoded_len(n) {
            return Err(CodecError::Length {
                codec: name,
                values: n,
                expected: self.encoded_len(n),
                got: bytes.len(),
            });
        }
        let out = match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Self::Q8_0 => decode_q8_0(bytes, n),
            Self::Blockwise8 => blockwise8::decode(bytes, n)?,
        };
        match out.iter().position(|v: &f32| !v.is_finite()) {
            Some(index) => Err(CodecError::NonFinite { codec: name, index }),
            None => Ok(out),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `f16` scale + 32 `i8`, as llama.cpp's `block_q8_0`.
const Q8_0_BLOCK_BYTES: usize = 2 + QK;

/// llama.cpp's reference Q8_0 quantizer (the engine's own activation quantizer, which is
/// bit-exact with it); a last partial block is padded with zeros.
fn encode_q8_0(values: &[f32]) -> Vec<u8> {
    let mut padded;
    let full = if values.len().is_multiple_of(QK) {
        values
    } else {
        padded = values.to_vec();
        padded.resize(values.len().next_multiple_of(QK), 0.0);
        &padded
    };
    let mut out = Vec::with_capacity(full.len() / QK * Q8_0_BLOCK_BYTES);
    for b in kernels::quantize_q8(full, false) {
        out.extend_from_slice(&half::f16::from_f32(b.d).to_le_bytes());
        out.extend(b.qs.iter().map(|&q| q.to_le_bytes()[0]));
    }
    out
}

fn decode_q8_0(bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n.next_multiple_of(QK));
    for b in bytes.chunks_exact(Q8_0_BLOCK_BYTES) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        out.extend(
            b[2..]
                .iter()
                .map(|&q| f32::from(i8::from_le_bytes([q])) * d),
        );
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic values of hidden-state scale (no RNG dependency).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                // A few outliers, as real activations have.
                if i % 97 == 0 { u * 40.0 } else { u * 2.0 }
            })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_name(c.name()), Some(c));
        }
        assert_eq!(Codec::from_name("f64"), None);
        assert_eq!(Codec::auto(576), Codec::F16);
        assert_eq!(Codec::auto(1 << 20), Codec::Blockwise8);
    }

    #[test]
    fn each_codec_round_trips_within_its_precision() {
        for n in [1, 31, 32, 33, 576, 4095, 4096, 4097, 3 * 576 * 7] {
            let x = values(n, n as u32);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for c in Codec::ALL {
                let wire = c.encode(&x);
                assert_eq!(wire.len(), c.encoded_len(n), "{c} n={n}");
                let y = c.decode(&wire, n).unwrap();
                assert_eq!(y.len(), n);
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let bound = match c {
                    Codec::F32 => 0.0,
                    // Half precision: 2^-11 relative.
                    Codec::F16 => amax / 2048.0,
                    // Half a step of amax/127 per block, plus the f16 rounding of the scale.
                    Codec::Q8_0 => amax / 127.0,
                    // The dynamic code's widest gap near ±1 is ~0.07 of the block's absmax.
                    Codec::Blockwise8 => amax * 0.04,
                };
                assert!(worst <= bound, "{c} n={n}: error {worst} > {bound}");
            }
        }
    }

    #[test]
    fn q8_0_is_llama_cpp_block_layout() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let wire = Codec::Q8_0.encode(&x);
        assert_eq!(wire.len(), 34);
        // d = 16/127 as f16, then round(x * 127/16).
        assert_eq!(wire[..2], half::f16::from_f32(16.0 / 127.0).to_le_bytes());
        assert_eq!(wire[2] as i8, -127);
        assert_eq!(wire[2 + 16] as i8, 0);
        assert_eq!(wire[2 + 31] as i8, 119); // 15 * 127/16 = 119.06
    }

    #[test]
    fn hostile_buffers_are_refused() {
        let x = values(100, 7);
        for c in Codec::ALL {
            let wire = c.encode(&x);
            // A byte short, a byte long, a count that needs another q8_0 block.
            assert!(c.decode(&wire[..wire.len() - 1], 100).is_err(), "{c}");
            let mut long = wire.clone();
            long.push(0);
            assert!(c.decode(&long, 100).is_err(), "{c}");
            assert!(c.decode(&wire, 100 + 32).is_err(), "{c}");
            assert!(c.decode(&[], 100).is_err(), "{c}");
        }
        // NaN and infinity.
        let nan = Codec::F32.encode(&[1.0, f32::NAN]);
        assert_eq!(
            Codec::F32.decode(&nan, 2),
            Err(CodecError::NonFinite {
                codec: "f32",
                index: 1
            })
        );
        let inf = [0u8, 0x7c]; // f16 +inf
        assert!(matches!(
            Codec::F16.decode(&inf, 1),
            Err(CodecError::NonFinite { .. })
        ));
        let mut q = Codec::Q8_0.encode(&[1.0; 32]);
        q[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        assert!(Codec::Q8_0.decode(&q, 32).is_err());
    }

    #[test]
    fn sizes_per_value() {
        let n = 576 * 16;
        assert_eq!(Codec::F32.encoded_len(n), n * 4);
        assert_eq!(Codec::F16.encoded_len(n), n * 2);
        assert_eq!(Codec::Q8_0.encoded_len(n), n / 32 * 34);
        // Blockwise8: header, one absmax per 4096 values, the code, a byte per value.
        assert_eq!(Codec::Blockwise8.encoded_len(n), 16 + 3 * 4 + 1024 + n);
    }
}
