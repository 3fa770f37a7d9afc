//! NEON kernels for aarch64 that reproduce the x86-64 AVX2 kernels (and so llama.cpp on
//! AVX2) bit for bit, as the wasm32 simd128 ones do.
//!
//! NEON is part of every AArch64 CPU (ARMv8-A makes Advanced SIMD mandatory), so these are
//! chosen at compile time for `aarch64`; `KWAAINET_SCALAR_KERNELS=1` picks the portable
//! kernels at run time instead (for benchmarks against them).
//!
//! Why the bits agree with AVX2:
//! - the same reduction order: eight f32 lanes per accumulator (two `float32x4_t`), each
//!   lane summing the same four bytes of a block as `maddubs`/`madd` do (integer sums are
//!   exact, so only the grouping matters), the same horizontal-sum tree;
//! - the same roundings: NEON's `fmla` is a fused multiply-add, like AVX2's `vfmadd`, and
//!   `fmls` the fused `vfnmadd`; products, divisions and conversions are IEEE operations on
//!   both.

use std::arch::aarch64::*;

use super::BlockQ8;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline]
fn load16(p: &[u8]) -> uint8x16_t {
    assert!(p.len() >= 16);
    // SAFETY: `p` holds at least 16 bytes; NEON loads need no alignment.
    unsafe { vld1q_u8(p.as_ptr()) }
}

#[inline]
fn load_qs(y: &BlockQ8, half: usize) -> int8x16_t {
    let q = &y.qs[half * 16..half * 16 + 16];
    // SAFETY: 16 i8 values.
    unsafe { vld1q_s8(q.as_ptr()) }
}

/// Σ of 16 i8×i8 products in AVX2's `madd(maddubs(..))` lanes: lane `j` sums bytes
/// `4j..4j+4`. Every product fits i16 (|w| ≤ 128, |y| ≤ 127).
#[inline]
fn quad_sums(x: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is always present on aarch64.
    unsafe {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(x), vget_low_s8(y)));
        let hi = vpaddlq_s16(vmull_high_s8(x, y));
        vpaddq_s32(lo, hi)
    }
}

/// Eight f32 lanes (an AVX2 `__m256`): lanes 0..4 and 4..8.
#[derive(Clone, Copy)]
struct Acc8([float32x4_t; 2]);

impl Acc8 {
    #[inline]
    fn zero() -> Self {
        // SAFETY: NEON is always present on aarch64.
        Self(unsafe { [vdupq_n_f32(0.0); 2] })
    }

    /// `self = fma(scale, p, self)` lane-wise, `p` the eight i32 lanes `lo`, `hi`.
    #[inline]
    fn fma_i32(&mut self, scale: f32, lo: int32x4_t, hi: int32x4_t) {
        // SAFETY: NEON is always present on aarch64.
        unsafe {
            let s = vdupq_n_f32(scale);
            self.0[0] = vfmaq_f32(self.0[0], s, vcvtq_f32_s32(lo));
            self.0[1] = vfmaq_f32(self.0[1], s, vcvtq_f32_s32(hi));
        }
    }

    /// AVX2's `hsum`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))` in f32.
    #[inline]
    fn hsum(&self) -> f32 {
        // SAFETY: NEON is always present on aarch64.
        hsum4(unsafe { vaddq_f32(self.0[0], self.0[1]) })
    }
}

/// `(s0 + s2) + (s1 + s3)`: the tail of AVX2's horizontal sum (`movehl`, `movehdup`).
#[inline]
fn hsum4(s: float32x4_t) -> f32 {
    // SAFETY: NEON is always present on aarch64.
    unsafe {
        let l = [
            vgetq_lane_f32::<0>(s),
            vgetq_lane_f32::<1>(s),
            vgetq_lane_f32::<2>(s),
            vgetq_lane_f32::<3>(s),
        ];
        (l[0] + l[2]) + (l[1] + l[3])
    }
}

/// Q4_1 weights against `N` activation vectors, exactly as `x86::dot_q4_1_n`.
pub fn dot_q4_1_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [Acc8::zero(); N];
    let mut summs = [0f32; N];
    // SAFETY: NEON is always present on aarch64.
    let mask = unsafe { vdupq_n_u8(0x0f) };
    for (i, blk) in w.chunks_exact(20).enumerate() {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let raw = load16(&blk[4..20]);
        // SAFETY: NEON is always present on aarch64.
        let (lo, hi) = unsafe {
            (
                vreinterpretq_s8_u8(vandq_u8(raw, mask)),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw)),
            )
        };
        for t in 0..N {
            let yb = &ys[t][i];
            summs[t] += m * yb.s;
            acc[t].fma_i32(
                d * yb.d,
                quad_sums(lo, load_qs(yb, 0)),
                quad_sums(hi, load_qs(yb, 1)),
            );
        }
    }
    std::array::from_fn(|t| acc[t].hsum() + summs[t])
}

/// Q4_0 weights against `N` activation vectors, exactly as `x86::dot_q4_0_n`.
pub fn dot_q4_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [Acc8::zero(); N];
    // SAFETY: NEON is always present on aarch64.
    let (mask, eight) = unsafe { (vdupq_n_u8(0x0f), vdupq_n_s8(8)) };
    for (i, blk) in w.chunks_exact(18).enumerate() {
        let d = f16_at(blk, 0);
        let raw = load16(&blk[2..18]);
        // SAFETY: NEON is always present on aarch64.
        let (lo, hi) = unsafe {
            (
                vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, mask)), eight),
                vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw)), eight),
            )
        };
        for t in 0..N {
            let yb = &ys[t][i];
            acc[t].fma_i32(
                d * yb.d,
                quad_sums(lo, load_qs(yb, 0)),
                quad_sums(hi, load_qs(yb, 1)),
            );
        }
    }
    acc.map(|a| a.hsum())
}

/// Q8_0 weights against `N` activation vectors, exactly as `x86::dot_q8_0_n`.
pub fn dot_q8_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [Acc8::zero(); N];
    for (i, blk) in w.chunks_exact(34).enumerate() {
        let d = f16_at(blk, 0);
        // SAFETY: NEON is always present on aarch64.
        let (a, b) = unsafe {
            (
                vreinterpretq_s8_u8(load16(&blk[2..18])),
                vreinterpretq_s8_u8(load16(&blk[18..34])),
            )
        };
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

#[inline]
fn splat_bits(b: u32) -> float32x4_t {
    // SAFETY: NEON is always present on aarch64.
    unsafe { vdupq_n_f32(f32::from_bits(b)) }
}

/// e^x for 4 lanes: `x86::exp8`'s polynomial and roundings, lane for lane.
#[inline]
fn exp4(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is always present on aarch64.
    unsafe {
        // `fma(a, b, c)` = a·b + c and `fnma(a, b, c)` = c − a·b, each rounded once.
        let fma = |a, b, c| vfmaq_f32(c, a, b);
        let fnma = |a, b, c| vfmsq_f32(c, a, b);
        let shift = splat_bits(0x4b40_0000);
        let z = fma(x, splat_bits(0x3fb8_aa3b), shift);
        let n = vsubq_f32(z, shift);
        let hi = fnma(n, splat_bits(0x3f31_7200), x);
        let b = fnma(n, splat_bits(0x35bf_be8e), hi);
        let e = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
        let k = vreinterpretq_f32_u32(vaddq_u32(e, vreinterpretq_u32_f32(vdupq_n_f32(1.0))));
        let abs_n = vabsq_f32(n);
        let big = vcgtq_f32(abs_n, vdupq_n_f32(126.0));
        let u = vmulq_f32(b, b);
        let c4 = splat_bits(0x3c07_2010);
        let c3 = splat_bits(0x3d2b_9f17);
        let c2 = splat_bits(0x3e2a_af33);
        let c1 = splat_bits(0x3eff_fedb);
        let c0 = splat_bits(0x3f7f_fff6);
        let j = fma(fma(fma(c4, b, c3), u, fma(c2, b, c1)), u, vmulq_f32(c0, b));
        if vmaxvq_u32(big) == 0 {
            return fma(j, k, k);
        }
        // Out of the normal range: scale in two steps to reach subnormals, or saturate.
        let g = vandq_u32(vclezq_f32(n), vdupq_n_u32(0x8200_0000));
        let s1 = vreinterpretq_f32_u32(vaddq_u32(g, vdupq_n_u32(0x7f00_0000)));
        let s2 = vreinterpretq_f32_u32(vsubq_u32(e, g));
        let huge = vcgtq_f32(abs_n, vdupq_n_f32(192.0));
        let scaled = vbslq_f32(big, vmulq_f32(fma(s2, j, s2), s1), fma(k, j, k));
        vbslq_f32(huge, vmulq_f32(s1, s1), scaled)
    }
}

#[inline]
fn load4(s: &[f32]) -> float32x4_t {
    assert!(s.len() >= 4);
    // SAFETY: `s` holds at least 4 floats.
    unsafe { vld1q_f32(s.as_ptr()) }
}

#[inline]
fn store4(s: &mut [f32], v: float32x4_t) {
    assert!(s.len() >= 4);
    // SAFETY: as in `load4`.
    unsafe { vst1q_f32(s.as_mut_ptr(), v) }
}

/// In-place softmax as `x86::softmax`: polynomial exp over groups of 8, each group's
/// horizontal sum added to an f64 total, libm exp for the tail.
pub fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // SAFETY: NEON is always present on aarch64.
    let vmax = unsafe { vdupq_n_f32(max) };
    let mut sum = 0f64;
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: NEON is always present on aarch64.
        unsafe {
            let lo = exp4(vsubq_f32(load4(&c[..4]), vmax));
            let hi = exp4(vsubq_f32(load4(&c[4..]), vmax));
            store4(&mut c[..4], lo);
            store4(&mut c[4..], hi);
            // (hi + lo), then lanes (0+2) + (1+3), as AVX2's extract/movehl/movehdup.
            sum += f64::from(hsum4(vaddq_f32(hi, lo)));
        }
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
        // SAFETY: NEON is always present on aarch64.
        unsafe {
            let xv = load4(&x[i..]);
            let e = exp4(vsubq_f32(vdupq_n_f32(0.0), xv));
            let silu = vdivq_f32(xv, vaddq_f32(vdupq_n_f32(1.0), e));
            store4(&mut x[i..], vmulq_f32(silu, load4(&g[i..])));
        }
        i += 4;
    }
    while i < n {
        x[i] = x[i] / (1.0 + (-x[i]).exp()) * g[i];
        i += 1;
    }
}

/// Dot product of two f16-valued vectors in `x86::dot_f16_ordered`'s order: four 8-lane
/// fused accumulators over 32-element steps, a fixed reduction tree, an f64 tail.
pub fn dot_f16_ordered(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n & !31;
    let mut sumf = 0f64;
    if np > 0 {
        // SAFETY: NEON is always present on aarch64.
        unsafe {
            // acc[j][h]: accumulator j (of 4), lanes 4h..4h+4 of its 8.
            let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
            let mut i = 0;
            while i < np {
                for (j, s) in acc.iter_mut().enumerate() {
                    for (h, s) in s.iter_mut().enumerate() {
                        let o = i + 8 * j + 4 * h;
                        *s = vfmaq_f32(*s, load4(&a[o..]), load4(&b[o..]));
                    }
                }
                i += 32;
            }
            let s01 = [0, 1].map(|h| vaddq_f32(acc[0][h], acc[2][h]));
            let s23 = [0, 1].map(|h| vaddq_f32(acc[1][h], acc[3][h]));
            let s = [0, 1].map(|h| vaddq_f32(s01[h], s23[h]));
            let t = vaddq_f32(s[0], s[1]);
            let t = [
                vgetq_lane_f32::<0>(t),
                vgetq_lane_f32::<1>(t),
                vgetq_lane_f32::<2>(t),
                vgetq_lane_f32::<3>(t),
            ];
            // Two `hadd`s: (t0 + t1) + (t2 + t3).
            sumf = f64::from((t[0] + t[1]) + (t[2] + t[3]));
        }
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
    let mut i = 0;
    // SAFETY: NEON is always present on aarch64.
    let mut s = unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; 2];
        while i + 16 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                for (h, s) in s.iter_mut().enumerate() {
                    let o = i + 8 * j + 4 * h;
                    *s = vfmaq_f32(*s, load4(&a[o..]), load4(&b[o..]));
                }
            }
            i += 16;
        }
        // hsum(acc0 + acc1).
        let lo = vaddq_f32(acc[0][0], acc[1][0]);
        let hi = vaddq_f32(acc[0][1], acc[1][1]);
        hsum4(vaddq_f32(lo, hi))
    };
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}
