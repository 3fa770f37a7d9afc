//! simd128 kernels for wasm32 (the module must be built with `-C target-feature=+simd128`)
//! that reproduce the x86-64 AVX2 kernels (and so llama.cpp on AVX2) bit for bit.
//!
//! Two things make that work without AVX2:
//! - the same reduction order: eight f32 lanes per accumulator (two `v128`s), each lane
//!   summing the same four bytes of a block as `maddubs`/`madd` do, the same horizontal-sum
//!   tree;
//! - the same roundings: AVX2 accumulates with fused multiply-add, which wasm SIMD lacks
//!   (relaxed-simd's `madd` may or may not fuse: a build with relaxed SIMD uses it where a
//!   probe finds it fused, `wasm_relaxed.rs`). [`Fma`] computes `a·b + c` in f64 and
//!   rounds once to f32: the product of two f32 (or of an f32 and a small integer) is exact
//!   in f64, so the only rounding before the final one is of the f64 sum, which is exact
//!   unless the operands' exponents are ~29 binades apart and the result then lands on an
//!   f32 rounding midpoint (probability ~2⁻²⁹ per operation in that case, never seen in the
//!   reference tests).
//!
//! Products of f16-valued operands (attention) are exact in f32, so there a separate
//! multiply and add already equal the fused result.

use core::arch::wasm32::*;

use super::BlockQ8;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline]
fn load16(p: &[u8]) -> v128 {
    assert!(p.len() >= 16);
    // SAFETY: `p` holds at least 16 bytes; unaligned loads are allowed.
    unsafe { v128_load(p.as_ptr().cast()) }
}

#[inline]
fn load_qs(y: &BlockQ8, half: usize) -> v128 {
    let q = &y.qs[half * 16..half * 16 + 16];
    // SAFETY: 16 i8 values; i8 and u8 have the same size and alignment.
    unsafe { v128_load(q.as_ptr().cast()) }
}

/// Σ of 16 i8×i8 products in AVX2's `madd(maddubs(..))` lanes: lane `j` sums bytes
/// `4j..4j+4` (integer sums are exact, so only the grouping matters).
#[inline]
fn quad_sums(x: v128, y: v128) -> v128 {
    let a = i32x4_dot_i16x8(i16x8_extend_low_i8x16(x), i16x8_extend_low_i8x16(y));
    let b = i32x4_dot_i16x8(i16x8_extend_high_i8x16(x), i16x8_extend_high_i8x16(y));
    i32x4_add(
        i32x4_shuffle::<0, 2, 4, 6>(a, b),
        i32x4_shuffle::<1, 3, 5, 7>(a, b),
    )
}

/// Eight f32 lanes (an AVX2 `__m256`) accumulated by fused multiply-add: the dot products'
/// accumulator, one implementation per way of fusing.
pub(super) trait Acc8: Copy {
    /// All lanes zero.
    fn zero() -> Self;
    /// `self = fma(scale, p, self)` lane-wise, `p` the eight i32 lanes `lo`, `hi` (each at
    /// most 17 bits).
    fn fma_i32(&mut self, scale: f32, lo: v128, hi: v128);
    /// AVX2's `hsum`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))` in f32.
    fn hsum(&self) -> f32;
}

/// How a kernel family forms the integer sums of 4-bit weights, and accumulates.
pub(super) trait Family {
    /// The accumulator.
    type Acc: Acc8;
    /// `Σ n·y` in AVX2's lanes (lane `j`: bytes `4j..4j+4`), `n` the weights in 0..=15.
    fn sums_u4(y: v128, n: v128) -> v128;
    /// `Σ (n - 8)·y` likewise (Q4_0's signed weights).
    fn sums_q4_0(y: v128, n: v128) -> v128;
}

/// The simd128 kernels: fused multiply-add emulated in f64 (see the module docs).
pub(super) struct Simd128;

/// [`Acc8`] held as four f64x2 vectors whose values are always f32-representable.
#[derive(Clone, Copy)]
pub(super) struct F64Acc([v128; 4]);

impl Acc8 for F64Acc {
    #[inline]
    fn zero() -> Self {
        Self([f64x2_splat(0.0); 4])
    }

    #[inline]
    fn fma_i32(&mut self, scale: f32, lo: v128, hi: v128) {
        let s = f64x2_splat(f64::from(scale));
        let p = [
            f64x2_convert_low_i32x4(lo),
            f64x2_convert_low_i32x4(i32x4_shuffle::<2, 3, 2, 3>(lo, lo)),
            f64x2_convert_low_i32x4(hi),
            f64x2_convert_low_i32x4(i32x4_shuffle::<2, 3, 2, 3>(hi, hi)),
        ];
        for (a, p) in self.0.iter_mut().zip(p) {
            // |scale·p| needs at most 24 + 17 bits: exact in f64; one rounding to f32.
            *a = round_f32(f64x2_add(f64x2_mul(s, p), *a));
        }
    }

    #[inline]
    fn hsum(&self) -> f32 {
        let l = |v: usize, i: usize| {
            let x = if i == 0 {
                f64x2_extract_lane::<0>(self.0[v])
            } else {
                f64x2_extract_lane::<1>(self.0[v])
            };
            x as f32
        };
        let s = [
            l(0, 0) + l(2, 0),
            l(0, 1) + l(2, 1),
            l(1, 0) + l(3, 0),
            l(1, 1) + l(3, 1),
        ];
        (s[0] + s[2]) + (s[1] + s[3])
    }
}

impl Family for Simd128 {
    type Acc = F64Acc;

    #[inline]
    fn sums_u4(y: v128, n: v128) -> v128 {
        quad_sums(n, y)
    }

    #[inline]
    fn sums_q4_0(y: v128, n: v128) -> v128 {
        quad_sums(i8x16_sub(n, i8x16_splat(8)), y)
    }
}

/// Rounds f64 lanes to f32 precision (kept as f64).
#[inline]
fn round_f32(x: v128) -> v128 {
    f64x2_promote_low_f32x4(f32x4_demote_f64x2_zero(x))
}

/// Q4_1 weights against `N` activation vectors, exactly as `x86::dot_q4_1_n`.
pub fn dot_q4_1_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    #[cfg(target_feature = "relaxed-simd")]
    if super::wasm_relaxed::fused() {
        return q4_1::<super::wasm_relaxed::Relaxed, N>(w, ys);
    }
    q4_1::<Simd128, N>(w, ys)
}

/// Q4_0 weights against `N` activation vectors, exactly as `x86::dot_q4_0_n`.
pub fn dot_q4_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    #[cfg(target_feature = "relaxed-simd")]
    if super::wasm_relaxed::fused() {
        return q4_0::<super::wasm_relaxed::Relaxed, N>(w, ys);
    }
    q4_0::<Simd128, N>(w, ys)
}

/// Q8_0 weights against `N` activation vectors, exactly as `x86::dot_q8_0_n`.
pub fn dot_q8_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    #[cfg(target_feature = "relaxed-simd")]
    if super::wasm_relaxed::fused() {
        return q8_0::<<super::wasm_relaxed::Relaxed as Family>::Acc, N>(w, ys);
    }
    q8_0::<F64Acc, N>(w, ys)
}

#[inline]
fn q4_1<F: Family, const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [F::Acc::zero(); N];
    let mut summs = [0f32; N];
    let mask = u8x16_splat(0x0f);
    for (i, blk) in w.chunks_exact(20).enumerate() {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let raw = load16(&blk[4..20]);
        let lo = v128_and(raw, mask);
        let hi = u8x16_shr(raw, 4);
        for t in 0..N {
            let yb = &ys[t][i];
            summs[t] += m * yb.s;
            acc[t].fma_i32(
                d * yb.d,
                F::sums_u4(load_qs(yb, 0), lo),
                F::sums_u4(load_qs(yb, 1), hi),
            );
        }
    }
    std::array::from_fn(|t| acc[t].hsum() + summs[t])
}

#[inline]
fn q4_0<F: Family, const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [F::Acc::zero(); N];
    let mask = u8x16_splat(0x0f);
    for (i, blk) in w.chunks_exact(18).enumerate() {
        let d = f16_at(blk, 0);
        let raw = load16(&blk[2..18]);
        let lo = v128_and(raw, mask);
        let hi = u8x16_shr(raw, 4);
        for t in 0..N {
            let yb = &ys[t][i];
            acc[t].fma_i32(
                d * yb.d,
                F::sums_q4_0(load_qs(yb, 0), lo),
                F::sums_q4_0(load_qs(yb, 1), hi),
            );
        }
    }
    acc.map(|a| a.hsum())
}

/// Q8_0's weights are signed bytes: every family sums them in integers alike.
#[inline]
fn q8_0<A: Acc8, const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [A::zero(); N];
    for (i, blk) in w.chunks_exact(34).enumerate() {
        let d = f16_at(blk, 0);
        let a = load16(&blk[2..18]);
        let b = load16(&blk[18..34]);
        for t in 0..N {
            let yb = &ys[t][i];
            acc[t].fma_i32(
                d * yb.d,
                quad_sums(a, load_qs(yb, 0)),
                quad_sums(b, load_qs(yb, 1)),
            );
        }
    }
    acc.map(|a| a.hsum())
}

/// `a·b + c` on four f32 lanes with one rounding (see the module docs).
#[inline]
fn fma4(a: v128, b: v128, c: v128) -> v128 {
    let hi2 = |v: v128| f64x2_promote_low_f32x4(i32x4_shuffle::<2, 3, 2, 3>(v, v));
    let lo = f64x2_add(
        f64x2_mul(f64x2_promote_low_f32x4(a), f64x2_promote_low_f32x4(b)),
        f64x2_promote_low_f32x4(c),
    );
    let hi = f64x2_add(f64x2_mul(hi2(a), hi2(b)), hi2(c));
    i32x4_shuffle::<0, 1, 4, 5>(f32x4_demote_f64x2_zero(lo), f32x4_demote_f64x2_zero(hi))
}

/// `c - a·b` with one rounding (AVX2's `fnmadd`).
#[inline]
fn fnma4(a: v128, b: v128, c: v128) -> v128 {
    fma4(f32x4_neg(a), b, c)
}

#[inline]
fn splat_bits(b: u32) -> v128 {
    f32x4_splat(f32::from_bits(b))
}

/// e^x for 4 lanes: `x86::exp8`'s polynomial and roundings, lane for lane.
#[inline]
fn exp4(x: v128) -> v128 {
    let shift = splat_bits(0x4b40_0000);
    let z = fma4(x, splat_bits(0x3fb8_aa3b), shift);
    let n = f32x4_sub(z, shift);
    let hi = fnma4(n, splat_bits(0x3f31_7200), x);
    let b = fnma4(n, splat_bits(0x35bf_be8e), hi);
    let e = i32x4_shl(z, 23);
    let k = i32x4_add(e, f32x4_splat(1.0));
    let abs_n = f32x4_abs(n);
    let big = f32x4_gt(abs_n, f32x4_splat(126.0));
    let u = f32x4_mul(b, b);
    let c4 = splat_bits(0x3c07_2010);
    let c3 = splat_bits(0x3d2b_9f17);
    let c2 = splat_bits(0x3e2a_af33);
    let c1 = splat_bits(0x3eff_fedb);
    let c0 = splat_bits(0x3f7f_fff6);
    let j = fma4(
        fma4(fma4(c4, b, c3), u, fma4(c2, b, c1)),
        u,
        f32x4_mul(c0, b),
    );
    if !v128_any_true(big) {
        return fma4(j, k, k);
    }
    let g = v128_and(f32x4_le(n, f32x4_splat(0.0)), u32x4_splat(0x8200_0000));
    let s1 = i32x4_add(g, u32x4_splat(0x7f00_0000));
    let s2 = i32x4_sub(e, g);
    let huge = f32x4_gt(abs_n, f32x4_splat(192.0));
    let scaled = v128_bitselect(f32x4_mul(fma4(s2, j, s2), s1), fma4(k, j, k), big);
    v128_bitselect(f32x4_mul(s1, s1), scaled, huge)
}

#[inline]
fn load4(s: &[f32]) -> v128 {
    assert!(s.len() >= 4);
    // SAFETY: `s` holds at least 4 floats; unaligned loads are allowed.
    unsafe { v128_load(s.as_ptr().cast()) }
}

#[inline]
fn store4(s: &mut [f32], v: v128) {
    assert!(s.len() >= 4);
    // SAFETY: as in `load4`.
    unsafe { v128_store(s.as_mut_ptr().cast(), v) }
}

/// In-place softmax as `x86::softmax`: polynomial exp over groups of 8, each group's
/// horizontal sum added to an f64 total, libm exp for the tail.
pub fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let vmax = f32x4_splat(max);
    let mut sum = 0f64;
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        let lo = exp4(f32x4_sub(load4(&c[..4]), vmax));
        let hi = exp4(f32x4_sub(load4(&c[4..]), vmax));
        store4(&mut c[..4], lo);
        store4(&mut c[4..], hi);
        // (lo + hi), then lanes (0+2) + (1+3), as AVX2's extract/movehl/movehdup.
        let h = f32x4_add(hi, lo);
        let h = [
            f32x4_extract_lane::<0>(h),
            f32x4_extract_lane::<1>(h),
            f32x4_extract_lane::<2>(h),
            f32x4_extract_lane::<3>(h),
        ];
        sum += f64::from((h[0] + h[2]) + (h[1] + h[3]));
    }
    for v in chunks.into_remainder() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// `x / (1 + e^-x) * g` in place over `x`, as `x86::swiglu`.
pub fn swiglu(x: &mut [f32], g: &[f32]) {
    let n = x.len().min(g.len());
    let mut i = 0;
    while i + 4 <= n {
        let xv = load4(&x[i..]);
        let e = exp4(f32x4_sub(f32x4_splat(0.0), xv));
        let silu = f32x4_div(xv, f32x4_add(f32x4_splat(1.0), e));
        store4(&mut x[i..], f32x4_mul(silu, load4(&g[i..])));
        i += 4;
    }
    while i < n {
        x[i] = x[i] / (1.0 + (-x[i]).exp()) * g[i];
        i += 1;
    }
}

/// Dot product of two f16-valued vectors in `x86::dot_f16_ordered`'s order: four 8-lane
/// accumulators over 32-element steps, a fixed reduction tree, an f64 tail. The products
/// are exact in f32, so multiply-then-add equals AVX2's fused multiply-add here.
pub fn dot_f16_ordered(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n & !31;
    let mut sumf = 0f64;
    if np > 0 {
        // acc[j][h]: accumulator j (of 4), lanes 4h..4h+4 of its 8.
        let mut acc = [[f32x4_splat(0.0); 2]; 4];
        let mut i = 0;
        while i < np {
            for (j, s) in acc.iter_mut().enumerate() {
                for (h, s) in s.iter_mut().enumerate() {
                    let o = i + 8 * j + 4 * h;
                    *s = f32x4_add(f32x4_mul(load4(&a[o..]), load4(&b[o..])), *s);
                }
            }
            i += 32;
        }
        let s01 = [0, 1].map(|h| f32x4_add(acc[0][h], acc[2][h]));
        let s23 = [0, 1].map(|h| f32x4_add(acc[1][h], acc[3][h]));
        let s = [0, 1].map(|h| f32x4_add(s01[h], s23[h]));
        let t0 = f32x4_add(s[0], s[1]);
        let t = [
            f32x4_extract_lane::<0>(t0),
            f32x4_extract_lane::<1>(t0),
            f32x4_extract_lane::<2>(t0),
            f32x4_extract_lane::<3>(t0),
        ];
        // Two `hadd`s: (t0 + t1) + (t2 + t3).
        sumf = f64::from((t[0] + t[1]) + (t[2] + t[3]));
    }
    for i in np..n {
        sumf += f64::from(a[i] * b[i]);
    }
    sumf as f32
}

/// f32 dot product in `x86::dot_f32`'s order: two 8-lane fused accumulators over
/// 16-element steps, the AVX2 horizontal sum, then a scalar tail.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [[f32x4_splat(0.0); 2]; 2];
    let mut i = 0;
    while i + 16 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            for (h, s) in s.iter_mut().enumerate() {
                let o = i + 8 * j + 4 * h;
                *s = fma4(load4(&a[o..]), load4(&b[o..]), *s);
            }
        }
        i += 16;
    }
    // hsum(acc0 + acc1).
    let lo = f32x4_add(acc[0][0], acc[1][0]);
    let hi = f32x4_add(acc[0][1], acc[1][1]);
    let h = f32x4_add(lo, hi);
    let h = [
        f32x4_extract_lane::<0>(h),
        f32x4_extract_lane::<1>(h),
        f32x4_extract_lane::<2>(h),
        f32x4_extract_lane::<3>(h),
    ];
    let mut s = (h[0] + h[2]) + (h[1] + h[3]);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}
