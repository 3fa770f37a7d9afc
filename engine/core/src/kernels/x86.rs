//! AVX2 + FMA kernels (x86-64), selected at run time.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::BlockQ8;

pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then high nibbles.
#[inline]
#[target_feature(enable = "avx2")]
fn unpack_nibbles(p: &[u8]) -> __m256i {
    debug_assert!(p.len() >= 16);
    // SAFETY: `p` holds at least 16 bytes (checked by callers' block slicing).
    let raw = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
    let both = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(raw), _mm_srli_epi16::<4>(raw));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_qs(y: &BlockQ8) -> __m256i {
    // SAFETY: `qs` is 32 bytes.
    unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) }
}

/// Σ u8×i8 pairs of 32 lanes, as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Σ i8×i8 pairs of 32 lanes, as 8 f32 lanes (sign moved onto the second operand).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    dot_u8_i8(ax, sy)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (blk, yb) in w.chunks_exact(20).zip(y) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        summs += m * yb.s;
        let q = unpack_nibbles(&blk[4..20]);
        let p = dot_u8_i8(q, load_qs(yb));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * yb.d), p, acc);
    }
    hsum(acc) + summs
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (blk, yb) in w.chunks_exact(18).zip(y) {
        let d = f16_at(blk, 0);
        let q = _mm256_sub_epi8(unpack_nibbles(&blk[2..18]), _mm256_set1_epi8(8));
        let p = dot_i8_i8(q, load_qs(yb));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * yb.d), p, acc);
    }
    hsum(acc)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (blk, yb) in w.chunks_exact(34).zip(y) {
        let d = f16_at(blk, 0);
        let qb = &blk[2..34];
        // SAFETY: `qb` is exactly 32 bytes.
        let q = unsafe { _mm256_loadu_si256(qb.as_ptr().cast()) };
        let p = dot_i8_i8(q, load_qs(yb));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * yb.d), p, acc);
    }
    hsum(acc)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds both loads.
        unsafe {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}
