//! Portable reference kernels; the SIMD versions must agree with these.

use super::{BlockQ8, QK};

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn dot_q4_1(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, yb) in w.chunks_exact(20).zip(y) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs = &blk[4..20];
        let mut isum = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            isum += i32::from(q & 0x0f) * i32::from(yb.qs[j]);
            isum += i32::from(q >> 4) * i32::from(yb.qs[j + QK / 2]);
        }
        sum += d * yb.d * isum as f32 + m * yb.s;
    }
    sum
}

pub fn dot_q4_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, yb) in w.chunks_exact(18).zip(y) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..18];
        let mut isum = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            isum += (i32::from(q & 0x0f) - 8) * i32::from(yb.qs[j]);
            isum += (i32::from(q >> 4) - 8) * i32::from(yb.qs[j + QK / 2]);
        }
        sum += d * yb.d * isum as f32;
    }
    sum
}

pub fn dot_q8_0(w: &[u8], y: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (blk, yb) in w.chunks_exact(34).zip(y) {
        let d = f16_at(blk, 0);
        let mut isum = 0i32;
        for j in 0..QK {
            isum += i32::from(blk[2 + j] as i8) * i32::from(yb.qs[j]);
        }
        sum += d * yb.d * isum as f32;
    }
    sum
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: lets the compiler vectorise and mirrors the SIMD order loosely.
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

pub fn quantize_q8(x: &[f32], with_sum: bool, out: &mut Vec<BlockQ8>) {
    let round_f16 = |v: f32| half::f16::from_f32(v).to_f32();
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // `127 / amax` rather than `1 / d`, like the reference quantizer: the two differ in
        // the last bit, which can move a value across a rounding boundary.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(blk) {
            // Round half to even, as the SIMD reference quantizer does.
            let r = (v * id).round_ties_even() as i32;
            *q = r.clamp(-127, 127) as i8;
            sum += i32::from(*q);
        }
        let s = if with_sum {
            round_f16(d * sum as f32)
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
