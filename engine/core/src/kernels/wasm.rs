//! simd128 kernels for wasm32 (the module must be built with `-C target-feature=+simd128`).

use core::arch::wasm32::*;

use super::BlockQ8;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline]
fn load16(p: &[u8]) -> v128 {
    debug_assert!(p.len() >= 16);
    // SAFETY: callers pass slices of at least 16 bytes; unaligned loads are allowed.
    unsafe { v128_load(p.as_ptr().cast()) }
}

#[inline]
fn load_qs(y: &BlockQ8, half: usize) -> v128 {
    load16(bytemuck_i8(&y.qs[half * 16..half * 16 + 16]))
}

#[inline]
fn bytemuck_i8(s: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { core::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// Σ of 16 i8×i8 products as 4 i32 lanes.
#[inline]
fn dot16(a: v128, b: v128) -> v128 {
    let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(a), i16x8_extend_low_i8x16(b));
    let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(a), i16x8_extend_high_i8x16(b));
    i32x4_add(lo, hi)
}

#[inline]
fn hsum_i32(v: v128) -> i32 {
    i32x4_extract_lane::<0>(v)
        + i32x4_extract_lane::<1>(v)
        + i32x4_extract_lane::<2>(v)
        + i32x4_extract_lane::<3>(v)
}

pub fn dot_q4_1(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    let mask = u8x16_splat(0x0f);
    for (blk, yb) in w.chunks_exact(20).zip(y) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let raw = load16(&blk[4..20]);
        let lo = v128_and(raw, mask);
        let hi = u8x16_shr(raw, 4);
        let isum = hsum_i32(i32x4_add(
            dot16(lo, load_qs(yb, 0)),
            dot16(hi, load_qs(yb, 1)),
        ));
        sum += d * yb.d * isum as f32 + m * yb.s;
    }
    sum
}

pub fn dot_q4_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    let mask = u8x16_splat(0x0f);
    let eight = i8x16_splat(8);
    for (blk, yb) in w.chunks_exact(18).zip(y) {
        let d = f16_at(blk, 0);
        let raw = load16(&blk[2..18]);
        let lo = i8x16_sub(v128_and(raw, mask), eight);
        let hi = i8x16_sub(u8x16_shr(raw, 4), eight);
        let isum = hsum_i32(i32x4_add(
            dot16(lo, load_qs(yb, 0)),
            dot16(hi, load_qs(yb, 1)),
        ));
        sum += d * yb.d * isum as f32;
    }
    sum
}

pub fn dot_q8_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, yb) in w.chunks_exact(34).zip(y) {
        let d = f16_at(blk, 0);
        let a = dot16(load16(&blk[2..18]), load_qs(yb, 0));
        let b = dot16(load16(&blk[18..34]), load_qs(yb, 1));
        sum += d * yb.d * hsum_i32(i32x4_add(a, b)) as f32;
    }
    sum
}
