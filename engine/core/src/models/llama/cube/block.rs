//! The rest of a transformer block on CubeCL devices, in llama.cpp's CPU arithmetic: RMSNorm,
//! RoPE, the f16 KV cache, attention (scores, softmax, weighted sum of values) and SwiGLU.
//!
//! Together with the quantized matrix-vector kernels of `cube`, a block computes what the
//! native CPU engine (`super::super::cpu`) and llama.cpp's AVX2 build compute, operation for
//! operation: the same f16 rounding of Q, K, V and the attention weights, the same polynomial
//! `exp` (with its range reduction and its slow path), the same reduction trees for the f16 dot
//! products and the softmax sums. Every output is formed by one thread in a fixed order, so
//! results are also reproducible from run to run.
//!
//! Two things stand between these kernels and bit-equality on a given device:
//! - llama.cpp sums RMSNorm's squares and softmax's denominator in f64, which WGSL lacks. The
//!   sums run here as unevaluated pairs of f32 (Knuth's two-sum), about 48 bits, and the last
//!   step rounds to f32: equal to the f64 route except when that value lies within ~2^-48 of
//!   an f32 rounding boundary.
//! - `fma` must be fused or emulated (`exact`, as in `cube`), and `+ - * / sqrt` correctly
//!   rounded: true of lavapipe; GPUs may approximate division and square roots.
//!
//! Products are passed through `opaque` where a shader compiler could otherwise contract them
//! into an `fma` with the following addition or reassociate them.

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{
    CUBE, FMA_PROBE, cube_count, cube_tensor, fma_exact, fma_is_fused, hsum8, opaque, round_f16,
    thread_index,
};
use crate::models::llama::KV_PAD;
use crate::{Error, Result};

/// Most f32 scores held at once by one attention launch (64 MiB, half of WebGPU's default
/// storage-buffer binding limit): longer prompts run in chunks of query rows.
const MAX_SCORES: usize = 16 << 20;

/// The block kernels of one model on one device.
pub(in crate::models::llama) struct Kernels {
    device: CubeDevice,
    /// [`FMA_PROBE`] on the device.
    probe: Handle,
    /// Emulate a correctly rounded `fma` where the device's is not fused.
    exact: bool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("exact", &self.exact)
            .finish_non_exhaustive()
    }
}

impl Kernels {
    pub(in crate::models::llama) fn new(device: &CubeDevice) -> Self {
        Self {
            device: device.clone(),
            probe: device.client().create_from_slice(f32::as_bytes(&FMA_PROBE)),
            exact: false,
        }
    }

    pub(in crate::models::llama) fn set_exact(&mut self, on: bool) {
        self.exact = on;
    }

    fn probe(&self) -> BufferArg {
        // SAFETY: the handle holds exactly the probe's values.
        unsafe { BufferArg::from_raw_parts(self.probe.clone(), FMA_PROBE.len()) }
    }

    fn empty(&self, rows: usize, cols: usize) -> CubeTensor {
        empty_device_dtype(
            self.device.client(),
            self.device.clone(),
            Shape::new([rows, cols]),
            DType::F32,
        )
    }

    /// `x / sqrt(mean(x²) + eps) * w` row by row; `w` is `[1, dim]`.
    pub(in crate::models::llama) fn rms_norm(
        &self,
        x: Tensor<2>,
        w: &Tensor<2>,
        eps: f32,
    ) -> Result<Tensor<2>> {
        let [rows, dim] = x.dims();
        if w.dims() != [1, dim] {
            return Err(Error::InvalidArgument(format!(
                "norm weights {:?} for rows of {dim}",
                w.dims()
            )));
        }
        let x = cube_tensor(x)?;
        let w = cube_tensor(w.clone())?;
        let client = self.device.client();
        let scale = client.empty(rows * 4);
        let out = self.empty(rows, dim);
        // SAFETY: `x` and `out` hold `rows * dim` values, `scale` `rows`, `w` `dim`; the
        // kernels index below those counts.
        unsafe {
            rms_scale::launch_unchecked(
                &client,
                cube_count(rows),
                CubeDim::new_1d(CUBE),
                self.probe(),
                x.clone().into_buffer_arg(),
                BufferArg::from_raw_parts(scale.clone(), rows),
                rows,
                dim,
                dim as f32,
                eps,
                u32::from(self.exact),
            );
            rms_apply::launch_unchecked(
                &client,
                cube_count(rows * dim),
                CubeDim::new_1d(CUBE),
                self.probe(),
                x.into_buffer_arg(),
                BufferArg::from_raw_parts(scale, rows),
                w.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows * dim,
                dim,
            );
        }
        Ok(Tensor::from_primitive::<burn_cubecl::CubeBackend>(out))
    }

    /// Rotates adjacent pairs of the first `rope_dim` values of each head of `x`
    /// (`[seq, heads * hd]`) by the angles in `cos`, `sin` (`[seq, 1, rope_dim / 2]`), and
    /// rounds the result to f16 (the form in which attention uses Q and K).
    pub(in crate::models::llama) fn rope_f16(
        &self,
        x: Tensor<2>,
        cos: &Tensor<3>,
        sin: &Tensor<3>,
        heads: usize,
        hd: usize,
        rope_dim: usize,
    ) -> Result<Tensor<2>> {
        let [seq, width] = x.dims();
        if width != heads * hd || rope_dim > hd || !rope_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "RoPE over [{seq}, {width}] with {heads} heads of {hd} ({rope_dim} rotated)"
            )));
        }
        if cos.dims() != [seq, 1, rope_dim / 2] || sin.dims() != cos.dims() {
            return Err(Error::InvalidArgument(format!(
                "RoPE tables {:?} for {seq} positions",
                cos.dims()
            )));
        }
        let n = seq * width;
        let out = self.empty(seq, width);
        // SAFETY: `x`, `out` hold `n` values; the tables `seq * rope_dim / 2`.
        unsafe {
            rope_f16::launch_unchecked(
                &self.device.client(),
                cube_count(n),
                CubeDim::new_1d(CUBE),
                self.probe(),
                cube_tensor(x)?.into_buffer_arg(),
                cube_tensor(cos.clone())?.into_buffer_arg(),
                cube_tensor(sin.clone())?.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
                heads,
                hd,
                rope_dim,
                u32::from(self.exact),
            );
        }
        Ok(Tensor::from_primitive::<burn_cubecl::CubeBackend>(out))
    }

    /// Writes `k` and `v` (`[seq, kv_dim]`) rounded to f16 at positions `start..start + seq`
    /// of one block's cache: `kc` holds keys position-major (`[cap, kv_dim]`), `vc` values
    /// transposed (`[kv_dim, cap]`), both stored in `[n_kv_heads, cap, head_dim]` tensors.
    pub(in crate::models::llama) fn kv_store(
        &self,
        k: Tensor<2>,
        v: Tensor<2>,
        kc: &Tensor<3>,
        vc: &Tensor<3>,
        start: usize,
    ) -> Result<()> {
        let [seq, kv_dim] = k.dims();
        let cap = cache_cap(kc, kv_dim)?;
        if v.dims() != [seq, kv_dim] || vc.dims() != kc.dims() || start + seq > cap {
            return Err(Error::InvalidArgument(format!(
                "cache write of {seq} positions at {start} into {cap}"
            )));
        }
        let n = seq * kv_dim;
        // SAFETY: `k`, `v` hold `n` values; the caches `cap * kv_dim`, and every index
        // written is below `(start + seq) * kv_dim` (checked above).
        unsafe {
            kv_store::launch_unchecked(
                &self.device.client(),
                cube_count(n),
                CubeDim::new_1d(CUBE),
                cube_tensor(k)?.into_buffer_arg(),
                cube_tensor(v)?.into_buffer_arg(),
                cache_tensor(kc)?.into_buffer_arg(),
                cache_tensor(vc)?.into_buffer_arg(),
                n,
                kv_dim,
                start,
                cap,
            );
        }
        Ok(())
    }

    /// Causal grouped-query attention of `q` (`[seq, heads * hd]`, f16-valued, positions
    /// `start..start + seq`) over the cache, which already holds those positions.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::models::llama) fn attention(
        &self,
        q: Tensor<2>,
        kc: &Tensor<3>,
        vc: &Tensor<3>,
        start: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Tensor<2>> {
        let [seq, width] = q.dims();
        let kv_dim = kv_heads * hd;
        let cap = cache_cap(kc, kv_dim)?;
        if width != heads * hd
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || vc.dims() != kc.dims()
            || start + seq > cap
        {
            return Err(Error::InvalidArgument(format!(
                "attention of [{seq}, {width}] at {start} over a cache of {cap}"
            )));
        }
        let group = heads / kv_heads;
        // Several rows are a prompt: sums in llama.cpp's batched order (as the CPU engine).
        let tiled = u32::from(seq > 1);
        // Scores rows are as long as the last query's padded context.
        let stride = (start + seq).next_multiple_of(KV_PAD);
        let scale = 1.0 / (hd as f32).sqrt();
        let client = self.device.client();
        let q = cube_tensor(q)?;
        let (kc, vc) = (cache_tensor(kc)?, cache_tensor(vc)?);
        let out = self.empty(seq, width);
        let chunk = (MAX_SCORES / (heads * stride)).max(1);
        for t0 in (0..seq).step_by(chunk) {
            let rows = chunk.min(seq - t0);
            let scores = client.empty(rows * heads * stride * 4);
            let n_scores = rows * heads * stride;
            // SAFETY: `q`, `out` hold `seq * heads * hd` values, the caches `cap * kv_dim`,
            // `scores` `n_scores`; the kernels read positions below `start + t + 1 <= cap` and
            // padded ones below `stride`, which the score rows hold.
            unsafe {
                attn_scores::launch_unchecked(
                    &client,
                    cube_count(n_scores),
                    CubeDim::new_1d(CUBE),
                    self.probe(),
                    q.clone().into_buffer_arg(),
                    kc.clone().into_buffer_arg(),
                    BufferArg::from_raw_parts(scores.clone(), n_scores),
                    t0,
                    rows,
                    heads,
                    group,
                    hd,
                    start,
                    stride,
                    scale,
                    tiled,
                );
                attn_softmax::launch_unchecked(
                    &client,
                    cube_count(rows * heads),
                    CubeDim::new_1d(CUBE),
                    self.probe(),
                    BufferArg::from_raw_parts(scores.clone(), n_scores),
                    t0,
                    rows,
                    heads,
                    start,
                    stride,
                    u32::from(self.exact),
                );
                attn_values::launch_unchecked(
                    &client,
                    cube_count(rows * width),
                    CubeDim::new_1d(CUBE),
                    self.probe(),
                    BufferArg::from_raw_parts(scores, n_scores),
                    vc.clone().into_buffer_arg(),
                    out.clone().into_buffer_arg(),
                    t0,
                    rows,
                    heads,
                    group,
                    hd,
                    start,
                    stride,
                    cap,
                    tiled,
                );
            }
        }
        Ok(Tensor::from_primitive::<burn_cubecl::CubeBackend>(out))
    }

    /// `silu(g) * u`, elementwise over `[rows, ffn]`.
    pub(in crate::models::llama) fn swiglu(&self, g: Tensor<2>, u: Tensor<2>) -> Result<Tensor<2>> {
        let [rows, cols] = g.dims();
        if u.dims() != [rows, cols] {
            return Err(Error::InvalidArgument(format!(
                "SwiGLU of {:?} and {:?}",
                g.dims(),
                u.dims()
            )));
        }
        let n = rows * cols;
        let out = self.empty(rows, cols);
        // SAFETY: all three hold `n` values.
        unsafe {
            swiglu::launch_unchecked(
                &self.device.client(),
                cube_count(n),
                CubeDim::new_1d(CUBE),
                self.probe(),
                cube_tensor(g)?.into_buffer_arg(),
                cube_tensor(u)?.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                n,
                cols,
                u32::from(self.exact),
            );
        }
        Ok(Tensor::from_primitive::<burn_cubecl::CubeBackend>(out))
    }
}

/// Positions a `[n_kv_heads, cap, head_dim]` cache tensor holds.
fn cache_cap(t: &Tensor<3>, kv_dim: usize) -> Result<usize> {
    let [h, cap, d] = t.dims();
    if h * d != kv_dim {
        return Err(Error::InvalidArgument(format!(
            "cache {:?} for rows of {kv_dim}",
            t.dims()
        )));
    }
    Ok(cap)
}

/// The storage of a cache tensor, which the kernels write in place: it must be the tensor's
/// own contiguous buffer (a copy would silently drop the writes).
fn cache_tensor(t: &Tensor<3>) -> Result<CubeTensor> {
    let c = t
        .clone()
        .try_into_primitive::<burn_cubecl::CubeBackend>()
        .map_err(|e| Error::Backend(format!("not a CubeCL tensor: {e:?}")))?;
    if c.dtype != DType::F32 || !c.is_contiguous() {
        return Err(Error::Backend(
            "KV cache tensors must be contiguous f32".into(),
        ));
    }
    Ok(c)
}

/// `-inf`, the AVX2 code's padding of masked scores. Formed from the hidden zero `z`: WGSL
/// rejects a constant expression whose value is infinite (Chromium's compiler folds the
/// plain bit pattern into one).
#[cube]
fn neg_inf(z: u32) -> f32 {
    f32::reinterpret(0xff80_0000u32 ^ z)
}

/// `hi + v` as an unevaluated pair: returns the rounded sum; `lo` gains its rounding error.
#[cube]
fn two_sum_into(hi: f32, v: f32, lo: &mut f32, z: u32) -> f32 {
    let s = opaque(hi + v, z);
    let bv = opaque(s - hi, z);
    let av = opaque(s - bv, z);
    *lo += opaque(hi - av, z) + opaque(v - bv, z);
    s
}

/// One thread per row: `1 / sqrt(mean(x²) + eps)`, the squares summed as llama.cpp does in
/// f64 (here in two f32s, see the module docs).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_scale(
    probe: &[f32],
    x: &[f32],
    scale: &mut [f32],
    rows: usize,
    dim: usize,
    dim_f: f32,
    eps: f32,
    exact: u32,
) {
    let r = thread_index();
    if r < rows {
        let fused = exact == 0u32 || fma_is_fused(probe);
        let z = u32::reinterpret(probe[3]);
        let mut hi = 0.0f32;
        let mut lo = 0.0f32;
        for i in 0..dim {
            let v = x[r * dim + i];
            hi = two_sum_into(hi, opaque(v * v, z), &mut lo, z);
        }
        // (hi + lo) / dim rounded once: a correctly rounded quotient's remainder is exact.
        let q = hi / dim_f;
        let rem = fma_exact(-q, dim_f, hi, fused, z) + lo;
        let mean = q + rem / dim_f;
        scale[r] = 1.0f32 / f32::sqrt(mean + eps);
    }
}

/// `out = x * scale[row] * w[col]`, multiplied in that order.
#[cube(launch_unchecked)]
fn rms_apply(
    probe: &[f32],
    x: &[f32],
    scale: &[f32],
    w: &[f32],
    out: &mut [f32],
    n: usize,
    dim: usize,
) {
    let i = thread_index();
    if i < n {
        let z = u32::reinterpret(probe[3]);
        out[i] = opaque(x[i] * scale[i / dim], z) * w[i % dim];
    }
}

/// One thread per output value: the pair rotation of the CPU engine's RoPE (one product
/// rounded, fused into the other: `fma(x0, c, -(x1·s))`, `fma(x0, s, x1·c)`), then f16
/// rounding.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)] // not in CubeCL's frontend
fn rope_f16(
    probe: &[f32],
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    out: &mut [f32],
    n: usize,
    heads: usize,
    hd: usize,
    rope_dim: usize,
    exact: u32,
) {
    let i = thread_index();
    if i < n {
        let z = u32::reinterpret(probe[3]);
        let d = i % hd;
        let t = i / (heads * hd);
        let mut v = x[i];
        if d < rope_dim {
            let at = t * (rope_dim / 2) + d / 2;
            let c = cos[at];
            let s = sin[at];
            let base = i - d % 2;
            let x0 = x[base];
            let x1 = x[base + 1];
            let fused = exact == 0u32 || fma_is_fused(probe);
            if d % 2 == 0 {
                v = fma_exact(x0, c, -opaque(x1 * s, z), fused, z);
            } else {
                v = fma_exact(x0, s, opaque(x1 * c, z), fused, z);
            }
        }
        out[i] = round_f16(v);
    }
}

/// One thread per new cache value (see [`Kernels::kv_store`]).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn kv_store(
    k: &[f32],
    v: &[f32],
    kc: &mut [f32],
    vc: &mut [f32],
    n: usize,
    kv_dim: usize,
    start: usize,
    cap: usize,
) {
    let i = thread_index();
    if i < n {
        let t = i / kv_dim;
        let j = i % kv_dim;
        kc[(start + t) * kv_dim + j] = round_f16(k[i]);
        vc[j * cap + start + t] = round_f16(v[i]);
    }
}

/// The products `a[m + 32 s] * b[m + 32 s]` for every step `s` of `np / 32`, accumulated with
/// `fma` in step order: one of the 32 SIMD lanes of llama.cpp's AVX2 f16 dot product. Values of
/// `a` at `valid` and beyond read as zero (padding). The operands are f16 values, whose
/// products are exact in f32, so any `fma` rounds once here.
#[cube]
#[allow(clippy::too_many_arguments)]
fn lane(a: &[f32], a0: usize, b: &[f32], b0: usize, np: usize, valid: usize, m: usize) -> f32 {
    lane_of(a, a0, b, b0, np, valid, m, 32)
}

/// [`lane`] for `step` lanes: the products `a[m + step·s] * b[m + step·s]`, `s < np / step`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn lane_of(
    a: &[f32],
    a0: usize,
    b: &[f32],
    b0: usize,
    np: usize,
    valid: usize,
    m: usize,
    step: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for s in 0..np / step {
        let i = s * step + m;
        let mut av = 0.0f32;
        if i < valid {
            av = a[a0 + i];
        }
        acc = fma(av, b[b0 + i], acc);
    }
    acc
}

/// Lane `l` of the 8-lane sum of the four accumulators: `(acc0 + acc2) + (acc1 + acc3)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn lane8(a: &[f32], a0: usize, b: &[f32], b0: usize, np: usize, valid: usize, l: usize) -> f32 {
    (lane(a, a0, b, b0, np, valid, l) + lane(a, a0, b, b0, np, valid, 16 + l))
        + (lane(a, a0, b, b0, np, valid, 8 + l) + lane(a, a0, b, b0, np, valid, 24 + l))
}

/// `Σ a[a0 + i] * b[b0 + i]` for `i < len` (`a` zero from `valid` on) in llama.cpp's AVX2
/// order for f16 vectors: 32 lanes over 32-value steps, a fixed reduction tree, then the tail
/// summed in f64 (two f32s here).
#[cube]
#[allow(clippy::too_many_arguments)]
fn dot_f16_ordered(
    a: &[f32],
    a0: usize,
    b: &[f32],
    b0: usize,
    len: usize,
    valid: usize,
    z: u32,
) -> f32 {
    let np = len / 32 * 32;
    let mut hi = 0.0f32;
    if np > 0 {
        // 256 → 128 bits (lanes l and l + 4), then two horizontal adds.
        let t0 = lane8(a, a0, b, b0, np, valid, 0) + lane8(a, a0, b, b0, np, valid, 4);
        let t1 = lane8(a, a0, b, b0, np, valid, 1) + lane8(a, a0, b, b0, np, valid, 5);
        let t2 = lane8(a, a0, b, b0, np, valid, 2) + lane8(a, a0, b, b0, np, valid, 6);
        let t3 = lane8(a, a0, b, b0, np, valid, 3) + lane8(a, a0, b, b0, np, valid, 7);
        hi = (t0 + t1) + (t2 + t3);
    }
    let mut lo = 0.0f32;
    for i in np..len {
        let mut av = 0.0f32;
        if i < valid {
            av = a[a0 + i];
        }
        hi = two_sum_into(hi, opaque(av * b[b0 + i], z), &mut lo, z);
    }
    hi + lo
}

/// `Σ a[a0 + i] * b[b0 + i]` for `i < len` (a multiple of 8; `a` zero from `valid` on) in
/// the order of llama.cpp's batched prompt path (tinyBLAS): eight lanes over 8-value steps,
/// then [`hsum8`] (see `kernels::dot_f16_tiled`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn dot_f16_tiled(a: &[f32], a0: usize, b: &[f32], b0: usize, len: usize, valid: usize) -> f32 {
    hsum8(
        lane_of(a, a0, b, b0, len, valid, 0, 8),
        lane_of(a, a0, b, b0, len, valid, 1, 8),
        lane_of(a, a0, b, b0, len, valid, 2, 8),
        lane_of(a, a0, b, b0, len, valid, 3, 8),
        lane_of(a, a0, b, b0, len, valid, 4, 8),
        lane_of(a, a0, b, b0, len, valid, 5, 8),
        lane_of(a, a0, b, b0, len, valid, 6, 8),
        lane_of(a, a0, b, b0, len, valid, 7, 8),
    )
}

/// One thread per (query row, head, position): the scaled score, or `-inf` past the row's
/// context (causal mask and padding). `tiled`: a prompt's rows (see `dot_f16_tiled`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attn_scores(
    probe: &[f32],
    q: &[f32],
    kc: &[f32],
    s: &mut [f32],
    t0: usize,
    rows: usize,
    heads: usize,
    group: usize,
    hd: usize,
    start: usize,
    stride: usize,
    scale: f32,
    tiled: u32,
) {
    let i = thread_index();
    if i < rows * heads * stride {
        let p = i % stride;
        let th = i / stride;
        let h = th % heads;
        let t = t0 + th / heads;
        let z = u32::reinterpret(probe[3]);
        let mut v = neg_inf(z);
        if p < start + t + 1 {
            let kv_dim = heads / group * hd;
            let kvh = h / group;
            let qa = t * heads * hd + h * hd;
            let ka = p * kv_dim + kvh * hd;
            if tiled == 0u32 {
                v = dot_f16_ordered(kc, ka, q, qa, hd, hd, z) * scale;
            } else {
                v = dot_f16_tiled(kc, ka, q, qa, hd, hd) * scale;
            }
        }
        s[i] = v;
    }
}

/// `e^x` for one lane of llama.cpp's AVX2 polynomial exponential (`ggml_v_expf`), including
/// its two-step scaling for results near or past the ends of the f32 range.
#[cube]
fn exp_lane(x: f32, fused: bool, z: u32) -> f32 {
    let shift = f32::reinterpret(0x4b40_0000u32); // 1.5 * 2^23
    let zz = opaque(
        fma_exact(x, f32::reinterpret(0x3fb8_aa3bu32), shift, fused, z),
        z,
    );
    let n = zz - shift;
    let hi = fma_exact(-n, f32::reinterpret(0x3f31_7200u32), x, fused, z);
    let b = fma_exact(-n, f32::reinterpret(0x35bf_be8eu32), hi, fused, z);
    let e = u32::reinterpret(zz) << 23u32;
    let k = f32::reinterpret(e + 0x3f80_0000u32);
    let u = opaque(b * b, z);
    let c4 = f32::reinterpret(0x3c07_2010u32);
    let c3 = f32::reinterpret(0x3d2b_9f17u32);
    let c2 = f32::reinterpret(0x3e2a_af33u32);
    let c1 = f32::reinterpret(0x3eff_fedbu32);
    let c0 = f32::reinterpret(0x3f7f_fff6u32);
    let j = fma_exact(
        fma_exact(
            fma_exact(c4, b, c3, fused, z),
            u,
            fma_exact(c2, b, c1, fused, z),
            fused,
            z,
        ),
        u,
        opaque(c0 * b, z),
        fused,
        z,
    );
    let abs_n = f32::abs(n);
    let mut r = fma_exact(j, k, k, fused, z);
    if abs_n > 126.0f32 {
        let mut g = 0u32;
        if n <= 0.0f32 {
            g = 0x8200_0000u32;
        }
        let s1 = f32::reinterpret(g + 0x7f00_0000u32);
        let s2 = f32::reinterpret(e - g);
        if abs_n > 192.0f32 {
            r = s1 * s1;
        } else {
            r = fma_exact(s2, j, s2, fused, z) * s1;
        }
    }
    // Masked scores: the AVX2 code's saturating path gives +0 (the FMA emulation, meant for
    // finite values, would give NaN on the way).
    if x == neg_inf(z) {
        r = 0.0f32;
    }
    r
}

/// One thread per (query row, head): softmax over the row's padded context in llama.cpp's
/// order — `exp` by groups of 8 with each group's horizontal sum added to an f64 total — then
/// the weights rounded to f16.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)] // not in CubeCL's frontend
fn attn_softmax(
    probe: &[f32],
    s: &mut [f32],
    t0: usize,
    rows: usize,
    heads: usize,
    start: usize,
    stride: usize,
    exact: u32,
) {
    let i = thread_index();
    if i < rows * heads {
        let fused = exact == 0u32 || fma_is_fused(probe);
        let z = u32::reinterpret(probe[3]);
        let t = t0 + i / heads;
        let n_kv = (start + t + 32) / 32 * 32;
        let base = i * stride;
        let mut mx = neg_inf(z);
        for p in 0..n_kv {
            mx = max(mx, s[base + p]);
        }
        let mut hi = 0.0f32;
        let mut lo = 0.0f32;
        for g in 0..n_kv / 8 {
            let b = base + g * 8;
            for l in 0..8usize {
                s[b + l] = exp_lane(s[b + l] - mx, fused, z);
            }
            let sum = hsum8(
                s[b],
                s[b + 1],
                s[b + 2],
                s[b + 3],
                s[b + 4],
                s[b + 5],
                s[b + 6],
                s[b + 7],
            );
            hi = two_sum_into(hi, sum, &mut lo, z);
        }
        // 1 / (hi + lo) rounded once: q's residual 1 - q·hi is exact.
        let q = 1.0f32 / hi;
        let r = fma_exact(-q, hi, 1.0f32, fused, z) - opaque(q * lo, z);
        let inv = q + opaque(q * r, z);
        for p in 0..n_kv {
            s[base + p] = round_f16(s[base + p] * inv);
        }
    }
}

/// One thread per (query row, head, value dim): the attention weights dotted with one row of
/// the transposed values, over the padded context (values past the context read as zero).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)] // not in CubeCL's frontend
fn attn_values(
    probe: &[f32],
    p: &[f32],
    vc: &[f32],
    out: &mut [f32],
    t0: usize,
    rows: usize,
    heads: usize,
    group: usize,
    hd: usize,
    start: usize,
    stride: usize,
    cap: usize,
    tiled: u32,
) {
    let i = thread_index();
    if i < rows * heads * hd {
        let d = i % hd;
        let th = i / hd;
        let h = th % heads;
        let t = t0 + th / heads;
        let ctx = start + t + 1;
        let n_kv = (ctx + 31) / 32 * 32;
        let col = (h / group * hd + d) * cap;
        let at = t * heads * hd + h * hd + d;
        if tiled == 0u32 {
            out[at] = dot_f16_ordered(
                vc,
                col,
                p,
                th * stride,
                n_kv,
                ctx,
                u32::reinterpret(probe[3]),
            );
        } else {
            out[at] = dot_f16_tiled(vc, col, p, th * stride, n_kv, ctx);
        }
    }
}

/// `silu(g) * u` with llama.cpp's AVX2 SiLU (`x / (1 + e^-x)`, polynomial `exp`); the last
/// `cols % 8` columns of a row, which llama.cpp computes with libm's `expf`, use the
/// device's `exp`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn swiglu(probe: &[f32], g: &[f32], u: &[f32], out: &mut [f32], n: usize, cols: usize, exact: u32) {
    let i = thread_index();
    if i < n {
        let fused = exact == 0u32 || fma_is_fused(probe);
        let z = u32::reinterpret(probe[3]);
        let x = g[i];
        let mut e = f32::exp(-x);
        if i % cols < cols / 8 * 8 {
            e = exp_lane(0.0f32 - x, fused, z);
        }
        out[i] = (x / (1.0f32 + e)) * u[i];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each kernel against the CPU engine's function for the same step, bit for bit where the
    //! CPU runs llama.cpp's AVX2 arithmetic, on inputs that reach the rare paths (the
    //! exponential's slow path and overflow, masked scores, zeros, tiny and huge norms).

    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::models::llama::burn::read_f32;
    use crate::sampler::SplitMix64;

    fn setup() -> Option<(Device, Kernels)> {
        let device = super::super::tests::shared_device()?;
        let cube = super::super::cube_device(&device).unwrap();
        let mut k = Kernels::new(&cube);
        k.set_exact(true);
        Some((device, k))
    }

    fn cpu_is_reference() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn tensor(device: &Device, v: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [rows, cols]), device)
    }

    fn assert_same(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if cpu_is_reference() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{what}[{i}]: {g:e} vs {w:e}"
                );
            } else {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1e-30),
                    "{what}[{i}]: {g:e} vs {w:e}"
                );
            }
        }
    }

    #[test]
    fn swiglu_matches_cpu() {
        let Some((device, k)) = setup() else { return };
        let mut rng = SplitMix64(11);
        let (rows, cols) = (3, 64);
        // Zeros, ordinary values, and magnitudes where e^-x takes the slow path (|x| > 87)
        // or overflows (|x| > 132).
        let g: Vec<f32> = (0..rows * cols)
            .map(|i| match i % 8 {
                0 => 0.0,
                1 => -0.0,
                2 => (rng.next_f64() as f32 - 0.5) * 200.0,
                3 => -90.0 - 60.0 * rng.next_f64() as f32,
                4 => 90.0 + 60.0 * rng.next_f64() as f32,
                _ => (rng.next_f64() as f32 - 0.5) * 8.0,
            })
            .collect();
        let u: Vec<f32> = (0..rows * cols)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let out = k
            .swiglu(
                tensor(&device, g.clone(), rows, cols),
                tensor(&device, u.clone(), rows, cols),
            )
            .unwrap();
        let got = pollster::block_on(read_f32(out)).unwrap();
        let mut want = g;
        for (x, y) in want.chunks_exact_mut(cols).zip(u.chunks_exact(cols)) {
            crate::kernels::swiglu(x, y);
        }
        assert_same(&got, &want, "swiglu");
    }

    #[test]
    fn rms_norm_matches_cpu() {
        let Some((device, k)) = setup() else { return };
        let mut rng = SplitMix64(5);
        let dim = 576;
        let scales = [1.0f32, 1e-3, 300.0, 0.0];
        let x: Vec<f32> = scales
            .iter()
            .flat_map(|&s| {
                let v: Vec<f32> = (0..dim)
                    .map(|_| (rng.next_f64() as f32 - 0.5) * s)
                    .collect();
                v
            })
            .collect();
        let rows = scales.len();
        let w: Vec<f32> = (0..dim).map(|_| rng.next_f64() as f32 * 2.0).collect();
        let eps = 1e-5;
        let out = k
            .rms_norm(
                tensor(&device, x.clone(), rows, dim),
                &tensor(&device, w.clone(), 1, dim),
                eps,
            )
            .unwrap();
        let got = pollster::block_on(read_f32(out)).unwrap();
        let mut want = vec![0f32; x.len()];
        crate::models::llama::cpu::rms_norm(&x, &w, eps, &mut want);
        assert_same(&got, &want, "rms_norm");
    }

    /// Attention over a cache, against the CPU engine's formula: f16 dot products in AVX2
    /// order, softmax with the polynomial exp (masked and far-below-max scores included),
    /// f16 weights.
    #[test]
    fn attention_matches_cpu() {
        let Some((device, k)) = setup() else { return };
        let mut rng = SplitMix64(9);
        let (heads, kv_heads, hd) = (4, 2, 64);
        let kv_dim = kv_heads * hd;
        let (start, seq, cap) = (37, 3, 96);
        let total = start + seq;
        let r16 = |v: f32| half::f16::from_f32(v).to_f32();
        // Some large keys spread the scores over a range wider than the exp's fast path (and
        // its underflow to zero).
        let keys: Vec<f32> = (0..total * kv_dim)
            .map(|i| {
                let s = if i % 97 == 0 { 2000.0 } else { 2.0 };
                r16((rng.next_f64() as f32 - 0.5) * s)
            })
            .collect();
        let vals: Vec<f32> = (0..total * kv_dim)
            .map(|_| r16(rng.next_f64() as f32 - 0.5))
            .collect();
        let q: Vec<f32> = (0..seq * heads * hd)
            .map(|_| r16((rng.next_f64() as f32 - 0.5) * 3.0))
            .collect();
        let kc = Tensor::<3>::zeros([kv_heads, cap, hd], &device);
        let vc = Tensor::<3>::zeros([kv_heads, cap, hd], &device);
        k.kv_store(
            tensor(&device, keys.clone(), total, kv_dim),
            tensor(&device, vals.clone(), total, kv_dim),
            &kc,
            &vc,
            0,
        )
        .unwrap();
        let out = k
            .attention(
                tensor(&device, q.clone(), seq, heads * hd),
                &kc,
                &vc,
                start,
                heads,
                kv_heads,
                hd,
            )
            .unwrap();
        let got = pollster::block_on(read_f32(out)).unwrap();

        let scale = 1.0 / (hd as f32).sqrt();
        let group = heads / kv_heads;
        // Three rows: a prompt, summed in llama.cpp's batched order.
        let dot = crate::kernels::dot_f16_tiled;
        let mut want = vec![0f32; seq * heads * hd];
        for t in 0..seq {
            let ctx = start + t + 1;
            let n_kv = ctx.next_multiple_of(KV_PAD);
            for h in 0..heads {
                let kvh = h / group;
                let qh = &q[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                let mut s: Vec<f32> = (0..ctx)
                    .map(|p| {
                        let kr = &keys[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
                        dot(kr, qh) * scale
                    })
                    .collect();
                s.resize(n_kv, f32::NEG_INFINITY);
                crate::kernels::softmax(&mut s);
                let s: Vec<f32> = s.into_iter().map(r16).collect();
                for d in 0..hd {
                    let col: Vec<f32> = (0..n_kv)
                        .map(|p| {
                            if p < ctx {
                                vals[p * kv_dim + kvh * hd + d]
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    want[(t * heads + h) * hd + d] = dot(&col, &s);
                }
            }
        }
        assert_same(&got, &want, "attention");
        // Misuse is an error.
        let q = tensor(&device, vec![0.0; heads * hd], 1, heads * hd);
        assert!(k.attention(q, &kc, &vc, cap, heads, kv_heads, hd).is_err());
    }
}
