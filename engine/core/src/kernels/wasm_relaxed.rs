//! The quantized dot products with relaxed SIMD (a wasm32 build with
//! `-C target-feature=+simd128,+relaxed-simd`), still AVX2's results bit for bit — where the
//! engine's `relaxed_madd` is fused, which [`fused`] checks once at run time:
//!
//! - `f32x4.relaxed_madd` is a fused multiply-add on hardware with FMA (V8 on x86-64 with
//!   FMA3, arm64) and a multiply then an add elsewhere. Fused, it is AVX2's `fmadd`, and
//!   replaces `wasm.rs`'s f64 emulation (four conversions, a multiply, an add and two
//!   roundings per pair of lanes). Unfused, it would round twice: the kernels then take
//!   `wasm.rs`'s path, and the module gives the same tokens as the plain one.
//! - `i32x4.relaxed_dot_i8x16_i7x16_add` sums the products of four consecutive bytes into
//!   each i32 lane: the grouping of AVX2's `madd(maddubs(..))`. Its result is defined (and
//!   exact here: each pair sums to at most 2·127·15) when the second operand's bytes are in
//!   0..=127: the 4-bit weights of Q4_0 and Q4_1 are. Q4_0's offset of 8 comes off as
//!   `8·Σy` (the same dot with a vector of ones). Q8_0's signed weights keep `wasm.rs`'s
//!   integer sums.
//!
//! Measured in Chromium on this repository's 2-core x86-64 machine, one thread
//! (`engine/wasm/bench-browser.mjs`): prefill 3.4x and decode 1.9x the plain simd128 module's.

use core::arch::wasm32::*;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use super::wasm::{Acc8, Family};

/// The probe's operands, read from memory so that no compiler folds the probe away.
static PROBE_X: AtomicU32 = AtomicU32::new(0x3f80_0800); // 1 + 2^-12
static PROBE_C: AtomicU32 = AtomicU32::new(0xbf80_1000); // -(1 + 2^-11)
/// 0: not probed yet, 1: fused, 2: not fused.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Whether `relaxed_madd` is fused here: `x·x + c` with `x = 1 + 2⁻¹²`, `c = -(1 + 2⁻¹¹)`
/// is `2⁻²⁴` fused and `0` rounded twice (the product's last bit is a tie that rounds to
/// even). Probed once.
pub fn fused() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let x = f32x4_splat(f32::from_bits(PROBE_X.load(Ordering::Relaxed)));
            let c = f32x4_splat(f32::from_bits(PROBE_C.load(Ordering::Relaxed)));
            let r = f32x4_relaxed_madd(x, x, c);
            let two_to_minus_24 = f32x4_splat(f32::from_bits(0x3380_0000));
            let ok = u32x4_all_true(f32x4_eq(r, two_to_minus_24));
            FUSED.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// The relaxed-SIMD kernels (use only where [`fused`]).
pub(super) struct Relaxed;

/// [`Acc8`] as two f32x4 vectors (lanes 0-3 and 4-7), accumulated by `relaxed_madd`.
#[derive(Clone, Copy)]
pub(super) struct RelaxedAcc(v128, v128);

impl Acc8 for RelaxedAcc {
    #[inline]
    fn zero() -> Self {
        Self(f32x4_splat(0.0), f32x4_splat(0.0))
    }

    /// Each i32 lane is exact in f32 (at most 17 bits); one fused rounding.
    #[inline]
    fn fma_i32(&mut self, scale: f32, lo: v128, hi: v128) {
        let s = f32x4_splat(scale);
        self.0 = f32x4_relaxed_madd(s, f32x4_convert_i32x4(lo), self.0);
        self.1 = f32x4_relaxed_madd(s, f32x4_convert_i32x4(hi), self.1);
    }

    #[inline]
    fn hsum(&self) -> f32 {
        let s = f32x4_add(self.0, self.1);
        (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<2>(s))
            + (f32x4_extract_lane::<1>(s) + f32x4_extract_lane::<3>(s))
    }
}

impl Family for Relaxed {
    type Acc = RelaxedAcc;

    /// One instruction: `y` the i8 operand, the weights (0..=15) the i7 one.
    #[inline]
    fn sums_u4(y: v128, n: v128) -> v128 {
        i32x4_relaxed_dot_i8x16_i7x16_add(y, n, i32x4_splat(0))
    }

    /// `Σ (n - 8)·y = Σ n·y - 8·Σ y`, in integers (`Σ y`: the same dot with ones).
    #[inline]
    fn sums_q4_0(y: v128, n: v128) -> v128 {
        let ys = Self::sums_u4(y, i8x16_splat(1));
        i32x4_sub(Self::sums_u4(y, n), i32x4_shl(ys, 3))
    }
}
