//! AVX2 + FMA kernels (x86-64), selected at run time.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::BlockQ8;

pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        !super::scalar_forced()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
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

/// `[d, m, 0, 0]` of a Q4_1 block header (or `[d, x, 0, 0]` of a Q4_0/Q8_0 one).
///
/// A zero-extending 32-bit load: converting a lone f16 with an insert into some live
/// register would chain every block onto the previous one's accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn header(blk: &[u8]) -> __m128 {
    debug_assert!(blk.len() >= 4);
    // SAFETY: every block is at least 18 bytes long.
    _mm_cvtph_ps(unsafe { _mm_loadu_si32(blk.as_ptr().cast()) })
}

/// `[d, s, 0, 0]` of an activation block.
#[inline]
#[target_feature(enable = "avx2")]
fn act_header(y: &BlockQ8) -> __m128 {
    // SAFETY: `d` and `s` are the first two f32 fields of the `repr(C)` block.
    unsafe { _mm_castpd_ps(_mm_load_sd((y as *const BlockQ8).cast())) }
}

/// Q4_1 weights against `N` activation vectors (one dot product each), each summed in
/// block order with one accumulator, as llama.cpp does, so results do not depend on `N`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `ys[t]` holds `w.len() / 20` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut summs = [_mm_setzero_ps(); N];
    for (i, blk) in w.chunks_exact(20).enumerate() {
        let dm = header(blk);
        let q = unpack_nibbles(&blk[4..20]);
        for t in 0..N {
            let yb = &ys[t][i];
            // [d·dy, m·s]: lane 1 feeds the offset sum, lane 0 the block scale.
            let prod = _mm_mul_ps(dm, act_header(yb));
            summs[t] = _mm_add_ps(summs[t], prod);
            let p = dot_u8_i8(q, load_qs(yb));
            acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]) + _mm_cvtss_f32(_mm_movehdup_ps(summs[t]));
    }
    out
}

/// Q4_0 weights against `N` activation vectors.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `ys[t]` holds `w.len() / 18` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, blk) in w.chunks_exact(18).enumerate() {
        let d = header(blk);
        let q = _mm256_sub_epi8(unpack_nibbles(&blk[2..18]), _mm256_set1_epi8(8));
        for t in 0..N {
            let yb = &ys[t][i];
            let p = dot_i8_i8(q, load_qs(yb));
            let scale = _mm256_broadcastss_ps(_mm_mul_ss(d, act_header(yb)));
            acc[t] = _mm256_fmadd_ps(scale, p, acc[t]);
        }
    }
    acc.map(|a| hsum(a))
}

/// Q8_0 weights against `N` activation vectors.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `ys[t]` holds `w.len() / 34` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_n<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, blk) in w.chunks_exact(34).enumerate() {
        let d = header(blk);
        let qb = &blk[2..34];
        // SAFETY: `qb` is exactly 32 bytes.
        let q = unsafe { _mm256_loadu_si256(qb.as_ptr().cast()) };
        for t in 0..N {
            let yb = &ys[t][i];
            let p = dot_i8_i8(q, load_qs(yb));
            let scale = _mm256_broadcastss_ps(_mm_mul_ss(d, act_header(yb)));
            acc[t] = _mm256_fmadd_ps(scale, p, acc[t]);
        }
    }
    acc.map(|a| hsum(a))
}

/// Which instruction forms the 8-bit products: AVX2's `vpmaddubsw` + `vpmaddwd`, or one
/// `vpdpbusd` (AVX-VNNI, or AVX-512 VNNI on 256-bit registers). All three give the same
/// 32-bit lane sums (four u8×i8 products each; no 16-bit saturation is possible with
/// 4-bit or sign-folded 8-bit weights), so results are equal whichever runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dot8 {
    Avx2,
    AvxVnni,
    Avx512Vnni,
}

/// The fastest [`Dot8`] this CPU has (AVX2 assumed: see [`has_avx2`]).
pub fn best_dot8() -> Dot8 {
    static BEST: OnceLock<Dot8> = OnceLock::new();
    *BEST.get_or_init(|| {
        if std::env::var_os("KWAAINET_NO_VNNI").is_some() {
            Dot8::Avx2
        } else if is_x86_feature_detected!("avxvnni") {
            Dot8::AvxVnni
        } else if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            Dot8::Avx512Vnni
        } else {
            Dot8::Avx2
        }
    })
}

/// Tokens per call of the `*_x8` kernels.
pub const X8: usize = 8;

/// Defines the 8-token kernels for one [`Dot8`] form: `$dot(u, s)` is Σ u8×i8 of 32 lanes
/// as 8 i32 lanes.
///
/// They compute exactly what [`dot_q4_1_n`] and [`dot_q8_0_n`] compute, token by token
/// (same products, same roundings, same accumulation order), with the per-token scalar work
/// moved out of the inner loop: the eight tokens' block scales `d_w · d_y` (and Q4_1's
/// offsets `m_w · s_y`) are one vector multiply per block, from the activation scales laid out
/// block-major (`d[i * stride + t]`), and each token's scale is then a broadcast load.
macro_rules! kernels_x8 {
    ($features:literal, $q41:ident, $q80:ident, $dot:ident) => {
        /// Q4_1 weights against 8 activation vectors (`y`: their blocks, token after
        /// token); `d`/`s` hold their scales and offsets block-major with `stride`.
        ///
        /// # Safety
        /// The CPU must support the target features named; `y` holds `8 * w.len() / 20`
        /// blocks, and `d`, `s` hold `(blocks - 1) * stride + 8` values.
        #[target_feature(enable = $features)]
        pub unsafe fn $q41(
            w: &[u8],
            y: &[BlockQ8],
            d: &[f32],
            s: &[f32],
            stride: usize,
        ) -> [f32; X8] {
            let nb = w.len() / 20;
            debug_assert!(y.len() >= X8 * nb);
            debug_assert!(nb == 0 || (d.len().min(s.len()) >= (nb - 1) * stride + X8));
            let mut acc = [_mm256_setzero_ps(); X8];
            let mut summs = _mm256_setzero_ps();
            let mut scale = [0f32; X8];
            for (i, blk) in w.chunks_exact(20).enumerate() {
                let dm = header(blk);
                let q = unpack_nibbles(&blk[4..20]);
                // SAFETY: the caller guarantees 8 scales and offsets at `i * stride` and
                // `nb` blocks per token in `y`; `scale` holds 8 values.
                unsafe {
                    let dy = _mm256_loadu_ps(d.as_ptr().add(i * stride));
                    let sy = _mm256_loadu_ps(s.as_ptr().add(i * stride));
                    let sc = _mm256_mul_ps(_mm256_broadcastss_ps(dm), dy);
                    let off = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), sy);
                    summs = _mm256_add_ps(summs, off);
                    _mm256_storeu_ps(scale.as_mut_ptr(), sc);
                    let scale = broadcast_source(&scale);
                    let yb = y.as_ptr().add(i);
                    for t in 0..X8 {
                        let p = _mm256_cvtepi32_ps($dot(q, load_qs(&*yb.add(t * nb))));
                        acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scale[t]), p, acc[t]);
                    }
                }
            }
            let mut offs = [0f32; X8];
            // SAFETY: `offs` holds 8 values.
            unsafe { _mm256_storeu_ps(offs.as_mut_ptr(), summs) };
            std::array::from_fn(|t| hsum(acc[t]) + offs[t])
        }

        /// Q8_0 weights against 8 activation vectors (`y`: their blocks, token after
        /// token); `d` holds their scales block-major with `stride`.
        ///
        /// # Safety
        /// The CPU must support the target features named; `y` holds `8 * w.len() / 34`
        /// blocks, and `d` holds `(blocks - 1) * stride + 8` values.
        #[target_feature(enable = $features)]
        pub unsafe fn $q80(w: &[u8], y: &[BlockQ8], d: &[f32], stride: usize) -> [f32; X8] {
            let nb = w.len() / 34;
            debug_assert!(y.len() >= X8 * nb);
            debug_assert!(nb == 0 || d.len() >= (nb - 1) * stride + X8);
            let mut acc = [_mm256_setzero_ps(); X8];
            let mut scale = [0f32; X8];
            for (i, blk) in w.chunks_exact(34).enumerate() {
                let dw = header(blk);
                let qb = &blk[2..34];
                // SAFETY: `qb` is exactly 32 bytes; the caller guarantees 8 scales at
                // `i * stride` and `nb` blocks per token in `y`; `scale` holds 8 values.
                unsafe {
                    let q = _mm256_loadu_si256(qb.as_ptr().cast());
                    let aq = _mm256_sign_epi8(q, q);
                    let dy = _mm256_loadu_ps(d.as_ptr().add(i * stride));
                    _mm256_storeu_ps(
                        scale.as_mut_ptr(),
                        _mm256_mul_ps(_mm256_broadcastss_ps(dw), dy),
                    );
                    let scale = broadcast_source(&scale);
                    let yb = y.as_ptr().add(i);
                    for t in 0..X8 {
                        let sy = _mm256_sign_epi8(load_qs(&*yb.add(t * nb)), q);
                        let p = _mm256_cvtepi32_ps($dot(aq, sy));
                        acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scale[t]), p, acc[t]);
                    }
                }
            }
            acc.map(|a| hsum(a))
        }
    };
}

/// `v` as the compiler must read it back from memory: the eight scales are stored once and
/// each broadcast straight from memory (a load-port operation), where the compiler would
/// otherwise extract them lane by lane with shuffles, all on one execution port.
#[inline(always)]
fn broadcast_source(v: &[f32; X8]) -> &[f32; X8] {
    std::hint::black_box(v)
}

#[inline]
#[target_feature(enable = "avx2")]
fn dot8_avx2(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,avxvnni")]
fn dot8_avxvnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
}

#[inline]
#[target_feature(enable = "avx2,avx512vnni,avx512vl")]
fn dot8_avx512vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

kernels_x8!(
    "avx2,fma,f16c",
    dot_q4_1_x8_avx2,
    dot_q8_0_x8_avx2,
    dot8_avx2
);
kernels_x8!(
    "avx2,fma,f16c,avxvnni",
    dot_q4_1_x8_avxvnni,
    dot_q8_0_x8_avxvnni,
    dot8_avxvnni
);
kernels_x8!(
    "avx2,fma,f16c,avx512vnni,avx512vl",
    dot_q4_1_x8_avx512vnni,
    dot_q8_0_x8_avx512vnni,
    dot8_avx512vnni
);

/// Q4_1 weights against 8 activation vectors with the given [`Dot8`] form.
///
/// # Safety
/// As the `dot_q4_1_x8_*` kernels, and the CPU must have `form`'s features.
pub unsafe fn dot_q4_1_x8(
    form: Dot8,
    w: &[u8],
    ys: &[BlockQ8],
    d: &[f32],
    s: &[f32],
    stride: usize,
) -> [f32; X8] {
    // SAFETY: forwarded from the caller.
    unsafe {
        match form {
            Dot8::Avx2 => dot_q4_1_x8_avx2(w, ys, d, s, stride),
            Dot8::AvxVnni => dot_q4_1_x8_avxvnni(w, ys, d, s, stride),
            Dot8::Avx512Vnni => dot_q4_1_x8_avx512vnni(w, ys, d, s, stride),
        }
    }
}

/// Q8_0 weights against 8 activation vectors with the given [`Dot8`] form.
///
/// # Safety
/// As the `dot_q8_0_x8_*` kernels, and the CPU must have `form`'s features.
pub unsafe fn dot_q8_0_x8(
    form: Dot8,
    w: &[u8],
    ys: &[BlockQ8],
    d: &[f32],
    stride: usize,
) -> [f32; X8] {
    // SAFETY: forwarded from the caller.
    unsafe {
        match form {
            Dot8::Avx2 => dot_q8_0_x8_avx2(w, ys, d, stride),
            Dot8::AvxVnni => dot_q8_0_x8_avxvnni(w, ys, d, stride),
            Dot8::Avx512Vnni => dot_q8_0_x8_avx512vnni(w, ys, d, stride),
        }
    }
}

/// Quantizes 32-value blocks to 8 bits like llama.cpp's AVX2 quantizer: scale
/// `amax / 127`, multiplier `127 / amax`, round half to even; `d` (and `s`) kept at f16
/// precision.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.len()` is a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], with_sum: bool, out: &mut Vec<BlockQ8>) {
    let sign = _mm256_set1_ps(-0.0);
    for blk in x.chunks_exact(32) {
        // SAFETY: `blk` holds 32 floats.
        let v = unsafe {
            [
                _mm256_loadu_ps(blk.as_ptr()),
                _mm256_loadu_ps(blk.as_ptr().add(8)),
                _mm256_loadu_ps(blk.as_ptr().add(16)),
                _mm256_loadu_ps(blk.as_ptr().add(24)),
            ]
        };
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        let i = v.map(|vi| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(vi, mul)))
        });
        let mut qs = [0i8; 32];
        // Packing interleaves 128-bit lanes; the permute puts the bytes back in order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `qs` is 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
        let s = if with_sum {
            let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256::<1>(sum),
            );
            let s4 = _mm_hadd_epi32(s4, s4);
            let s4 = _mm_hadd_epi32(s4, s4);
            round_f16(d * _mm_cvtsi128_si32(s4) as f32)
        } else {
            0.0
        };
        out.push(BlockQ8 {
            d: round_f16(d),
            s,
            qs,
        });
    }
}

#[inline]
#[target_feature(enable = "f16c")]
fn round_f16(v: f32) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(
        _mm_set_ss(v),
    )))
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

/// e^x for 8 lanes: the polynomial exponential llama.cpp's AVX2 build uses in softmax and
/// SiLU (max error about 1.5 ulp), reproduced so results match it bit for bit.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn exp8(x: __m256) -> __m256 {
    let shift = _mm256_set1_ps(f32::from_bits(0x4b40_0000)); // 1.5 * 2^23
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), shift); // log2(e)
    let n = _mm256_sub_ps(z, shift);
    // r = x - n·ln2, with ln2 split in two parts for accuracy.
    let hi = _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x);
    let b = _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x35bf_be8e)), hi);
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let c4 = _mm256_set1_ps(f32::from_bits(0x3c07_2010));
    let c3 = _mm256_set1_ps(f32::from_bits(0x3d2b_9f17));
    let c2 = _mm256_set1_ps(f32::from_bits(0x3e2a_af33));
    let c1 = _mm256_set1_ps(f32::from_bits(0x3eff_fedb));
    let c0 = _mm256_set1_ps(f32::from_bits(0x3f7f_fff6));
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(c4, b, c3), u, _mm256_fmadd_ps(c2, b, c1)),
        u,
        _mm256_mul_ps(c0, b),
    );
    if _mm256_movemask_ps(big) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    // Out of the normal range: scale in two steps to reach subnormals, or saturate.
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let scaled = _mm256_blendv_ps(
        _mm256_fmadd_ps(k, j, k),
        _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1),
        big,
    );
    _mm256_blendv_ps(scaled, _mm256_mul_ps(s1, s1), huge)
}

/// In-place softmax of `s` with llama.cpp's AVX2 arithmetic: polynomial `exp` over groups
/// of 8 with an f64 running sum of each group's horizontal sum, libm `exp` for the tail.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 floats.
        let v = exp8(_mm256_sub_ps(
            unsafe { _mm256_loadu_ps(c.as_ptr()) },
            _mm256_set1_ps(max),
        ));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) };
        let h = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        sum += f64::from(_mm_cvtss_f32(h));
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

/// `x / (1 + e^-x) * g` in place over `x`, like llama.cpp's AVX2 SwiGLU.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn swiglu(x: &mut [f32], g: &[f32]) {
    let n = x.len().min(g.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds both loads and the store.
        unsafe {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), xv));
            let silu = _mm256_div_ps(xv, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(
                x.as_mut_ptr().add(i),
                _mm256_mul_ps(silu, _mm256_loadu_ps(g.as_ptr().add(i))),
            );
        }
        i += 8;
    }
    while i < n {
        x[i] = x[i] / (1.0 + (-x[i]).exp()) * g[i];
        i += 1;
    }
}

/// Dot product of two f16-valued vectors in llama.cpp's order: four 8-lane FMA
/// accumulators over 32-element steps, a fixed reduction tree, then an f64 tail.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f16_ordered(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n & !31;
    let mut sumf = 0f64;
    if np > 0 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, s) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8j + 8 <= np <= n bounds both loads.
                unsafe {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * j));
                    *s = _mm256_fmadd_ps(x, y, *s);
                }
            }
            i += 32;
        }
        let s01 = _mm256_add_ps(acc[0], acc[2]);
        let s23 = _mm256_add_ps(acc[1], acc[3]);
        let s = _mm256_add_ps(s01, s23);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let t1 = _mm_hadd_ps(t0, t0);
        sumf = f64::from(_mm_cvtss_f32(_mm_hadd_ps(t1, t1)));
    }
    for i in np..n {
        sumf += f64::from(a[i] * b[i]);
    }
    sumf as f32
}
