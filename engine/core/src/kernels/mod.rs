//! Quantized matrix kernels: weights stay in their GGML block format and are dequantized
//! inside the dot product, against activations quantized the way llama.cpp does it
//! (Q8_0 for Q4_0/Q8_0 weights, Q8_1 for Q4_1), so results track the reference closely.
//!
//! SIMD paths: AVX2+FMA on x86-64 (picked at run time), NEON on aarch64 (part of every
//! AArch64 CPU), simd128 on wasm32 (when the module is built with `+simd128`), portable
//! scalar code elsewhere; all three SIMD sets give the same bits (llama.cpp's on AVX2), and
//! `KWAAINET_SCALAR_KERNELS=1` picks the portable kernels at run time (for benchmarks).
//! Batches of 8 tokens or more (prompts, batched decoding) run Q4_1 and Q8_0 weights
//! through 8-token x86-64 kernels that form the 8-bit products with one VNNI instruction
//! where the CPU has AVX-VNNI or AVX-512 VNNI (`KWAAINET_NO_VNNI=1` keeps AVX2's two) and
//! move the per-token scale work out of the inner loop; every path gives the same bits.
//! Types without a fused kernel (K-quants, F16, BF16) dequantize one row at a time into a
//! small scratch buffer and use an f32 dot, so memory still holds only the quantized
//! weights.

use crate::quant::{self, GgmlType};
use crate::{Error, Result};

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    target_feature = "relaxed-simd"
))]
mod wasm_relaxed;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Whether `KWAAINET_SCALAR_KERNELS=1` asks for the portable kernels instead of the SIMD
/// ones (read once).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn scalar_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("KWAAINET_SCALAR_KERNELS").as_deref() == Ok("1"))
}

/// Whether the NEON kernels run (always, unless the portable ones were asked for).
#[cfg(target_arch = "aarch64")]
fn has_neon() -> bool {
    !scalar_forced()
}

/// Whether the kernels that run here reproduce llama.cpp's AVX2 arithmetic bit for bit:
/// AVX2+FMA on x86-64, NEON on aarch64, simd128 on wasm32 (unless the portable kernels were
/// asked for). Where they do, the model's tokens and logits are llama.cpp's own.
#[allow(unreachable_code)]
pub fn bit_exact_with_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::has_avx2();
    #[cfg(target_arch = "aarch64")]
    return has_neon();
    cfg!(all(target_arch = "wasm32", target_feature = "simd128"))
}

/// The relaxed-SIMD kernels of a wasm32 build with `+relaxed-simd`: `Some(true)` where they
/// run (`relaxed_madd` is fused here), `Some(false)` where the probe found it unfused (the
/// plain simd128 kernels run), `None` in every other build.
pub fn relaxed_simd() -> Option<bool> {
    #[cfg(all(
        target_arch = "wasm32",
        target_feature = "simd128",
        target_feature = "relaxed-simd"
    ))]
    return Some(wasm_relaxed::fused());
    #[allow(unreachable_code)]
    None
}

/// Elements per block of the 8-bit activation formats.
pub const QK: usize = 32;

/// A weight matrix of `rows` × `cols` kept in its on-disk block format, row-major.
#[derive(Clone)]
pub struct QMatrix {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl QMatrix {
    /// Wraps `data` holding `rows` rows of `cols` elements of `dtype`.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let bs = dtype.block_size();
        if cols == 0 || rows == 0 || !cols.is_multiple_of(bs) {
            return Err(Error::Model(format!(
                "matrix {rows}x{cols} of {dtype:?} is not a whole number of {bs}-element blocks"
            )));
        }
        let row_bytes = cols / bs * dtype.type_size();
        let expected = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| Error::Model("matrix size overflows".into()))?;
        if data.len() != expected {
            return Err(Error::Model(format!(
                "matrix {rows}x{cols} of {dtype:?} needs {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// Storage type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }
    /// Output size.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input size.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held.
    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }

    /// The raw blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantizes row `r` into `out` (`cols` elements), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(Error::InvalidArgument(format!(
                "row {r} of a {}x{} matrix into {} values",
                self.rows,
                self.cols,
                out.len()
            )));
        }
        quant::dequantize(self.dtype, self.row(r), out)
    }

    /// The activation format this matrix's fused kernel consumes.
    fn act_kind(&self) -> ActKind {
        match self.dtype {
            GgmlType::Q4_0 | GgmlType::Q8_0 => ActKind::Q8_0,
            GgmlType::Q4_1 => ActKind::Q8_1,
            _ => ActKind::F32,
        }
    }

    /// `out[t * rows + r] = dot(row r, x[t])` for every token `t` of `x` (`n × cols`).
    ///
    /// Each weight row is read once per call whatever the number of tokens, and rows are
    /// split across the current rayon pool's threads when the `threads` feature is on.
    pub fn matmul(&self, x: &mut Acts<'_>, out: &mut [f32]) -> Result<()> {
        matmul_many(&mut [(self, out)], x)
    }

    /// Rows `r0..r0 + buf.len() / n` against every token, into `buf` (`[row][token]`).
    fn compute_rows(&self, acts: &ActView<'_>, n: usize, r0: usize, buf: &mut [f32]) {
        let mut scratch = Vec::new();
        let nb = self.cols / QK;
        for (i, dst) in buf.chunks_exact_mut(n).enumerate() {
            let w = self.row(r0 + i);
            let mut t = 0;
            // Eight tokens at a time where a kernel for them exists (x86-64: Q4_1, Q8_0).
            while t + 8 <= n && !acts.dt.is_empty() {
                let ys = &acts.q[t * nb..(t + 8) * nb];
                let Some(v) = simd::dot_x8(self.dtype, w, ys, &acts.dt[t..], &acts.st[t..], n)
                else {
                    break;
                };
                dst[t..t + 8].copy_from_slice(&v);
                t += 8;
            }
            while t + 4 <= n {
                let v: [f32; 4] = dot_rows(self.dtype, w, acts, t, self.cols, &mut scratch);
                dst[t..t + 4].copy_from_slice(&v);
                t += 4;
            }
            while t < n {
                let [v] = dot_rows::<1>(self.dtype, w, acts, t, self.cols, &mut scratch);
                dst[t] = v;
                t += 1;
            }
        }
    }
}

/// Several matrices applied to the same activations (e.g. Q, K and V) in one parallel
/// region, so threads start and meet once instead of once per matrix.
pub fn matmul_many(jobs: &mut [(&QMatrix, &mut [f32])], x: &mut Acts<'_>) -> Result<()> {
    let n = x.n;
    for (m, out) in jobs.iter() {
        if x.cols != m.cols || out.len() != n * m.rows {
            return Err(Error::InvalidArgument(format!(
                "matmul {}x{} with {n} inputs of {} into {} outputs",
                m.rows,
                m.cols,
                x.cols,
                out.len()
            )));
        }
        x.prepare(m.act_kind());
    }
    let x = &*x;
    let total_rows: usize = jobs.iter().map(|(m, _)| m.rows).sum();
    let chunk_rows = pick_chunk(total_rows);
    // With one token the output of a row range is contiguous; with more it is strided by
    // token, so each matrix gets a `[row][token]` buffer, transposed afterwards.
    let mut tmps: Vec<Vec<f32>> = if n == 1 {
        Vec::new()
    } else {
        jobs.iter().map(|(m, _)| vec![0f32; m.rows * n]).collect()
    };
    let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
    if n == 1 {
        for (m, out) in jobs.iter_mut() {
            for (ci, buf) in out.chunks_mut(chunk_rows).enumerate() {
                tasks.push((m, ci * chunk_rows, buf));
            }
        }
    } else {
        for ((m, _), tmp) in jobs.iter().zip(tmps.iter_mut()) {
            for (ci, buf) in tmp.chunks_mut(chunk_rows * n).enumerate() {
                tasks.push((m, ci * chunk_rows, buf));
            }
        }
    }
    run_tasks(&mut tasks, |(m, r0, buf)| {
        m.compute_rows(&x.view(m.act_kind()), n, *r0, buf)
    });
    if n > 1 {
        for ((m, out), tmp) in jobs.iter_mut().zip(&tmps) {
            for (r, col) in tmp.chunks_exact(n).enumerate() {
                for (t, v) in col.iter().enumerate() {
                    out[t * m.rows + r] = *v;
                }
            }
        }
    }
    Ok(())
}

fn pick_chunk(rows: usize) -> usize {
    // A few chunks per thread: enough to balance, few enough that scheduling is cheap.
    #[cfg(feature = "threads")]
    let parts = 4 * rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    let parts = 1;
    rows.div_ceil(parts).max(16)
}

/// Threads of the current pool (1 without the `threads` feature).
pub(crate) fn threads() -> usize {
    #[cfg(feature = "threads")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    1
}

/// Runs `f` on every task, spread over the current pool's threads.
#[cfg(all(feature = "threads", not(target_arch = "wasm32")))]
pub(crate) fn run_tasks<T: Send, F>(tasks: &mut [T], f: F)
where
    F: Fn(&mut T) + Sync + Send,
{
    use rayon::prelude::*;
    if rayon::current_num_threads() <= 1 || tasks.len() <= 1 {
        tasks.iter_mut().for_each(f);
    } else {
        tasks.par_iter_mut().for_each(&f);
    }
}

/// Runs `f` on every task, spread over the current pool's threads: each task a job of its
/// own, which runs to its end without waiting on anything (no nested `join`, as
/// `par_iter` splits). The browser's multi-threaded engine relies on that: while a step
/// runs, its other threads spin, taking jobs as they appear (engine/wasm's `in_pool`), and
/// a thread that waited inside a job could be caught in that spin.
#[cfg(all(feature = "threads", target_arch = "wasm32"))]
pub(crate) fn run_tasks<T: Send, F>(tasks: &mut [T], f: F)
where
    F: Fn(&mut T) + Sync + Send,
{
    if rayon::current_num_threads() <= 1 || tasks.len() <= 1 {
        tasks.iter_mut().for_each(f);
        return;
    }
    let f = &f;
    rayon::scope(|s| {
        for task in tasks.iter_mut() {
            s.spawn(move |_| f(task));
        }
    });
}

/// Runs `f` on every task (one thread: the `threads` feature is off).
#[cfg(not(feature = "threads"))]
pub(crate) fn run_tasks<T, F: Fn(&mut T)>(tasks: &mut [T], f: F) {
    tasks.iter_mut().for_each(f);
}

/// Which quantized form of the activations a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    F32,
    Q8_0,
    Q8_1,
}

/// One block of 32 activations quantized to 8 bits, llama.cpp's Q8_0/Q8_1 in spirit.
/// `d` and `s` hold f16-rounded values (as llama.cpp stores them) widened to f32.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct BlockQ8 {
    /// Scale.
    pub d: f32,
    /// `d * sum(qs)` (used by Q4_1's offset term).
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// A batch of `n` activation vectors of `cols` values, quantized lazily per kernel kind.
#[derive(Debug)]
pub struct Acts<'a> {
    x: &'a [f32],
    n: usize,
    cols: usize,
    q8_0: Vec<BlockQ8>,
    q8_1: Vec<BlockQ8>,
    have_q8_0: bool,
    have_q8_1: bool,
    /// Block-major scales (see [`ActView`]) of `q8_0` and of `q8_1` (`d`, then `s`).
    t8_0: Vec<f32>,
    t8_1: (Vec<f32>, Vec<f32>),
}

struct ActView<'a> {
    x: &'a [f32],
    q: &'a [BlockQ8],
    /// The blocks' scales `d` (and `s`) block-major (`[block * n + token]`), for the
    /// many-token kernels; empty for a single token.
    dt: &'a [f32],
    st: &'a [f32],
}

impl<'a> Acts<'a> {
    /// Wraps `n` row-major vectors of `cols` values.
    pub fn new(x: &'a [f32], n: usize, cols: usize) -> Result<Self> {
        if n == 0 || x.len() != n * cols {
            return Err(Error::InvalidArgument(format!(
                "{} activations are not {n} rows of {cols}",
                x.len()
            )));
        }
        Ok(Self {
            x,
            n,
            cols,
            q8_0: Vec::new(),
            q8_1: Vec::new(),
            have_q8_0: false,
            have_q8_1: false,
            t8_0: Vec::new(),
            t8_1: (Vec::new(), Vec::new()),
        })
    }

    fn prepare(&mut self, kind: ActKind) {
        match kind {
            ActKind::F32 => {}
            ActKind::Q8_0 if !self.have_q8_0 => {
                self.q8_0 = quantize_q8(self.x, false);
                self.t8_0 = self.block_major(&self.q8_0, |b| b.d);
                self.have_q8_0 = true;
            }
            ActKind::Q8_1 if !self.have_q8_1 => {
                self.q8_1 = quantize_q8(self.x, true);
                self.t8_1 = (
                    self.block_major(&self.q8_1, |b| b.d),
                    self.block_major(&self.q8_1, |b| b.s),
                );
                self.have_q8_1 = true;
            }
            _ => {}
        }
    }

    /// One field of every block, block-major (`[block * n + token]`), when the many-token
    /// kernels will read it (8 tokens or more); empty otherwise.
    fn block_major(&self, q: &[BlockQ8], field: impl Fn(&BlockQ8) -> f32) -> Vec<f32> {
        let nb = self.cols / QK;
        if self.n < 8 || nb == 0 || !simd::has_x8() {
            return Vec::new();
        }
        let mut out = vec![0f32; q.len()];
        for (t, row) in q.chunks_exact(nb).enumerate() {
            for (i, b) in row.iter().enumerate() {
                out[i * self.n + t] = field(b);
            }
        }
        out
    }

    fn view(&self, kind: ActKind) -> ActView<'_> {
        let (q, dt, st) = match kind {
            ActKind::Q8_0 => (&self.q8_0[..], &self.t8_0[..], &self.t8_0[..]),
            ActKind::Q8_1 => (&self.q8_1[..], &self.t8_1.0[..], &self.t8_1.1[..]),
            ActKind::F32 => (&[][..], &[][..], &[][..]),
        };
        ActView {
            x: self.x,
            q,
            dt,
            st,
        }
    }
}

/// Quantizes rows of 32-value blocks to 8 bits with a per-block scale (`amax / 127`).
/// `with_sum` also records `d * Σq`, needed by Q4_1's `m` term.
pub fn quantize_q8(x: &[f32], with_sum: bool) -> Vec<BlockQ8> {
    simd::quantize_q8(x, with_sum)
}

/// Dot products of weight row `w` with activation rows `t0..t0 + N`.
#[inline]
fn dot_rows<const N: usize>(
    dtype: GgmlType,
    w: &[u8],
    a: &ActView<'_>,
    t0: usize,
    cols: usize,
    scratch: &mut Vec<f32>,
) -> [f32; N] {
    let nb = cols / QK;
    let ys: [&[BlockQ8]; N] = std::array::from_fn(|i| {
        let t = t0 + i;
        a.q.get(t * nb..(t + 1) * nb).unwrap_or(&[])
    });
    match dtype {
        GgmlType::Q4_0 => simd::dot_q4_0_n(w, ys),
        GgmlType::Q4_1 => simd::dot_q4_1_n(w, ys),
        GgmlType::Q8_0 => simd::dot_q8_0_n(w, ys),
        GgmlType::F32 => std::array::from_fn(|i| {
            let t = t0 + i;
            let x = &a.x[t * cols..(t + 1) * cols];
            let mut acc = 0f32;
            for (wb, xv) in w.chunks_exact(4).zip(x) {
                acc += f32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]) * xv;
            }
            acc
        }),
        _ => {
            scratch.resize(cols, 0.0);
            // Lengths were validated when the matrix was built, so this cannot fail.
            if quant::dequantize(dtype, w, scratch).is_err() {
                return [f32::NAN; N];
            }
            std::array::from_fn(|i| {
                let t = t0 + i;
                simd::dot_f32(scratch, &a.x[t * cols..(t + 1) * cols])
            })
        }
    }
}

/// The kernel set for this build target: AVX2 chosen at run time on x86-64, simd128 at
/// compile time on wasm32, scalar otherwise. `*_n` variants take `N` activation vectors
/// so a weight block is unpacked once for several tokens (prefill).
mod simd {
    use super::BlockQ8;
    use crate::quant::GgmlType;

    macro_rules! dispatch_n {
        ($name:ident, $single:ident) => {
            pub fn $name<const N: usize>(w: &[u8], ys: [&[BlockQ8]; N]) -> [f32; N] {
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                return super::wasm::$name(w, ys);
                #[cfg(target_arch = "aarch64")]
                if super::has_neon() {
                    return super::neon::$name(w, ys);
                }
                #[cfg(target_arch = "x86_64")]
                if super::x86::has_avx2() {
                    // SAFETY: AVX2, FMA and F16C were detected at run time; callers pass
                    // activation rows with as many blocks as `w`.
                    return unsafe { super::x86::$name(w, ys) };
                }
                #[allow(unreachable_code)]
                ys.map(|y| super::scalar::$single(w, y))
            }
        };
    }
    /// Whether [`dot_x8`] has kernels on this CPU.
    pub fn has_x8() -> bool {
        #[cfg(target_arch = "x86_64")]
        return super::x86::has_avx2();
        #[allow(unreachable_code)]
        false
    }

    /// Weight row `w` against 8 activation vectors (`ys`: their blocks, token after
    /// token), whose block scales (and Q4_1 offsets) `d` and `s` are block-major with
    /// `stride`: `None` where no such kernel exists for `dtype` on this CPU (the caller
    /// falls back to the `*_n` kernels, which give the same results).
    #[allow(unused_variables)]
    pub fn dot_x8(
        dtype: GgmlType,
        w: &[u8],
        ys: &[BlockQ8],
        d: &[f32],
        s: &[f32],
        stride: usize,
    ) -> Option<[f32; 8]> {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            let form = super::x86::best_dot8();
            let nb = ys.len() / 8;
            let fits = nb > 0
                && ys.len() == 8 * nb
                && stride >= 8
                && d.len() >= (nb - 1) * stride + 8
                && s.len() >= (nb - 1) * stride + 8;
            // SAFETY: AVX2, FMA, F16C and `form`'s features were detected at run time;
            // `ys` holds 8 tokens of the row's blocks and `d`, `s` enough scales (checked).
            return match dtype {
                GgmlType::Q4_1 if fits && nb * 20 == w.len() => {
                    Some(unsafe { super::x86::dot_q4_1_x8(form, w, ys, d, s, stride) })
                }
                GgmlType::Q8_0 if fits && nb * 34 == w.len() => {
                    Some(unsafe { super::x86::dot_q8_0_x8(form, w, ys, d, stride) })
                }
                _ => None,
            };
        }
        None
    }

    dispatch_n!(dot_q4_1_n, dot_q4_1);
    dispatch_n!(dot_q4_0_n, dot_q4_0);
    dispatch_n!(dot_q8_0_n, dot_q8_0);

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return super::wasm::dot_f32(a, b);
        #[cfg(target_arch = "aarch64")]
        if super::has_neon() {
            return super::neon::dot_f32(a, b);
        }
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { super::x86::dot_f32(a, b) };
        }
        #[allow(unreachable_code)]
        super::scalar::dot_f32(a, b)
    }

    pub fn quantize_q8(x: &[f32], with_sum: bool) -> Vec<BlockQ8> {
        let mut out = Vec::with_capacity(x.len() / super::QK);
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            // SAFETY: AVX2, FMA and F16C were detected at run time.
            unsafe { super::x86::quantize_q8(x, with_sum, &mut out) };
            return out;
        }
        super::scalar::quantize_q8(x, with_sum, &mut out);
        out
    }
}

/// f32 dot product with the fastest available kernel (attention scores, etc.).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    simd::dot_f32(a, b)
}

#[cfg(test)]
mod tests;

/// In-place softmax. On x86-64 with AVX2, aarch64 (NEON) and wasm32 with simd128 it
/// reproduces llama.cpp's (AVX2) arithmetic exactly.
#[allow(unreachable_code)] // on wasm32 the SIMD path always returns
pub fn softmax(s: &mut [f32]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return wasm::softmax(s);
    #[cfg(target_arch = "aarch64")]
    if has_neon() {
        return neon::softmax(s);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::softmax(s) };
    }
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// `x = silu(x) * g`, elementwise.
#[allow(unreachable_code)] // on wasm32 the SIMD path always returns
pub fn swiglu(x: &mut [f32], g: &[f32]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return wasm::swiglu(x, g);
    #[cfg(target_arch = "aarch64")]
    if has_neon() {
        return neon::swiglu(x, g);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::swiglu(x, g) };
    }
    for (xi, gi) in x.iter_mut().zip(g) {
        *xi = *xi / (1.0 + (-*xi).exp()) * gi;
    }
}

/// Dot product of f16-valued vectors (attention) in the order of llama.cpp's batched
/// prompt path on x86-64 (llamafile's tinyBLAS, which ggml uses for matrix products of two
/// or more rows): eight lane accumulators over 8-value steps, then one fixed reduction tree
/// (`((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`). Products of f16 values are exact
/// in f32, so these plain adds equal its fused ones on every target.
pub fn dot_f16_tiled(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let n8 = n - n % 8;
    let mut acc = [0f32; 8];
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let t = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let mut s = (t[0] + t[2]) + (t[1] + t[3]);
    for i in n8..n {
        s += a[i] * b[i];
    }
    s
}

/// Dot product of f16-valued vectors (attention), summed in llama.cpp's (AVX2) order on
/// x86-64, aarch64 and wasm32 with simd128: ggml's `vec_dot_f16`, which it uses for one row
/// at a time (decoding).
#[allow(unreachable_code)] // on wasm32 the SIMD path always returns
pub fn dot_f16_ordered(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return wasm::dot_f16_ordered(a, b);
    #[cfg(target_arch = "aarch64")]
    if has_neon() {
        return neon::dot_f16_ordered(a, b);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { x86::dot_f16_ordered(a, b) };
    }
    let mut s = 0f64;
    for (x, y) in a.iter().zip(b) {
        s += f64::from(x * y);
    }
    s as f32
}
