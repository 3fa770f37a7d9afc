//! Single-precision sine and cosine that give the same bits on every target.
//!
//! RoPE's angles are where this engine and llama.cpp first part ways: llama.cpp takes
//! `cosf`/`sinf` from the C library, and on x86-64 Linux that is glibc's implementation (the
//! Arm optimized-routines algorithm, built with FMA contraction on any CPU with AVX2+FMA),
//! while Rust's `f32::cos` is glibc's on native Linux but a port of musl's on wasm32. The two
//! disagree in the last bit for about one angle in a few hundred, the 8-bit activations
//! amplify that into logits, and the browser and native engines would give different tokens.
//!
//! So this module computes sine and cosine the way glibc's FMA build does, in portable Rust:
//! the argument in double precision; below π/4 a polynomial straight away; below 120 one
//! multiply-subtract by π/2 to reduce it; above, an exact fixed-point product with 2/π's
//! binary expansion; then the sine or cosine polynomial of the quadrant, with a fused
//! multiply-add wherever GCC contracts one, rounded once to f32. The results are glibc's
//! bit for bit (tested against the C library natively); being plain IEEE arithmetic they
//! are the same on wasm32, and everything runs on the CPU once per position, not per token.

/// The polynomial coefficients for one half-turn: `c0..c4` approximate cos (negated in the
/// second half, so the sign comes for free), `s1..s3` sin's odd terms.
struct Poly {
    c0: f64,
    c1: f64,
    c2: f64,
    c3: f64,
    c4: f64,
    s1: f64,
    s2: f64,
    s3: f64,
}

const S1: f64 = -0.16666654943701084;
const S2: f64 = 0.008332178146138854;
const S3: f64 = -0.00019517298981385725;

const POLY: [Poly; 2] = [
    Poly {
        c0: 1.0,
        c1: -0.49999999725108224,
        c2: 0.041666623324344516,
        c3: -0.001388676379437604,
        c4: 2.4390450703564542e-05,
        s1: S1,
        s2: S2,
        s3: S3,
    },
    Poly {
        c0: -1.0,
        c1: 0.49999999725108224,
        c2: -0.041666623324344516,
        c3: 0.001388676379437604,
        c4: -2.4390450703564542e-05,
        s1: S1,
        s2: S2,
        s3: S3,
    },
];

/// Sign of the sine in quadrants 0..3.
const QUADRANT_SIGN: [f64; 4] = [1.0, -1.0, -1.0, 1.0];
/// 2/π scaled by 2^24, so the quadrant lands in bits 24..31 of the truncated product.
const HALF_PI_INV_2P24: f64 = 10680707.430881744;
/// π/2 in double precision.
const HALF_PI: f64 = std::f64::consts::FRAC_PI_2;
/// 2π · 2^-64: the weight of the fixed-point remainder of the large reduction.
const PI_2P_NEG_63: f64 = 3.4061215800865545e-19;

/// The binary expansion of 2/π, as overlapping 32-bit windows advancing 8 bits per entry
/// (entry `i` holds bits `8i - 24 .. 8i + 8` after the binary point), so a reduction can read
/// 96 bits starting at any byte with aligned loads.
const TWO_OVER_PI: [u32; 24] = [
    0x000000a2, 0x0000a2f9, 0x00a2f983, 0xa2f9836e, 0xf9836e4e, 0x836e4e44, 0x6e4e4415, 0x4e441529,
    0x441529fc, 0x1529fc27, 0x29fc2757, 0xfc2757d1, 0x2757d1f5, 0x57d1f534, 0xd1f534dd, 0xf534ddc0,
    0x34ddc0db, 0xddc0db62, 0xc0db6295, 0xdb629599, 0x6295993c, 0x95993c43, 0x993c4390, 0x3c439041,
];

/// The float's top 12 bits without the sign: a cheap magnitude class.
fn abstop12(x: f32) -> u32 {
    (x.to_bits() >> 20) & 0x7ff
}

/// Magnitude classes of the branch points: π/4, 2^-12, 120 and infinity.
const TOP_PIO4: u32 = 0x3f4;
const TOP_TINY: u32 = 0x398;
const TOP_120: u32 = 0x42f;
const TOP_INF: u32 = 0x7f8;

/// `x` (|x| < 120) reduced by the nearest multiple of π/2: the remainder and the quadrant.
fn reduce_small(x: f64) -> (f64, i32) {
    let r = x * HALF_PI_INV_2P24;
    // Truncation, then the +0.5 in the scaled domain and an arithmetic shift: rounds to
    // nearest without a rounding instruction, negative values included.
    let n = ((r as i32).wrapping_add(0x80_0000)) >> 24;
    ((-f64::from(n)).mul_add(HALF_PI, x), n)
}

/// `|x|` (≥ 120, finite) reduced by π/2 exactly: a 32×96-bit product with 2/π gives the
/// remainder in 2.62 fixed point, accurate to 33 bits or more once in double precision.
fn reduce_large(bits: u32) -> (f64, i32) {
    let window = &TWO_OVER_PI[((bits >> 26) & 15) as usize..];
    let shift = (bits >> 23) & 7;
    let m = ((bits & 0xff_ffff) | 0x80_0000) << shift;
    let low = u64::from(m.wrapping_mul(window[0]));
    let mid = u64::from(m) * u64::from(window[4]);
    let high = u64::from(m) * u64::from(window[8]);
    let mut r = ((high >> 32) | (low << 32)).wrapping_add(mid);
    let n = r.wrapping_add(1 << 61) >> 62;
    r = r.wrapping_sub(n << 62);
    ((r as i64) as f64 * PI_2P_NEG_63, n as i32)
}

/// sin of a reduced argument `x` (`x2 = x²`) for an even quadrant, cos for an odd one.
fn poly(x: f64, x2: f64, p: &Poly, quadrant: i32) -> f32 {
    if quadrant & 1 == 0 {
        let x3 = x * x2;
        let s1 = x2.mul_add(p.s3, p.s2);
        let x7 = x3 * x2;
        let s = x3.mul_add(p.s1, x);
        x7.mul_add(s1, s) as f32
    } else {
        let x4 = x2 * x2;
        let c2 = x2.mul_add(p.c4, p.c3);
        let c1 = x2.mul_add(p.c1, p.c0);
        let x6 = x4 * x2;
        let c = x4.mul_add(p.c2, c1);
        x6.mul_add(c2, c) as f32
    }
}

/// `sin(y)` (or `cos(y)` when `cos`), as glibc's FMA build computes it.
fn sin_or_cos(y: f32, cos: bool) -> f32 {
    let top = abstop12(y);
    let x = f64::from(y);
    let shift = i32::from(cos);
    if top < TOP_PIO4 {
        if top < TOP_TINY {
            return if cos { 1.0 } else { y };
        }
        return poly(x, x * x, &POLY[0], shift);
    }
    // The quadrant picks the polynomial; the signed quadrant (the large reduction works on
    // |y|, so a negative y moves it one on) picks the signs.
    let (r, quadrant, signed) = if top < TOP_120 {
        let (r, n) = reduce_small(x);
        (r, n, n)
    } else if top < TOP_INF {
        let bits = y.to_bits();
        let (r, n) = reduce_large(bits);
        (r, n, n + (bits >> 31) as i32)
    } else {
        return f32::NAN;
    };
    let sign = QUADRANT_SIGN[(signed & 3) as usize];
    let p = &POLY[usize::from(signed & 2 != 0)];
    poly(r * sign, r * r, p, quadrant ^ shift)
}

/// Sine, bit for bit as glibc's `sinf` on x86-64 with FMA, on every target.
pub fn sinf(x: f32) -> f32 {
    sin_or_cos(x, false)
}

/// Cosine, bit for bit as glibc's `cosf` on x86-64 with FMA, on every target.
pub fn cosf(x: f32) -> f32 {
    sin_or_cos(x, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_two_over_pi() {
        for w in TWO_OVER_PI.windows(2).skip(2) {
            assert_eq!(w[0] & 0xff_ffff, w[1] >> 8, "windows overlap by 24 bits");
        }
        let v = f64::from(TWO_OVER_PI[3]) / 4_294_967_296.0
            + f64::from(TWO_OVER_PI[7]) / 4_294_967_296.0 / 4_294_967_296.0;
        assert!((v - std::f64::consts::FRAC_2_PI).abs() < 1e-15);
        assert!((HALF_PI_INV_2P24 / 16_777_216.0 - std::f64::consts::FRAC_2_PI).abs() < 1e-16);
    }

    #[test]
    fn close_to_the_true_values_everywhere() {
        let mut a = 1e-3f32;
        let mut worst = 0f64;
        while a < 3.0e5 {
            for x in [a, -a] {
                let (s, c) = f64::from(x).sin_cos();
                for (got, want) in [(sinf(x), s), (cosf(x), c)] {
                    let ulp =
                        f64::from(f32::EPSILON) * want.abs().max(f64::from(f32::MIN_POSITIVE));
                    worst = worst.max((f64::from(got) - want).abs() / ulp);
                }
            }
            a = a * 1.0001 + 1e-3;
        }
        assert!(worst < 1.0, "worst error {worst} ulp");
        assert_eq!((sinf(0.0), cosf(0.0)), (0.0, 1.0));
        assert_eq!(sinf(-1e-9), -1e-9);
        assert!(sinf(f32::INFINITY).is_nan() && cosf(f32::NAN).is_nan());
    }

    /// glibc ≥ 2.28 on x86-64 picks its FMA build of these routines when the CPU has AVX2 and
    /// FMA: there, every float of the ranges RoPE uses must come out the same.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn equal_to_glibc() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut checked = 0u64;
        let mut check = |x: f32| {
            let x = std::hint::black_box(x);
            assert_eq!(sinf(x).to_bits(), x.sin().to_bits(), "sin({x:e})");
            assert_eq!(cosf(x).to_bits(), x.cos().to_bits(), "cos({x:e})");
            checked += 1;
        };
        // Every float from 2^-13 to 2^17 in steps of 97 representable values (every branch,
        // ~2.6 million points) and the negatives of a sparser sample.
        let (lo, hi) = (2f32.powi(-13).to_bits(), 2f32.powi(17).to_bits());
        for bits in (lo..hi).step_by(97) {
            check(f32::from_bits(bits));
        }
        for bits in (lo..hi).step_by(1009) {
            check(-f32::from_bits(bits));
        }
        for x in [1e10f32, 3.4e38, -7.5e20, 1e-40, std::f32::consts::FRAC_PI_4] {
            check(x);
        }
        assert!(checked > 2_500_000);
    }
}
