#![allow(clippy::unwrap_used)]

use super::*;
use half::f16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() % 20_001) as f32 / 10_000.0 - 1.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// Random weights of `dtype` with sane (finite, small) scales.
fn random_blocks(rng: &mut Rng, dtype: GgmlType, n_blocks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n_blocks {
        match dtype {
            GgmlType::Q4_1 => {
                out.extend(f16b(rng.f() * 0.05));
                out.extend(f16b(rng.f() * 0.2));
                out.extend((0..16).map(|_| rng.byte()));
            }
            GgmlType::Q4_0 => {
                out.extend(f16b(rng.f() * 0.05));
                out.extend((0..16).map(|_| rng.byte()));
            }
            GgmlType::Q8_0 => {
                out.extend(f16b(rng.f() * 0.01));
                out.extend((0..32).map(|_| rng.byte()));
            }
            _ => unreachable!(),
        }
    }
    out
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn simd_kernels_match_scalar() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &n_blocks in &[1usize, 3, 18, 48] {
        let x: Vec<f32> = (0..n_blocks * QK).map(|_| rng.f() * 3.0).collect();
        let y0 = quantize_q8(&x, false);
        let y1 = quantize_q8(&x, true);
        let w41 = random_blocks(&mut rng, GgmlType::Q4_1, n_blocks);
        let w40 = random_blocks(&mut rng, GgmlType::Q4_0, n_blocks);
        let w80 = random_blocks(&mut rng, GgmlType::Q8_0, n_blocks);
        let [a] = simd::dot_q4_1_n(&w41, [&y1[..]]);
        assert!(close(a, scalar::dot_q4_1(&w41, &y1)));
        let [a] = simd::dot_q4_0_n(&w40, [&y0[..]]);
        assert!(close(a, scalar::dot_q4_0(&w40, &y0)));
        let [a] = simd::dot_q8_0_n(&w80, [&y0[..]]);
        assert!(close(a, scalar::dot_q8_0(&w80, &y0)));
        // The multi-token kernel gives each token exactly the single-token result.
        let four = simd::dot_q4_1_n(&w41, [&y1[..], &y0[..], &y1[..], &y1[..]]);
        assert_eq!(four[0], simd::dot_q4_1_n(&w41, [&y1[..]])[0]);
        assert_eq!(four[1], simd::dot_q4_1_n(&w41, [&y0[..]])[0]);
        // The SIMD quantizer agrees with the portable one bit for bit.
        let mut sq = Vec::new();
        scalar::quantize_q8(&x, true, &mut sq);
        for (a, b) in sq.iter().zip(&y1) {
            assert_eq!((a.d, a.s, a.qs), (b.d, b.s, b.qs));
        }
        let z: Vec<f32> = (0..x.len()).map(|_| rng.f()).collect();
        assert!(close(simd::dot_f32(&x, &z), scalar::dot_f32(&x, &z)));
    }
}

#[test]
fn quantized_dot_tracks_f32_dot() {
    // The 8-bit activation path must stay within quantization error of the exact product.
    let mut rng = Rng(42);
    let cols = 576;
    let w = random_blocks(&mut rng, GgmlType::Q4_1, cols / QK);
    let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
    let mut wf = vec![0f32; cols];
    for (b, out) in w.chunks_exact(20).zip(wf.chunks_exact_mut(QK)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
        for j in 0..16 {
            out[j] = f32::from(b[4 + j] & 15) * d + m;
            out[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
        }
    }
    let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
    let [q] = simd::dot_q4_1_n(&w, [&quantize_q8(&x, true)[..]]);
    let norm: f32 = wf.iter().map(|v| v.abs()).sum::<f32>() / 127.0;
    assert!((exact - q).abs() <= norm, "exact {exact} vs quantized {q}");
}

#[test]
fn quantize_q8_round_trips_within_half_step() {
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..QK * 4).map(|_| rng.f() * 10.0).collect();
    for (blk, q) in x.chunks_exact(QK).zip(quantize_q8(&x, true)) {
        let mut sum = 0i32;
        for (v, qv) in blk.iter().zip(q.qs) {
            assert!((v - f32::from(qv) * q.d).abs() <= q.d * 0.51 + 1e-3);
            sum += i32::from(qv);
        }
        // `s` is stored at f16 precision, like the scale itself.
        let want = q.d * sum as f32;
        assert!(
            (q.s - want).abs() <= 2e-3 * (1.0 + want.abs()),
            "{} vs {want}",
            q.s
        );
    }
    // An all-zero block must not divide by zero.
    let z = quantize_q8(&[0.0; QK], false);
    assert_eq!(z[0].d, 0.0);
    assert!(z[0].qs.iter().all(|&v| v == 0));
}

#[test]
fn matmul_batches_equal_single_rows() {
    let mut rng = Rng(99);
    let (rows, cols, n) = (37, 64, 5);
    let w = QMatrix::new(
        GgmlType::Q4_1,
        rows,
        cols,
        random_blocks(&mut rng, GgmlType::Q4_1, rows * cols / QK),
    )
    .unwrap();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.f()).collect();
    let mut all = vec![0f32; n * rows];
    w.matmul(&mut Acts::new(&x, n, cols).unwrap(), &mut all)
        .unwrap();
    for t in 0..n {
        let mut one = vec![0f32; rows];
        w.matmul(
            &mut Acts::new(&x[t * cols..(t + 1) * cols], 1, cols).unwrap(),
            &mut one,
        )
        .unwrap();
        assert_eq!(&all[t * rows..(t + 1) * rows], &one[..]);
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(QMatrix::new(GgmlType::Q4_1, 2, 33, vec![0; 40]).is_err());
    assert!(QMatrix::new(GgmlType::Q4_1, 2, 32, vec![0; 39]).is_err());
    let w = QMatrix::new(GgmlType::Q4_1, 2, 32, vec![0; 40]).unwrap();
    let x = vec![0f32; 64];
    let mut out = vec![0f32; 3];
    assert!(
        w.matmul(&mut Acts::new(&x, 2, 32).unwrap(), &mut out)
            .is_err()
    );
    assert!(Acts::new(&x, 3, 32).is_err());
}

#[test]
fn types_without_a_fused_kernel_match_dequantize_then_dot() {
    // Q4_K / Q6_K / F16 rows are dequantized into scratch and dotted in f32.
    let mut rng = Rng(5);
    let cols = 256;
    for dtype in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::F32] {
        let rows = 3;
        let n_bytes = rows * cols / dtype.block_size() * dtype.type_size();
        let mut data: Vec<u8> = (0..n_bytes).map(|_| rng.byte()).collect();
        // Keep every f16 scale (and F16 value) small and finite.
        let step = dtype.type_size();
        match dtype {
            GgmlType::Q4_K => data.chunks_exact_mut(step).for_each(|b| {
                b[..2].copy_from_slice(&f16b(0.01));
                b[2..4].copy_from_slice(&f16b(0.02));
            }),
            GgmlType::Q6_K => data
                .chunks_exact_mut(step)
                .for_each(|b| b[208..].copy_from_slice(&f16b(0.01))),
            GgmlType::F16 => data
                .chunks_exact_mut(2)
                .for_each(|b| b.copy_from_slice(&f16b(rng.f()))),
            _ => data
                .chunks_exact_mut(4)
                .for_each(|b| b.copy_from_slice(&rng.f().to_le_bytes())),
        }
        let w = QMatrix::new(dtype, rows, cols, data).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
        let mut out = vec![0f32; rows];
        w.matmul(&mut Acts::new(&x, 1, cols).unwrap(), &mut out)
            .unwrap();
        for (r, &got) in out.iter().enumerate() {
            let mut row = vec![0f32; cols];
            w.dequantize_row(r, &mut row).unwrap();
            let want: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            assert!(close(got, want), "{dtype:?} row {r}: {got} vs {want}");
        }
    }
}

/// The 8-token kernels give the many-token kernels' results bit for bit, in every
/// instruction form this CPU has, for Q4_1 and Q8_0 (and matmul over 8+ tokens uses them).
#[cfg(target_arch = "x86_64")]
#[test]
fn eight_token_kernels_equal_the_others() {
    use super::x86::{self, Dot8};
    if !x86::has_avx2() {
        return;
    }
    let mut forms = vec![Dot8::Avx2];
    if is_x86_feature_detected!("avxvnni") {
        forms.push(Dot8::AvxVnni);
    }
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        forms.push(Dot8::Avx512Vnni);
    }
    let mut rng = Rng(7);
    let (nb, n) = (48, 11);
    let x: Vec<f32> = (0..n * nb * QK).map(|_| rng.f() * 4.0).collect();
    for dtype in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let w = random_blocks(&mut rng, dtype, nb);
        let acts = {
            let mut a = Acts::new(&x, n, nb * QK).unwrap();
            a.prepare(
                QMatrix::new(dtype, 1, nb * QK, w.clone())
                    .unwrap()
                    .act_kind(),
            );
            a
        };
        let view = acts.view(
            QMatrix::new(dtype, 1, nb * QK, w.clone())
                .unwrap()
                .act_kind(),
        );
        assert_eq!(view.dt.len(), n * nb);
        for t0 in [0, 3] {
            let ys = &view.q[t0 * nb..(t0 + 8) * nb];
            let want: Vec<f32> = (0..8)
                .map(|k| {
                    let y = &ys[k * nb..(k + 1) * nb];
                    let [v] = match dtype {
                        GgmlType::Q4_1 => simd::dot_q4_1_n(&w, [y]),
                        _ => simd::dot_q8_0_n(&w, [y]),
                    };
                    v
                })
                .collect();
            for &form in &forms {
                // SAFETY: the features of `form` were detected above; shapes match.
                let got = unsafe {
                    match dtype {
                        GgmlType::Q4_1 => {
                            x86::dot_q4_1_x8(form, &w, ys, &view.dt[t0..], &view.st[t0..], n)
                        }
                        _ => x86::dot_q8_0_x8(form, &w, ys, &view.dt[t0..], n),
                    }
                };
                let (g, e): (Vec<u32>, Vec<u32>) = (
                    got.iter().map(|v| v.to_bits()).collect(),
                    want.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(g, e, "{dtype:?} {form:?} from token {t0}");
            }
        }
    }
}

/// Speed of the 8-token kernels against the 4-token ones (`cargo test --release -p
/// kwaainet-core --lib x8_speed -- --ignored --nocapture`): one thread, a 1536 × 576 Q4_1
/// matrix (the default model's FFN shape) against 16 tokens, best of 15 alternating runs.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "a benchmark; prints numbers"]
#[allow(clippy::print_stderr)]
fn x8_speed() {
    use std::time::Instant;
    if !super::x86::has_avx2() {
        return;
    }
    let mut rng = Rng(11);
    let (rows, cols, n) = (1536, 576, 16);
    let nb = cols / QK;
    let w = random_blocks(&mut rng, GgmlType::Q4_1, rows * nb);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.f()).collect();
    let mut acts = Acts::new(&x, n, cols).unwrap();
    acts.prepare(ActKind::Q8_1);
    let v = acts.view(ActKind::Q8_1);
    let (mut best4, mut best8) = (f64::MAX, f64::MAX);
    let mut sink = 0f32;
    for _ in 0..15 {
        let t = Instant::now();
        for r in 0..rows {
            let wr = &w[r * nb * 20..(r + 1) * nb * 20];
            for t0 in (0..n).step_by(4) {
                let ys: [&[BlockQ8]; 4] =
                    std::array::from_fn(|k| &v.q[(t0 + k) * nb..(t0 + k + 1) * nb]);
                sink += simd::dot_q4_1_n(wr, ys)[0];
            }
        }
        best4 = best4.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for r in 0..rows {
            let wr = &w[r * nb * 20..(r + 1) * nb * 20];
            for t0 in (0..n).step_by(8) {
                let ys = &v.q[t0 * nb..(t0 + 8) * nb];
                sink +=
                    simd::dot_x8(GgmlType::Q4_1, wr, ys, &v.dt[t0..], &v.st[t0..], n).unwrap()[0];
            }
        }
        best8 = best8.min(t.elapsed().as_secs_f64());
    }
    let gmac = (rows * cols * n) as f64 / 1e9;
    eprintln!(
        "Q4_1 {rows}x{cols} x {n} tokens: 4-token kernels {:.1} GMAC/s, 8-token ({:?}) {:.1} GMAC/s ({sink})",
        gmac / best4,
        super::x86::best_dot8(),
        gmac / best8
    );
}
