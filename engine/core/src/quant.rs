//! GGML tensor storage types: block layouts and reference dequantization.
//!
//! Every layout here is bit-for-bit GGML's (`ggml-common.h` / `ggml-quants.c`), because the
//! bytes come straight out of GGUF files written by llama.cpp. Multi-byte fields are
//! little-endian. The arithmetic follows GGML's reference (scalar) dequantizers in the same
//! order of operations, so results match llama.cpp and the Python `gguf` package exactly.

use std::fmt;

use crate::{Error, Result};

/// Elements per block of the 32-wide "legacy" quantizations (Q4_0, Q4_1, Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the k-quantizations (Q4_K, Q6_K).
pub const QK_K: usize = 256;

/// Tensor storage types this engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// IEEE-754 single precision.
    F32,
    /// IEEE-754 half precision.
    F16,
    /// bfloat16 (the top half of an `f32`).
    BF16,
    /// 32 elements: `f16 d`, 16 bytes of 4-bit quants; `x = (q - 8) * d`.
    Q4_0,
    /// 32 elements: `f16 d`, `f16 m`, 16 bytes of 4-bit quants; `x = q * d + m`.
    Q4_1,
    /// 32 elements: `f16 d`, 32 `i8` quants; `x = q * d`.
    Q8_0,
    /// 256 elements: `f16 d`, `f16 dmin`, 12 bytes of packed 6-bit scales and mins,
    /// 128 bytes of 4-bit quants.
    Q4_K,
    /// 256 elements: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 `i8` scales, `f16 d`.
    Q6_K,
}

impl GgmlType {
    /// Every supported type, in GGML id order.
    pub const ALL: [GgmlType; 8] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q6_K,
        Self::BF16,
    ];

    /// Elements per block (1 for float types).
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => QK,
            Self::Q4_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }

    /// The type with GGML id `id` (`ggml_type` in ggml.h), if this engine supports it.
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// GGML's numeric id for this type, as stored in GGUF tensor directories.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// GGML's name for this type (`"Q4_K"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Bytes needed to store `n_elements` of this type, or `None` when `n_elements` is not a
    /// whole number of blocks or the size overflows `usize`.
    pub fn row_bytes(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GGML's name for type id `id`, including types this engine cannot decode, so that error
/// messages can say "Q5_K" rather than "13". `None` for ids GGML never defined (or retired).
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Converts IEEE-754 half-precision bits to `f32` (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Converts bfloat16 bits to `f32` (exact: bf16 is the high half of an `f32`).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantizes one Q4_0 block (18 bytes) into 32 values.
pub fn dequantize_block_q4_0(block: &[u8; 18], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    // Low nibbles hold elements 0..16, high nibbles 16..32 (not interleaved).
    for (j, &q) in qs.iter().enumerate() {
        let x0 = i32::from(q & 0x0F) - 8;
        let x1 = i32::from(q >> 4) - 8;
        out[j] = x0 as f32 * d;
        out[j + QK / 2] = x1 as f32 * d;
    }
}

/// Dequantizes one Q4_1 block (20 bytes) into 32 values.
pub fn dequantize_block_q4_1(block: &[u8; 20], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    for (j, &q) in qs.iter().enumerate() {
        out[j] = f32::from(q & 0x0F) * d + m;
        out[j + QK / 2] = f32::from(q >> 4) * d + m;
    }
}

/// Dequantizes one Q8_0 block (34 bytes) into 32 values.
pub fn dequantize_block_q8_0(block: &[u8; 34], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Unpacks the `j`-th (0..8) 6-bit scale and min of a Q4_K block's 12-byte `scales` field.
///
/// Bytes 0..4 hold the low 6 bits of scales 0..4, bytes 4..8 those of mins 0..4; bytes 8..12
/// hold the low 4 bits of scale/min 4..8 and borrow the top 2 bits of bytes 0..8.
#[inline]
pub fn q4_k_scale_min(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one Q4_K super-block (144 bytes) into 256 values.
pub fn dequantize_block_q4_k(block: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let mut scales = [0u8; 12];
    scales.copy_from_slice(&block[4..16]);
    let qs = &block[16..144];
    // Four groups of 64 outputs; each group reads 32 quant bytes, low nibbles with one
    // (scale, min) pair and high nibbles with the next.
    for (g, (q, y)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = q4_k_scale_min(2 * g, &scales);
        let (sc2, m2) = q4_k_scale_min(2 * g + 1, &scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = y.split_at_mut(32);
        for ((&b, l), h) in q.iter().zip(lo).zip(hi) {
            *l = d1 * f32::from(b & 0x0F) - m1;
            *h = d2 * f32::from(b >> 4) - m2;
        }
    }
}

/// Dequantizes one Q6_K super-block (210 bytes) into 256 values.
pub fn dequantize_block_q6_k(block: &[u8; 210], out: &mut [f32; QK_K]) {
    let (ql, rest) = block.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (sc, d) = rest.split_at(16);
    let d = f16_at(d, 0);
    // Two halves of 128 outputs; each uses 64 bytes of `ql`, 32 of `qh` and 8 scales.
    for (n, y) in out.chunks_exact_mut(128).enumerate() {
        let ql = &ql[64 * n..64 * n + 64];
        let qh = &qh[32 * n..32 * n + 32];
        let sc = &sc[8 * n..8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = i32::from((ql[l] & 0x0F) | ((h & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
            // GGML multiplies as (d * scale) * q; keep that order for identical rounding.
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Runs `f` over each whole `B`-byte block of `src` and `N`-value chunk of `dst`; the caller
/// has already checked that the counts match.
fn per_block<const B: usize, const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let (blocks, _) = src.as_chunks::<B>();
    let (outs, _) = dst.as_chunks_mut::<N>();
    for (b, o) in blocks.iter().zip(outs) {
        f(b, o);
    }
}

/// Dequantizes `src` (whole blocks of `dtype`) into `dst` (`dst.len()` elements).
///
/// Fails with [`Error::InvalidArgument`] unless `src` is exactly `dst.len() / block_size`
/// blocks.
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let expected = dtype.row_bytes(dst.len()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "cannot dequantize {} values of {dtype}: not a whole number of {}-element blocks",
            dst.len(),
            dtype.block_size()
        ))
    })?;
    if src.len() != expected {
        return Err(Error::InvalidArgument(format!(
            "dequantize {dtype}: {} bytes of input for {} values, expected {expected}",
            src.len(),
            dst.len()
        )));
    }
    match dtype {
        GgmlType::F32 => per_block::<4, 1>(src, dst, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => {
            per_block::<2, 1>(src, dst, |b, o| o[0] = f16_to_f32(u16::from_le_bytes(*b)))
        }
        GgmlType::BF16 => {
            per_block::<2, 1>(src, dst, |b, o| o[0] = bf16_to_f32(u16::from_le_bytes(*b)))
        }
        GgmlType::Q4_0 => per_block(src, dst, dequantize_block_q4_0),
        GgmlType::Q4_1 => per_block(src, dst, dequantize_block_q4_1),
        GgmlType::Q8_0 => per_block(src, dst, dequantize_block_q8_0),
        GgmlType::Q4_K => per_block(src, dst, dequantize_block_q4_k),
        GgmlType::Q6_K => per_block(src, dst, dequantize_block_q6_k),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(t.to_u32()), Some(t));
            assert_eq!(ggml_type_name(t.to_u32()), Some(t.name()));
        }
        assert_eq!(GgmlType::from_u32(13), None);
        assert_eq!(ggml_type_name(13), Some("Q5_K"));
        assert_eq!(ggml_type_name(4), None);
        // Block byte sizes from ggml-common.h static_asserts.
        assert_eq!(GgmlType::Q4_K.type_size(), 2 * 2 + 12 + QK_K / 2);
        assert_eq!(GgmlType::Q6_K.type_size(), 2 + QK_K / 16 + 3 * QK_K / 4);
    }

    #[test]
    fn row_bytes_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
        assert_eq!(GgmlType::Q6_K.row_bytes(0), Some(0));
    }

    #[test]
    fn float_conversions() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
        assert_eq!(bf16_to_f32(0xC040), -3.0);
    }

    #[test]
    fn q4_k_scale_unpacking() {
        // scale j=5: low 4 bits from byte 9, top 2 bits from byte 1's bits 6..8;
        // min j=5: high 4 bits of byte 9, top 2 bits from byte 5.
        let mut s = [0u8; 12];
        s[1] = 0b1100_0000 | 7;
        s[5] = 0b0100_0000 | 9;
        s[9] = 0xA3;
        // j < 4 masks off the top two bits that belong to scale/min j + 4.
        assert_eq!(q4_k_scale_min(1, &s), (7, 9));
        assert_eq!(q4_k_scale_min(5, &s), (0x3 | (3 << 4), 0xA | (1 << 4)));
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let mut dst = [0f32; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], &mut dst).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 36], &mut dst).is_err());
        let mut odd = [0f32; 31];
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut odd).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut dst).is_ok());
        assert!(dequantize(GgmlType::F32, &[], &mut []).is_ok());
    }
}
