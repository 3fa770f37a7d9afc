//! Quantized weights on CubeCL devices (burn's wgpu backend: Vulkan, Metal, DX12, WebGPU) and
//! the kernels that use them without ever expanding them to f32.
//!
//! A matrix keeps its GGML blocks, split into two buffers so that every read is 4-byte aligned
//! whatever the block size: `qs`, the packed quants (4 words per 32 values for 4-bit formats,
//! 8 for `Q8_0`), and `scales`, the block header as f32 (`d`, plus `m` for `Q4_1`). That is
//! 24 bytes per 32 weights for `Q4_1` (the file's 20 bytes plus the headers widened to f32).
//!
//! A projection runs as two kernels. [`quantize_q8`] rounds the activations to 8 bits per
//! 32-value block exactly as llama.cpp's CPU quantizer does; the matrix-vector kernel then
//! forms each output as llama.cpp's AVX2 dot product does (integer sums of four products per
//! lane, eight lanes accumulated with FMA in block order, the same reduction tree), so the
//! results are those of the native engine and of llama.cpp, bit for bit, wherever the device
//! rounds `+`, `*`, `/` and `fma` correctly (true of lavapipe; GPUs may approximate division).

pub(super) mod block;

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};

use crate::quant::GgmlType;
use crate::{Error, Result};

/// Values per quantization block (every format handled here).
const QK: usize = 32;
/// Threads per cube: WebGPU guarantees 256.
pub(super) const CUBE: u32 = 256;
/// `a, b, c` with `a * b + c = 2^-24` exactly, but `0` when `a * b` is rounded first; then a
/// zero the shader compiler cannot see (see `opaque`).
pub(super) const FMA_PROBE: [f32; 4] = [
    1.0 + 1.0 / 4096.0,
    1.0 + 1.0 / 4096.0,
    -(1.0 + 1.0 / 2048.0),
    0.0,
];

/// The CubeCL device behind `device`, if it is one.
pub(super) fn cube_device(device: &Device) -> Option<CubeDevice> {
    match device.as_dispatch() {
        DispatchDevice::Cube(d) => Some(d.clone()),
        #[allow(unreachable_patterns)] // other variants exist only with other burn features
        _ => None,
    }
}

/// The formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QFormat {
    pub(super) fn of(dtype: GgmlType) -> Option<Self> {
        match dtype {
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            GgmlType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block in a GGUF file.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// f32 header values per block on the device.
    fn scales_per_block(self) -> usize {
        match self {
            Self::Q4_1 => 2,
            Self::Q4_0 | Self::Q8_0 => 1,
        }
    }

    /// Quant words per block on the device.
    fn words_per_block(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 4,
            Self::Q8_0 => 8,
        }
    }
}

/// A `[rows, cols]` GGML matrix (`cols` values per row) resident on a CubeCL device.
pub(super) struct DeviceQMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    qs: Handle,
    scales: Handle,
    /// [`FMA_PROBE`] on the device.
    probe: Handle,
    /// Emulate a correctly rounded `fma` where the device's rounds twice (see `fma_exact`):
    /// results then equal the AVX2 CPU kernels bit for bit on every device, at about 4x the
    /// arithmetic. Off by default: a twice-rounded `fma` moves results by an ulp or two.
    exact_fma: bool,
    device: CubeDevice,
}

impl std::fmt::Debug for DeviceQMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceQMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl DeviceQMatrix {
    /// Uploads `raw` (the tensor's bytes as stored in the GGUF: `rows` rows of `cols / 32`
    /// blocks) to `device`.
    pub(super) fn upload(
        format: QFormat,
        raw: &[u8],
        rows: usize,
        cols: usize,
        device: &CubeDevice,
    ) -> Result<Self> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            return Err(Error::Model(format!(
                "{format:?} rows of {cols} values are not whole 32-value blocks"
            )));
        }
        let n_blocks = rows * (cols / QK);
        let bb = format.block_bytes();
        if raw.len() != n_blocks * bb {
            return Err(Error::Model(format!(
                "{format:?} matrix [{rows}, {cols}] needs {} bytes, got {}",
                n_blocks * bb,
                raw.len()
            )));
        }
        let mut scales = Vec::with_capacity(n_blocks * format.scales_per_block());
        let mut qs = Vec::with_capacity(n_blocks * format.words_per_block() * 4);
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for blk in raw.chunks_exact(bb) {
            match format {
                QFormat::Q4_1 => {
                    scales.extend([f16(&blk[0..2]), f16(&blk[2..4])]);
                    qs.extend_from_slice(&blk[4..20]);
                }
                QFormat::Q4_0 => {
                    scales.push(f16(&blk[0..2]));
                    qs.extend_from_slice(&blk[2..18]);
                }
                QFormat::Q8_0 => {
                    scales.push(f16(&blk[0..2]));
                    qs.extend_from_slice(&blk[2..34]);
                }
            }
        }
        let client = device.client();
        Ok(Self {
            format,
            rows,
            cols,
            qs: client.create_from_slice(&qs),
            scales: client.create_from_slice(f32::as_bytes(&scales)),
            probe: client.create_from_slice(f32::as_bytes(&FMA_PROBE)),
            exact_fma: false,
            device: device.clone(),
        })
    }

    /// See the `exact_fma` field.
    #[cfg(test)]
    fn with_exact_fma(mut self, on: bool) -> Self {
        self.exact_fma = on;
        self
    }

    /// See the `exact_fma` field.
    pub(super) fn set_exact_fma(&mut self, on: bool) {
        self.exact_fma = on;
    }

    /// Bytes this matrix holds on the device.
    pub(super) fn device_bytes(&self) -> usize {
        let blocks = self.rows * (self.cols / QK);
        blocks * 4 * (self.format.words_per_block() + self.format.scales_per_block())
    }

    /// `x @ selfᵀ`: `[tokens, cols]` activations to `[tokens, rows]`.
    pub(super) fn matmul(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let [tokens, cols] = x.dims();
        if cols != self.cols {
            return Err(Error::InvalidArgument(format!(
                "activations have {cols} columns, the matrix {}",
                self.cols
            )));
        }
        let x = cube_tensor(x)?;
        let client = x.client.clone();
        let nb = cols / QK;
        let n_act_blocks = tokens * nb;
        let xq = client.empty(n_act_blocks * QK * 4);
        let xd = client.empty(n_act_blocks * 4);
        let xs = client.empty(n_act_blocks * 4);
        let with_sum = self.format == QFormat::Q4_1;
        // SAFETY: every buffer holds the element counts passed with it, and the kernels index
        // only below those counts (checked against `n_blocks` / `rows * tokens`).
        unsafe {
            quantize_q8::launch_unchecked(
                &client,
                cube_count(n_act_blocks),
                CubeDim::new_1d(CUBE),
                x.into_buffer_arg(),
                BufferArg::from_raw_parts(xq.clone(), n_act_blocks * QK),
                BufferArg::from_raw_parts(xd.clone(), n_act_blocks),
                BufferArg::from_raw_parts(xs.clone(), n_act_blocks),
                n_act_blocks,
                with_sum,
            );
        }
        let out = empty_device_dtype(
            client.clone(),
            self.device.clone(),
            Shape::new([tokens, self.rows]),
            DType::F32,
        );
        let n_out = tokens * self.rows;
        let w_blocks = self.rows * nb;
        // SAFETY: as above; `out` is a fresh contiguous `[tokens, rows]` f32 tensor.
        unsafe {
            let qs = BufferArg::from_raw_parts(
                self.qs.clone(),
                w_blocks * self.format.words_per_block(),
            );
            let scales = BufferArg::from_raw_parts(
                self.scales.clone(),
                w_blocks * self.format.scales_per_block(),
            );
            let (count, dim) = (cube_count(n_out), CubeDim::new_1d(CUBE));
            let xq = BufferArg::from_raw_parts(xq, n_act_blocks * QK);
            let xd = BufferArg::from_raw_parts(xd, n_act_blocks);
            let o = out.clone().into_buffer_arg();
            let probe = BufferArg::from_raw_parts(self.probe.clone(), FMA_PROBE.len());
            let exact = u32::from(self.exact_fma);
            match self.format {
                QFormat::Q4_0 | QFormat::Q4_1 => {
                    let xs = BufferArg::from_raw_parts(xs, n_act_blocks);
                    matvec_q4::launch_unchecked(
                        &client,
                        count,
                        dim,
                        probe,
                        qs,
                        scales,
                        xq,
                        xd,
                        xs,
                        o,
                        self.rows,
                        nb,
                        tokens,
                        exact,
                        self.format == QFormat::Q4_1,
                    )
                }
                QFormat::Q8_0 => matvec_q8_0::launch_unchecked(
                    &client, count, dim, probe, qs, scales, xq, xd, o, self.rows, nb, tokens, exact,
                ),
            }
        }
        Ok(Tensor::from_primitive::<CubeBackend>(out))
    }

    /// Rows `ids` of the matrix, dequantized: `[ids.len(), cols]` (an embedding lookup).
    pub(super) fn rows(&self, ids: &[u32]) -> Result<Tensor<2>> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            return Err(Error::InvalidArgument(format!(
                "row {bad} outside the matrix ({} rows)",
                self.rows
            )));
        }
        let client = self.device.client();
        let ids_h = client.create_from_slice(u32::as_bytes(ids));
        let out = empty_device_dtype(
            client.clone(),
            self.device.clone(),
            Shape::new([ids.len(), self.cols]),
            DType::F32,
        );
        let nb = self.cols / QK;
        let w_blocks = self.rows * nb;
        let n = ids.len() * self.cols;
        // SAFETY: `ids` are checked against `rows`; buffers hold the lengths passed.
        unsafe {
            get_rows::launch_unchecked(
                &client,
                cube_count(n),
                CubeDim::new_1d(CUBE),
                BufferArg::from_raw_parts(
                    self.qs.clone(),
                    w_blocks * self.format.words_per_block(),
                ),
                BufferArg::from_raw_parts(
                    self.scales.clone(),
                    w_blocks * self.format.scales_per_block(),
                ),
                BufferArg::from_raw_parts(ids_h, ids.len()),
                out.clone().into_buffer_arg(),
                self.cols,
                n,
                format_code(self.format),
            );
        }
        Ok(Tensor::from_primitive::<CubeBackend>(out))
    }
}

fn format_code(f: QFormat) -> u32 {
    match f {
        QFormat::Q4_0 => 0,
        QFormat::Q4_1 => 1,
        QFormat::Q8_0 => 2,
    }
}

pub(super) fn cube_count(threads: usize) -> CubeCount {
    let cubes = threads.div_ceil(CUBE as usize).max(1);
    // Past 65,535 cubes in x, spread over y (a WebGPU limit per dimension).
    let x = cubes.min(65_535);
    let y = cubes.div_ceil(x);
    CubeCount::Static(x as u32, y as u32, 1)
}

/// The contiguous CubeCL tensor under a float tensor.
pub(super) fn cube_tensor<const D: usize>(x: Tensor<D>) -> Result<CubeTensor> {
    let t = x
        .try_into_primitive::<CubeBackend>()
        .map_err(|e| Error::Backend(format!("not a CubeCL tensor: {e:?}")))?;
    if t.dtype != DType::F32 {
        return Err(Error::Backend(format!(
            "CubeCL kernels want f32 tensors, got {:?}",
            t.dtype
        )));
    }
    Ok(if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    })
}

/// The global thread index, over a grid that may extend in y.
#[cube]
pub(super) fn thread_index() -> usize {
    CUBE_POS_Y as usize * (CUBE_COUNT_X as usize * CUBE_DIM_X as usize) + ABSOLUTE_POS_X as usize
}

/// `v` rounded to the nearest f16 value (ties to even), as f32: what an f32 → f16 → f32
/// round trip gives, without needing f16 support on the device.
#[cube]
pub(super) fn round_f16(v: f32) -> f32 {
    let bits = u32::reinterpret(v);
    let sign = bits & 0x8000_0000u32;
    let mag = bits & 0x7fff_ffffu32;
    let mut out = sign | 0x7f80_0000u32; // 65520 and above round to infinity
    if mag < 0x3880_0000u32 {
        // Below 2^-14: f16 subnormals are multiples of 2^-24.
        let a = f32::reinterpret(mag);
        let r = f32::round(a * 16_777_216.0f32) * 5.960_464_5e-8f32;
        out = sign | u32::reinterpret(r);
    } else if mag < 0x477f_f000u32 {
        // Keep 10 mantissa bits, rounding half to even.
        let lsb = (mag >> 13u32) & 1u32;
        out = sign | ((mag + 0x0fffu32 + lsb) & 0xffff_e000u32);
    }
    f32::reinterpret(out)
}

/// One thread per 32-value block of `x`: `qs = round_half_even(x * 127 / amax)`,
/// `d = f16(amax / 127)` and, with `with_sum`, `s = f16(amax / 127 * Σqs)`: llama.cpp's
/// `Q8_0` / `Q8_1` activation blocks.
#[cube(launch_unchecked)]
fn quantize_q8(
    x: &[f32],
    qs: &mut [i32],
    d: &mut [f32],
    s: &mut [f32],
    n_blocks: usize,
    #[comptime] with_sum: bool,
) {
    let b = thread_index();
    if b < n_blocks {
        let base = b * 32;
        let mut amax = 0.0f32;
        for i in 0..32usize {
            amax = max(amax, f32::abs(x[base + i]));
        }
        let scale = amax / 127.0f32;
        let mut inv = 0.0f32;
        if amax != 0.0f32 {
            inv = 127.0f32 / amax;
        }
        let mut sum = 0i32;
        for i in 0..32usize {
            let q = i32::cast_from(f32::round(x[base + i] * inv));
            qs[base + i] = q;
            sum += q;
        }
        d[b] = round_f16(scale);
        if with_sum {
            s[b] = round_f16(scale * f32::cast_from(sum));
        } else {
            s[b] = 0.0f32;
        }
    }
}

/// Σ of four products of the nibbles `(word >> shift) & 0xf` of each byte with
/// `xq[at..at + 4]`, minus `offset` from each nibble.
#[cube]
fn dot4_nibbles(word: u32, shift: u32, offset: i32, xq: &[i32], at: usize) -> i32 {
    let w = word >> shift;
    let q0 = i32::cast_from(w & 0xfu32) - offset;
    let q1 = i32::cast_from((w >> 8u32) & 0xfu32) - offset;
    let q2 = i32::cast_from((w >> 16u32) & 0xfu32) - offset;
    let q3 = i32::cast_from((w >> 24u32) & 0xfu32) - offset;
    q0 * xq[at] + q1 * xq[at + 1] + q2 * xq[at + 2] + q3 * xq[at + 3]
}

/// Σ of four products of the signed bytes of `word` with `xq[at..at + 4]`.
#[cube]
fn dot4_bytes(word: u32, xq: &[i32], at: usize) -> i32 {
    let w = i32::reinterpret(word);
    let q0 = (w << 24i32) >> 24i32;
    let q1 = (w << 16i32) >> 24i32;
    let q2 = (w << 8i32) >> 24i32;
    let q3 = w >> 24i32;
    q0 * xq[at] + q1 * xq[at + 1] + q2 * xq[at + 2] + q3 * xq[at + 3]
}

/// The 8 → 1 reduction of an AVX2 `hsum`: halves, then pairs, then the last two lanes.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn hsum8(a0: f32, a1: f32, a2: f32, a3: f32, a4: f32, a5: f32, a6: f32, a7: f32) -> f32 {
    let s0 = a0 + a4;
    let s1 = a1 + a5;
    let s2 = a2 + a6;
    let s3 = a3 + a7;
    (s0 + s2) + (s1 + s3)
}

/// `x`, hidden from the shader compiler: `z` is a zero it cannot see (read from a buffer),
/// so no algebraic rewrite such as `(a + b) - a → b` can reach through the result. Vulkan
/// compilers apply such rewrites to floats not marked exact, and WGSL cannot mark them.
#[cube]
pub(super) fn opaque(x: f32, z: u32) -> f32 {
    f32::reinterpret(u32::reinterpret(x) ^ z)
}

/// `a * b + c` rounded once, like a fused multiply-add, on any device.
///
/// `fused` says whether the device's `fma` really is fused (measured per launch by
/// [`fma_is_fused`]): WGSL allows an `fma` that rounds twice, and lavapipe's does. Otherwise
/// the exact product is formed as a sum of two floats (Dekker, with factors split by masking
/// their low 12 mantissa bits), added to `c` exactly (Knuth's two-sum), and the two small
/// parts are combined with rounding to odd so that the final round to nearest is correct
/// (Boldo and Melquiond's FMA emulation). `z` is a hidden zero (see [`opaque`]).
#[cube]
pub(super) fn fma_exact(a: f32, b: f32, c: f32, fused: bool, z: u32) -> f32 {
    let mut r = fma(a, b, c);
    if !fused {
        // Every intermediate goes through `opaque`: shader compilers may reassociate float
        // arithmetic, which would cancel the error terms away.
        // Dekker's product: a*b = uh + ul exactly.
        let ah = f32::reinterpret(u32::reinterpret(a) & 0xffff_f000u32);
        let al = opaque(a - ah, z);
        let bh = f32::reinterpret(u32::reinterpret(b) & 0xffff_f000u32);
        let bl = opaque(b - bh, z);
        let uh = opaque(a * b, z);
        let p1 = opaque(ah * bh, z);
        let p2 = opaque(ah * bl, z);
        let p3 = opaque(al * bh, z);
        let p4 = opaque(al * bl, z);
        let e1 = opaque(p1 - uh, z);
        let e2 = opaque(e1 + p2, z);
        let e3 = opaque(e2 + p3, z);
        let ul = opaque(e3 + p4, z);
        // Two-sum: c + uh = th + tl exactly.
        let th = opaque(c + uh, z);
        let bv = opaque(th - c, z);
        let av = opaque(th - bv, z);
        let da = opaque(c - av, z);
        let db = opaque(uh - bv, z);
        let tl = opaque(da + db, z);
        // v = tl + ul rounded to odd: the exact sum is v + err; an inexact v with an even
        // mantissa moves one ulp toward err.
        let v = opaque(tl + ul, z);
        let bz = opaque(v - tl, z);
        let az = opaque(v - bz, z);
        let ea = opaque(tl - az, z);
        let eb = opaque(ul - bz, z);
        let err = opaque(ea + eb, z);
        let mut vb = u32::reinterpret(v);
        if err != 0.0f32 && (vb & 1u32) == 0u32 {
            if (err > 0.0f32) == (v > 0.0f32) {
                vb += 1u32;
            } else {
                vb -= 1u32;
            }
        }
        r = th + f32::reinterpret(vb);
    }
    r
}

/// Whether `fma` is fused on this device: `probe` starts with [`FMA_PROBE`]'s `a, b, c`,
/// whose fused product-sum is `2^-24` and whose twice-rounded one is `0`. Read from a buffer so
/// that no compiler folds it.
#[cube]
pub(super) fn fma_is_fused(probe: &[f32]) -> bool {
    fma(probe[0], probe[1], probe[2]) != 0.0f32
}

/// `Q4_1` (`with_min`: `x = q·d + m`) and `Q4_0` (`x = (q - 8)·d`) blocks. Lane `j` of a
/// 32-value block holds values `4j..4j+4`: low nibbles of quant words 0..4 for `j < 4`, high
/// nibbles of the same words for `j >= 4`. `Q4_1`'s offset term `m·s` is summed apart, in
/// block order, as llama.cpp does.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matvec_q4(
    probe: &[f32],
    qs: &[u32],
    scales: &[f32],
    xq: &[i32],
    xd: &[f32],
    xs: &[f32],
    out: &mut [f32],
    rows: usize,
    nb: usize,
    tokens: usize,
    exact: u32,
    #[comptime] with_min: bool,
) {
    let pos = thread_index();
    if pos < rows * tokens {
        // Emulate a correctly rounded fma only when asked and the device's is not fused.
        let fused = exact == 0u32 || fma_is_fused(probe);
        let z = u32::reinterpret(probe[3]);
        let t = pos / rows;
        let r = pos % rows;
        let mut off = 8i32;
        let mut stride = 1usize;
        if with_min {
            off = 0i32;
            stride = 2usize;
        }
        let mut a0 = 0.0f32;
        let mut a1 = 0.0f32;
        let mut a2 = 0.0f32;
        let mut a3 = 0.0f32;
        let mut a4 = 0.0f32;
        let mut a5 = 0.0f32;
        let mut a6 = 0.0f32;
        let mut a7 = 0.0f32;
        let mut summs = 0.0f32;
        for b in 0..nb {
            let wb = r * nb + b;
            let xb = t * nb + b;
            let dd = scales[wb * stride] * xd[xb];
            if with_min {
                summs += scales[wb * 2 + 1] * xs[xb];
            }
            let w0 = qs[wb * 4];
            let w1 = qs[wb * 4 + 1];
            let w2 = qs[wb * 4 + 2];
            let w3 = qs[wb * 4 + 3];
            let x = xb * 32;
            let p0 = f32::cast_from(dot4_nibbles(w0, 0u32, off, xq, x));
            let p1 = f32::cast_from(dot4_nibbles(w1, 0u32, off, xq, x + 4));
            let p2 = f32::cast_from(dot4_nibbles(w2, 0u32, off, xq, x + 8));
            let p3 = f32::cast_from(dot4_nibbles(w3, 0u32, off, xq, x + 12));
            let p4 = f32::cast_from(dot4_nibbles(w0, 4u32, off, xq, x + 16));
            let p5 = f32::cast_from(dot4_nibbles(w1, 4u32, off, xq, x + 20));
            let p6 = f32::cast_from(dot4_nibbles(w2, 4u32, off, xq, x + 24));
            let p7 = f32::cast_from(dot4_nibbles(w3, 4u32, off, xq, x + 28));
            a0 = fma_exact(dd, p0, a0, fused, z);
            a1 = fma_exact(dd, p1, a1, fused, z);
            a2 = fma_exact(dd, p2, a2, fused, z);
            a3 = fma_exact(dd, p3, a3, fused, z);
            a4 = fma_exact(dd, p4, a4, fused, z);
            a5 = fma_exact(dd, p5, a5, fused, z);
            a6 = fma_exact(dd, p6, a6, fused, z);
            a7 = fma_exact(dd, p7, a7, fused, z);
        }
        let sum = hsum8(a0, a1, a2, a3, a4, a5, a6, a7);
        if with_min {
            out[pos] = sum + summs;
        } else {
            out[pos] = sum;
        }
    }
}

/// Lane `j` of a `Q8_0` block is quant word `j` (values `4j..4j+4`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matvec_q8_0(
    probe: &[f32],
    qs: &[u32],
    scales: &[f32],
    xq: &[i32],
    xd: &[f32],
    out: &mut [f32],
    rows: usize,
    nb: usize,
    tokens: usize,
    exact: u32,
) {
    let pos = thread_index();
    if pos < rows * tokens {
        // Emulate a correctly rounded fma only when asked and the device's is not fused.
        let fused = exact == 0u32 || fma_is_fused(probe);
        let z = u32::reinterpret(probe[3]);
        let t = pos / rows;
        let r = pos % rows;
        let mut a0 = 0.0f32;
        let mut a1 = 0.0f32;
        let mut a2 = 0.0f32;
        let mut a3 = 0.0f32;
        let mut a4 = 0.0f32;
        let mut a5 = 0.0f32;
        let mut a6 = 0.0f32;
        let mut a7 = 0.0f32;
        for b in 0..nb {
            let wb = r * nb + b;
            let xb = t * nb + b;
            let dd = scales[wb] * xd[xb];
            let w = wb * 8;
            let x = xb * 32;
            a0 = fma_exact(dd, f32::cast_from(dot4_bytes(qs[w], xq, x)), a0, fused, z);
            a1 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 1], xq, x + 4)),
                a1,
                fused,
                z,
            );
            a2 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 2], xq, x + 8)),
                a2,
                fused,
                z,
            );
            a3 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 3], xq, x + 12)),
                a3,
                fused,
                z,
            );
            a4 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 4], xq, x + 16)),
                a4,
                fused,
                z,
            );
            a5 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 5], xq, x + 20)),
                a5,
                fused,
                z,
            );
            a6 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 6], xq, x + 24)),
                a6,
                fused,
                z,
            );
            a7 = fma_exact(
                dd,
                f32::cast_from(dot4_bytes(qs[w + 7], xq, x + 28)),
                a7,
                fused,
                z,
            );
        }
        out[pos] = hsum8(a0, a1, a2, a3, a4, a5, a6, a7);
    }
}

/// One thread per output value: `out[i, c] = dequant(row ids[i], column c)`.
#[cube(launch_unchecked)]
fn get_rows(
    qs: &[u32],
    scales: &[f32],
    ids: &[u32],
    out: &mut [f32],
    cols: usize,
    n: usize,
    #[comptime] format: u32,
) {
    let pos = thread_index();
    if pos < n {
        let i = pos / cols;
        let c = pos % cols;
        let nb = cols / 32;
        let wb = ids[i] as usize * nb + c / 32;
        let e = c % 32;
        if format == 2u32 {
            // Q8_0: byte e of the block's 8 words.
            let w = i32::reinterpret(qs[wb * 8 + e / 4]);
            let shift = (3 - (e % 4)) as i32 * 8i32;
            let q = (w << shift) >> 24i32;
            out[pos] = scales[wb] * f32::cast_from(q);
        } else {
            // 4-bit: values 0..16 are low nibbles of bytes 0..16, 16..32 the high ones.
            let byte = e % 16;
            let word = qs[wb * 4 + byte / 4];
            let shift = (byte % 4) as u32 * 8u32 + (e / 16) as u32 * 4u32;
            let q = f32::cast_from((word >> shift) & 0xfu32);
            if format == 1u32 {
                out[pos] = q * scales[wb * 2] + scales[wb * 2 + 1];
            } else {
                out[pos] = (q - 8.0f32) * scales[wb];
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    //! The kernels against the native engine's CPU kernels: bit for bit where those run
    //! llama.cpp's AVX2 arithmetic. Needs a wgpu adapter (lavapipe works); skipped without one
    //! unless `KWAAINET_REQUIRE_WGPU=1`.

    use super::*;
    use crate::kernels::{Acts, QMatrix as CpuMatrix};
    use crate::sampler::SplitMix64;

    /// burn's wgpu runtime is initialized once per process: tests share it.
    pub(in crate::models::llama) fn shared_device() -> Option<Device> {
        static DEVICE: std::sync::OnceLock<Option<Device>> = std::sync::OnceLock::new();
        DEVICE
            .get_or_init(
                || match pollster::block_on(Device::wgpu_options().init_async()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        assert!(
                            std::env::var("KWAAINET_REQUIRE_WGPU").as_deref() != Ok("1"),
                            "KWAAINET_REQUIRE_WGPU=1 but no wgpu adapter: {e:?}"
                        );
                        None
                    }
                },
            )
            .clone()
    }

    /// Whether the CPU kernels run llama.cpp's AVX2 arithmetic (then results must be equal).
    fn cpu_is_reference() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    /// Random blocks of `format` with realistic scales.
    fn random_matrix(format: QFormat, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..rows * cols / QK {
            let d = 0.001 + 0.05 * rng.next_f64() as f32;
            raw.extend(f16_bytes(d));
            if format == QFormat::Q4_1 {
                raw.extend(f16_bytes(-0.1 * rng.next_f64() as f32));
            }
            let n = if format == QFormat::Q8_0 { 32 } else { 16 };
            raw.extend((0..n).map(|_| (rng.next_u64() & 0xff) as u8));
        }
        raw
    }

    /// Activations with mixed magnitudes, a zero block, and blocks whose scale is an f16
    /// subnormal.
    pub(super) fn acts(n: usize, rng: &mut SplitMix64) -> Vec<f32> {
        (0..n)
            .map(|i| match (i / QK) % 5 {
                1 => 0.0,
                2 => (rng.next_f64() as f32 - 0.5) * 1e-6,
                3 => (rng.next_f64() as f32 - 0.5) * 40.0,
                _ => rng.next_f64() as f32 - 0.5,
            })
            .collect()
    }

    fn check(format: QFormat, dtype: GgmlType, rows: usize, cols: usize, tokens: usize) {
        let Some(device) = shared_device() else {
            return;
        };
        let cube = cube_device(&device).unwrap();
        let mut rng = SplitMix64(rows as u64 * 31 + tokens as u64);
        let raw = random_matrix(format, rows, cols, &mut rng);
        let x = acts(tokens * cols, &mut rng);

        let cpu = CpuMatrix::new(dtype, rows, cols, raw.clone()).unwrap();
        let mut want = vec![0f32; tokens * rows];
        cpu.matmul(&mut Acts::new(&x, tokens, cols).unwrap(), &mut want)
            .unwrap();

        let gpu = DeviceQMatrix::upload(format, &raw, rows, cols, &cube).unwrap();
        let xt = Tensor::<2>::from_data(burn::tensor::TensorData::new(x, [tokens, cols]), &device);
        let fast = pollster::block_on(super::super::burn::read_f32(
            gpu.matmul(xt.clone()).unwrap(),
        ));
        let gpu = gpu.with_exact_fma(true);
        let got =
            pollster::block_on(super::super::burn::read_f32(gpu.matmul(xt).unwrap())).unwrap();

        assert_eq!(got.len(), want.len());
        let exact = cpu_is_reference();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if exact {
                assert_eq!(g.to_bits(), w.to_bits(), "{format:?} out[{i}]: {g} vs {w}");
            } else {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{format:?} out[{i}]"
                );
            }
        }
        // The default (device fma) differs by rounding only.
        for (i, (g, w)) in fast.unwrap().iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{format:?} out[{i}]: {g} vs {w}"
            );
        }

        // The embedding lookup returns exactly the dequantized rows.
        let ids = [0u32, (rows - 1) as u32, (rows / 2) as u32, 0];
        let got =
            pollster::block_on(super::super::burn::read_f32(gpu.rows(&ids).unwrap())).unwrap();
        let mut row = vec![0f32; cols];
        for (k, &id) in ids.iter().enumerate() {
            cpu.dequantize_row(id as usize, &mut row).unwrap();
            assert_eq!(
                &got[k * cols..(k + 1) * cols],
                &row[..],
                "{format:?} row {id}"
            );
        }
        assert!(gpu.rows(&[rows as u32]).is_err());
    }

    #[test]
    fn q4_1_matches_cpu_kernels() {
        check(QFormat::Q4_1, GgmlType::Q4_1, 300, 160, 1);
        check(QFormat::Q4_1, GgmlType::Q4_1, 70, 96, 5);
    }

    #[test]
    fn q4_0_matches_cpu_kernels() {
        check(QFormat::Q4_0, GgmlType::Q4_0, 300, 160, 1);
        check(QFormat::Q4_0, GgmlType::Q4_0, 70, 96, 5);
    }

    #[test]
    fn q8_0_matches_cpu_kernels() {
        check(QFormat::Q8_0, GgmlType::Q8_0, 300, 160, 1);
        check(QFormat::Q8_0, GgmlType::Q8_0, 70, 96, 5);
    }

    #[test]
    fn upload_rejects_bad_shapes() {
        let Some(device) = shared_device() else {
            return;
        };
        let cube = cube_device(&device).unwrap();
        assert!(DeviceQMatrix::upload(QFormat::Q4_1, &[0; 20], 1, 33, &cube).is_err());
        assert!(DeviceQMatrix::upload(QFormat::Q4_1, &[0; 19], 1, 32, &cube).is_err());
        let m = DeviceQMatrix::upload(QFormat::Q4_1, &[0; 40], 2, 32, &cube).unwrap();
        let x = Tensor::<2>::zeros([1, 64], &device);
        assert!(m.matmul(x).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod quantize_tests {
    use super::*;
    use crate::sampler::SplitMix64;

    /// The activation quantizer alone, against the CPU one.
    #[test]
    fn quantize_matches_cpu() {
        let Some(device) = super::tests::shared_device() else {
            return;
        };
        let cube = cube_device(&device).unwrap();
        let client = cube.client();
        let mut rng = SplitMix64(7);
        let x = super::tests::acts(64 * QK, &mut rng);
        let n_blocks = x.len() / QK;
        let xh = client.create_from_slice(f32::as_bytes(&x));
        let (q, d, s) = (
            client.empty(x.len() * 4),
            client.empty(n_blocks * 4),
            client.empty(n_blocks * 4),
        );
        // SAFETY: buffer lengths match the counts passed.
        unsafe {
            quantize_q8::launch_unchecked(
                &client,
                cube_count(n_blocks),
                CubeDim::new_1d(CUBE),
                BufferArg::from_raw_parts(xh, x.len()),
                BufferArg::from_raw_parts(q.clone(), x.len()),
                BufferArg::from_raw_parts(d.clone(), n_blocks),
                BufferArg::from_raw_parts(s.clone(), n_blocks),
                n_blocks,
                true,
            );
        }
        let q = i32::from_bytes(&client.read_one(q).unwrap()).to_vec();
        let d = f32::from_bytes(&client.read_one(d).unwrap()).to_vec();
        let s = f32::from_bytes(&client.read_one(s).unwrap()).to_vec();
        let want = crate::kernels::quantize_q8(&x, true);
        for (b, w) in want.iter().enumerate() {
            assert_eq!(
                d[b].to_bits(),
                w.d.to_bits(),
                "block {b} d: {} vs {}",
                d[b],
                w.d
            );
            assert_eq!(
                s[b].to_bits(),
                w.s.to_bits(),
                "block {b} s: {} vs {}",
                s[b],
                w.s
            );
            for e in 0..QK {
                assert_eq!(q[b * QK + e], i32::from(w.qs[e]), "block {b} q[{e}]");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::print_stdout)]
mod fma_tests {
    use super::*;
    use crate::sampler::SplitMix64;

    #[cube(launch_unchecked)]
    fn fma_kernel(probe: &[f32], a: &[f32], b: &[f32], c: &[f32], out: &mut [f32], n: usize) {
        let i = thread_index();
        if i < n {
            out[i] = fma_exact(
                a[i],
                b[i],
                c[i],
                fma_is_fused(probe),
                u32::reinterpret(probe[3]),
            );
        }
        if i == 0 {
            if fma_is_fused(probe) {
                out[n] = 1.0f32;
            } else {
                out[n] = 0.0f32;
            }
        }
    }

    #[test]
    fn fma_exact_is_correctly_rounded() {
        let Some(device) = super::tests::shared_device() else {
            return;
        };
        let client = cube_device(&device).unwrap().client();
        let mut rng = SplitMix64(3);
        let n = 4096;
        let mut v = |scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f64() as f32 - 0.5) * scale)
                .collect()
        };
        let a = v(0.02);
        let b: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 15000) as f32 - 7500.0)
            .collect();
        let c = v(50.0);
        let h = |x: &[f32]| client.create_from_slice(f32::as_bytes(x));
        let out = client.empty(n * 4 + 4);
        // SAFETY: every buffer holds `n` values (the probe 3).
        unsafe {
            fma_kernel::launch_unchecked(
                &client,
                cube_count(n),
                CubeDim::new_1d(CUBE),
                BufferArg::from_raw_parts(h(&FMA_PROBE), FMA_PROBE.len()),
                BufferArg::from_raw_parts(h(&a), n),
                BufferArg::from_raw_parts(h(&b), n),
                BufferArg::from_raw_parts(h(&c), n),
                BufferArg::from_raw_parts(out.clone(), n + 1),
                n,
            );
        }
        let got = f32::from_bytes(&client.read_one(out).unwrap()).to_vec();
        // Informational: which path this device took.
        println!("device fma fused: {}", got[n] == 1.0);
        let bad = (0..n)
            .filter(|&i| got[i].to_bits() != a[i].mul_add(b[i], c[i]).to_bits())
            .count();
        assert_eq!(bad, 0, "{bad} of {n} not correctly rounded");
        // The inputs must exercise the difference: a twice-rounded a*b+c is often off.
        let unfused_off = (0..n)
            .filter(|&i| (a[i] * b[i] + c[i]).to_bits() != a[i].mul_add(b[i], c[i]).to_bits())
            .count();
        assert!(unfused_off > n / 10, "inputs too easy: {unfused_off}");
    }
}
