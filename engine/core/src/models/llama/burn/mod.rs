//! The Llama-family decoder on [burn](https://burn.dev): one code path for burn's wgpu backend
//! (WebGPU in browsers, Vulkan/Metal natively) and its CPU backends, wasm32 included.
//!
//! The model is split the way a distributed pipeline runs it: [`BurnLlama::embed`] turns
//! token ids into hidden states, [`BurnLlama::forward_span`] runs any contiguous range of
//! blocks with a [`BurnKvCache`] that holds only that range, and [`BurnLlama::head`] /
//! [`BurnLlama::last_logits`] produce logits. Readback is async only (`into_data_async`):
//! blocking readback panics in browsers.
//!
//! The math follows llama.cpp's `llama` graph: RMSNorm `x / sqrt(mean(x²) + eps) * w`, RoPE of
//! the NORM kind (adjacent pairs — GGUF stores q/k already permuted for it), causal
//! grouped-query attention scaled by `1/sqrt(head_dim)`, SwiGLU MLP, residual adds.
//!
//! llama.cpp's CPU kernels round activations to 8 bits per block before every quantized
//! matmul, and K, V, Q and the attention weights to f16; by default this model reproduces that
//! rounding ([`BurnLlama::set_llama_cpp_rounding`]).
//!
//! On a CubeCL device (burn's wgpu backend, this crate's `wgpu` feature) every step of a block
//! then runs in this crate's kernels (modules `cube` and `cube_block`) in llama.cpp's AVX2
//! order, and the logits equal the native CPU engine's — and so llama.cpp's — bit for bit
//! wherever the device's arithmetic is correctly rounded and its `fma` fused, or emulated with
//! [`BurnLlama::set_exact_fma`] (tested on lavapipe). On other backends (flex) the rounding is
//! emulated with tensor ops in burn's summation order: greedy output equals llama.cpp's on the
//! reference `capital-raw` case, but longer generations flip some near-ties (teacher-forced
//! top-1 agreement 90–97% on SmolLM2-135M).
//!
//! Weights: on a CubeCL device (burn's wgpu backend; this crate's `wgpu` feature) `Q4_0`,
//! `Q4_1` and `Q8_0` matrices stay in their GGML blocks on the device and every projection runs
//! through fused dequantize + matrix-vector kernels (module `cube`) that reproduce llama.cpp's
//! AVX2 arithmetic (equal to it bit for bit where the device's `fma` is fused, or with the
//! exact-FMA emulation on); the embedding lookup dequantizes only the rows it reads. For
//! SmolLM2-135M Q4_1 that is 112 MB of weights on the device instead of 538 MB in f32. Other
//! weight types, and every matrix on other backends, are dequantized to f32 at load and stored
//! transposed (`[in, out]`) so each projection is a plain `x @ W`.

use std::io::{Read, Seek};
use std::ops::Range;

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

#[cfg(feature = "wgpu")]
use super::cube;
use super::{
    BlockWeights, KV_PAD, LoadSpec, SpanCache, SpanModel, WeightSource, Weights, check_blocks,
    check_rows, matrix_info, read_norm,
};
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use crate::{Error, LlamaConfig, Result};

/// How llama.cpp's CPU kernels round the activations entering a matmul with a given weight
/// type: quantized weights are dotted with activations quantized to 8 bits per block
/// (`Q8_0`/`Q8_1` for 32-element blocks with an f16 scale, `Q8_K` for 256 with an f32 scale).
/// Reproducing that rounding keeps greedy outputs identical to llama.cpp on near-ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActRounding {
    None,
    Q8 { block: usize, f16_scale: bool },
}

impl ActRounding {
    fn for_weight(dtype: GgmlType) -> Self {
        match dtype {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => Self::Q8 {
                block: 32,
                f16_scale: true,
            },
            GgmlType::Q4_K | GgmlType::Q6_K => Self::Q8 {
                block: 256,
                f16_scale: false,
            },
            _ => Self::None,
        }
    }
}

/// A projection `y = x @ Wᵀ` of a GGML matrix `W` (`[out, in]`).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few hundred per model: size does not matter
enum Linear {
    /// Dequantized to f32 and stored transposed (`[in, out]`), so `y = x @ w`.
    Dense { w: Tensor<2>, act: ActRounding },
    /// GGML blocks on a CubeCL device, used by our fused kernels (which always round the
    /// activations as llama.cpp does).
    #[cfg(feature = "wgpu")]
    Quant(cube::DeviceQMatrix),
}

impl Linear {
    fn forward(&self, x: Tensor<2>, llama_cpp_rounding: bool) -> Result<Tensor<2>> {
        match self {
            Self::Dense { w, act } => {
                let x = match *act {
                    ActRounding::Q8 { block, f16_scale } if llama_cpp_rounding => {
                        round_q8(x, block, f16_scale)
                    }
                    _ => x,
                };
                Ok(x.matmul(w.clone()))
            }
            #[cfg(feature = "wgpu")]
            Self::Quant(m) => m.matmul(x),
        }
    }

    /// Rows `tokens` of `W` (`[tokens.len(), in]`): an embedding lookup.
    fn rows(&self, tokens: &[u32], device: &Device) -> Result<Tensor<2>> {
        match self {
            Self::Dense { w, .. } => {
                let ids = tokens.iter().map(|&t| t as i32).collect::<Vec<_>>();
                let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), device);
                Ok(w.clone().select(1, ids).transpose())
            }
            #[cfg(feature = "wgpu")]
            Self::Quant(m) => m.rows(tokens),
        }
    }

    /// Bytes of the weights on the device.
    fn device_bytes(&self) -> usize {
        match self {
            Self::Dense { w, .. } => w.shape().num_elements() * 4,
            #[cfg(feature = "wgpu")]
            Self::Quant(m) => m.device_bytes(),
        }
    }
}

type Block = BlockWeights<Tensor<2>, Linear>;

/// A Llama-family model (or the part of it a [`LoadSpec`] names) resident on one burn
/// [`Device`].
#[derive(Debug)]
pub struct BurnLlama {
    config: LlamaConfig,
    device: Device,
    /// Norms as `[1, dim]` rows; matrices as [`Linear`] (the token embedding as `[dim,
    /// vocab]`: embedding lookup selects columns, and when the head is tied it is the head's
    /// `[in, out]` matrix, so one copy serves both).
    weights: Weights<Tensor<2>, Linear>,
    /// Round activations before matmuls the way llama.cpp's CPU kernels do.
    llama_cpp_rounding: bool,
    /// On a CubeCL device: the kernels that run the rest of each block (norms, RoPE, cache,
    /// attention, SwiGLU) in llama.cpp's arithmetic, used while `llama_cpp_rounding` is on.
    #[cfg(feature = "wgpu")]
    kernels: Option<cube::block::Kernels>,
}

impl BurnLlama {
    /// Loads the parts of the model `spec` names from `gguf` (whose tensor bytes `r` holds)
    /// onto `device`; the bytes of other parts are never read. On a CubeCL device (burn's
    /// wgpu backend, with this crate's `wgpu` feature) `Q4_0`/`Q4_1`/`Q8_0` matrices stay
    /// quantized and run through this crate's kernels; everything else is dequantized to f32.
    pub fn load<R: Read + Seek>(
        gguf: &Gguf,
        r: &mut R,
        device: &Device,
        spec: LoadSpec,
    ) -> Result<Self> {
        Self::load_with(gguf, r, device, spec, true)
    }

    /// Like [`BurnLlama::load`], but with every matrix dequantized to f32 even where a
    /// quantized kernel exists (to compare the two paths).
    pub fn load_dequantized<R: Read + Seek>(
        gguf: &Gguf,
        r: &mut R,
        device: &Device,
        spec: LoadSpec,
    ) -> Result<Self> {
        Self::load_with(gguf, r, device, spec, false)
    }

    fn load_with<R: Read + Seek>(
        gguf: &Gguf,
        r: &mut R,
        device: &Device,
        spec: LoadSpec,
        quantized: bool,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let mut loader = Loader {
            gguf,
            r,
            device,
            #[cfg(feature = "wgpu")]
            cube: if quantized {
                cube::cube_device(device)
            } else {
                None
            },
        };
        #[cfg(not(feature = "wgpu"))]
        let _ = quantized;
        let weights = Weights::load(gguf, &config, spec, &mut loader)?;
        tracing::debug!(spec = ?weights.spec(), dim = config.dim, "burn model loaded");
        #[cfg(feature = "wgpu")]
        let kernels = loader.cube.as_ref().map(cube::block::Kernels::new);
        Ok(Self {
            config,
            device: device.clone(),
            weights,
            llama_cpp_rounding: true,
            #[cfg(feature = "wgpu")]
            kernels,
        })
    }

    /// Whether activations entering quantized-weight matmuls are rounded to 8 bits per block
    /// as llama.cpp's CPU kernels do (default: on). Off gives plain f32 math: slightly more
    /// precise, a little faster, but greedy outputs may differ from llama.cpp on near-ties.
    pub fn set_llama_cpp_rounding(&mut self, on: bool) {
        self.llama_cpp_rounding = on;
    }

    /// Bit-exact mode for CubeCL devices whose `fma` rounds twice (WGSL allows it; lavapipe's
    /// does): the kernels then emulate a correctly rounded `fma`, and results equal the native
    /// CPU engine's bit for bit, at about 4x the arithmetic in the matrix kernels. Devices with
    /// a fused `fma` (most GPUs) get those results either way. Off by default: a twice-rounded
    /// `fma` moves results by an ulp or two. No effect on other backends.
    pub fn set_exact_fma(&mut self, on: bool) {
        #[cfg(feature = "wgpu")]
        {
            if let Some(k) = &mut self.kernels {
                k.set_exact(on);
            }
            for l in self.weights.matrices_mut() {
                if let Linear::Quant(m) = l {
                    m.set_exact_fma(on);
                }
            }
        }
        #[cfg(not(feature = "wgpu"))]
        let _ = on;
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// What was loaded.
    pub fn spec(&self) -> &LoadSpec {
        self.weights.spec()
    }

    /// Bytes of the weights on the device.
    pub fn weight_bytes(&self) -> usize {
        let dim = self.config.dim;
        self.weights.bytes(|_| dim * 4, Linear::device_bytes)
    }

    /// Whether any matrix is held quantized on the device (and runs through the fused kernels).
    pub fn is_quantized(&self) -> bool {
        #[cfg(feature = "wgpu")]
        {
            self.weights
                .matrices()
                .any(|m| matches!(m, Linear::Quant(_)))
        }
        #[cfg(not(feature = "wgpu"))]
        false
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Hidden states `[tokens.len(), dim]` for `tokens` (the spec must embed).
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor<2>> {
        let embedding = self.weights.embedding()?;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to embed".into()));
        }
        let vocab = self.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {t} outside the vocabulary ({vocab})"
            )));
        }
        embedding.rows(tokens, &self.device)
    }

    /// Runs the blocks of `cache` over `hidden` (`[seq, dim]`), for the `seq` positions
    /// following those already in the cache, and appends their keys and values to it.
    pub fn forward_span(&self, hidden: Tensor<2>, cache: &mut BurnKvCache) -> Result<Tensor<2>> {
        let c = &self.config;
        let blocks = cache.blocks.clone();
        self.spec().check_holds(&blocks)?;
        let [seq, dim] = hidden.dims();
        if dim != c.dim || seq == 0 {
            return Err(Error::InvalidArgument(format!(
                "hidden states are [{seq}, {dim}], expected [n > 0, {}]",
                c.dim
            )));
        }
        let start_pos = cache.len;
        let total = start_pos + seq;
        if total > cache.max_ctx {
            return Err(Error::ContextFull {
                needed: total,
                max: cache.max_ctx,
            });
        }
        let pass = Pass {
            start_pos,
            rope: self.rope_tables(start_pos, seq),
            // The CubeCL attention masks by position itself.
            mask: (seq > 1 && self.block_kernels().is_none())
                .then(|| self.causal_mask(start_pos, seq)),
        };
        let mut x = hidden;
        for (slot, i) in blocks.enumerate() {
            x = self.block(self.weights.block(i)?, x, cache, slot, &pass)?;
        }
        cache.len = total;
        Ok(x)
    }

    /// Logits `[seq, vocab]` for every row of `hidden` (final norm, then the output head).
    pub fn head(&self, hidden: Tensor<2>) -> Result<Tensor<2>> {
        let (norm, output) = self.weights.head()?;
        let x = match self.block_kernels() {
            #[cfg(feature = "wgpu")]
            Some(k) => k.rms_norm(hidden, norm, self.config.norm_eps)?,
            _ => rms_norm(hidden, norm, self.config.norm_eps),
        };
        output.forward(x, self.llama_cpp_rounding)
    }

    /// Logits of the last row of `hidden`, read back to the host.
    pub async fn last_logits(&self, hidden: Tensor<2>) -> Result<Vec<f32>> {
        let [seq, dim] = hidden.dims();
        if seq == 0 {
            return Err(Error::InvalidArgument("no hidden states".into()));
        }
        let last = hidden.slice([seq - 1..seq, 0..dim]);
        read_f32(self.head(last)?).await
    }

    fn block(
        &self,
        b: &Block,
        x: Tensor<2>,
        cache: &mut BurnKvCache,
        slot: usize,
        pass: &Pass,
    ) -> Result<Tensor<2>> {
        #[cfg(feature = "wgpu")]
        if let Some(k) = self.block_kernels() {
            return self.block_kernels_path(k, b, x, cache, slot, pass);
        }
        let c = &self.config;
        let [seq, _] = x.dims();
        let (n_heads, n_kv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let group = n_heads / n_kv;
        let start_pos = pass.start_pos;
        let total = start_pos + seq;

        let r = self.llama_cpp_rounding;
        let h = rms_norm(x.clone(), &b.attn_norm, c.norm_eps);
        let q = b.wq.forward(h.clone(), r)?.reshape([seq, n_heads, hd]);
        let k = b.wk.forward(h.clone(), r)?.reshape([seq, n_kv, hd]);
        let v = b.wv.forward(h, r)?.reshape([seq, n_kv, hd]);
        let q = pass.rope.apply(q, c.rope_dim).swap_dims(0, 1); // [n_heads, seq, hd]
        let k = pass.rope.apply(k, c.rope_dim).swap_dims(0, 1); // [n_kv, seq, hd]
        let v = v.swap_dims(0, 1);
        // llama.cpp keeps K and V in f16 and converts Q and the attention weights to f16 for
        // its f16 matmuls.
        let (q, k, v) = if r {
            (round_f16(q), round_f16(k), round_f16(v))
        } else {
            (q, k, v)
        };

        let (keys, values) = cache.append(slot, start_pos, k, v);
        // Query head h reads kv head h / group: heads of one group are adjacent, so the
        // group folds into the row dimension of one matmul per kv head.
        let q = q.reshape([n_kv, group * seq, hd]);
        let scores = q
            .matmul(keys.swap_dims(1, 2))
            .mul_scalar(1.0 / (hd as f64).sqrt())
            .reshape([n_kv, group, seq, total]);
        let scores = match &pass.mask {
            Some(m) => scores.add(m.clone()),
            None => scores,
        };
        let probs = softmax(scores, 3).reshape([n_kv, group * seq, total]);
        let probs = if r { round_f16(probs) } else { probs };
        let attn = probs
            .matmul(values) // [n_kv, group * seq, hd]
            .reshape([n_heads, seq, hd])
            .swap_dims(0, 1)
            .reshape([seq, n_heads * hd]);
        let x = x.add(b.wo.forward(attn, r)?);

        let h = rms_norm(x.clone(), &b.ffn_norm, c.norm_eps);
        let gate = silu(b.w_gate.forward(h.clone(), r)?);
        let up = b.w_up.forward(h, r)?;
        Ok(x.add(b.w_down.forward(gate.mul(up), r)?))
    }

    /// The CubeCL block kernels, when this model has them and rounds as llama.cpp does.
    #[cfg(feature = "wgpu")]
    fn block_kernels(&self) -> Option<&cube::block::Kernels> {
        self.kernels.as_ref().filter(|_| self.llama_cpp_rounding)
    }

    #[cfg(not(feature = "wgpu"))]
    fn block_kernels(&self) -> Option<std::convert::Infallible> {
        None
    }

    /// [`Self::block`] with every step in a CubeCL kernel, in the CPU engine's order.
    #[cfg(feature = "wgpu")]
    fn block_kernels_path(
        &self,
        k: &cube::block::Kernels,
        b: &Block,
        x: Tensor<2>,
        cache: &mut BurnKvCache,
        slot: usize,
        pass: &Pass,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let (cos, sin) = (&pass.rope.cos, &pass.rope.sin);
        let h = k.rms_norm(x.clone(), &b.attn_norm, c.norm_eps)?;
        let q = b.wq.forward(h.clone(), true)?;
        let kk = b.wk.forward(h.clone(), true)?;
        let v = b.wv.forward(h, true)?;
        let q = k.rope_f16(q, cos, sin, c.n_heads, c.head_dim, c.rope_dim)?;
        let kk = k.rope_f16(kk, cos, sin, c.n_kv_heads, c.head_dim, c.rope_dim)?;
        let (kc, vc) = (&cache.k[slot], &cache.v[slot]);
        k.kv_store(kk, v, kc, vc, pass.start_pos)?;
        let att = k.attention(
            q,
            kc,
            vc,
            pass.start_pos,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
        )?;
        let x = x.add(b.wo.forward(att, true)?);
        let h = k.rms_norm(x.clone(), &b.ffn_norm, c.norm_eps)?;
        let g = b.w_gate.forward(h.clone(), true)?;
        let u = b.w_up.forward(h, true)?;
        let a = k.swiglu(g, u)?;
        Ok(x.add(b.w_down.forward(a, true)?))
    }

    /// cos/sin tables for the positions of this call (see [`LlamaConfig::rope_angles`]).
    fn rope_tables(&self, start_pos: usize, seq: usize) -> Rope {
        let half = self.config.rope_dim / 2;
        let (cos, sin) = self.config.rope_angles(start_pos, seq);
        let t =
            |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [seq, 1, half]), &self.device);
        Rope {
            cos: t(cos),
            sin: t(sin),
        }
    }

    /// Additive mask `[1, 1, seq, start_pos + seq]`: row `r` sees keys `0..=start_pos + r`.
    fn causal_mask(&self, start_pos: usize, seq: usize) -> Tensor<4> {
        let total = start_pos + seq;
        let mut m = vec![0.0f32; seq * total];
        for r in 0..seq {
            for v in &mut m[r * total + start_pos + r + 1..(r + 1) * total] {
                *v = f32::NEG_INFINITY;
            }
        }
        Tensor::<4>::from_data(TensorData::new(m, [1, 1, seq, total]), &self.device)
    }
}

/// What every block of one `forward_span` call shares.
#[derive(Debug)]
struct Pass {
    start_pos: usize,
    rope: Rope,
    /// Causal mask; `None` for a single new position (it sees every cached one).
    mask: Option<Tensor<4>>,
}

/// Per-call RoPE tables, `[seq, 1, rope_dim / 2]`.
#[derive(Debug)]
struct Rope {
    cos: Tensor<3>,
    sin: Tensor<3>,
}

impl Rope {
    /// Rotates adjacent pairs `(x[2i], x[2i+1])` of the first `rope_dim` dims of each head of
    /// `x` (`[seq, heads, head_dim]`).
    fn apply(&self, x: Tensor<3>, rope_dim: usize) -> Tensor<3> {
        let [seq, heads, hd] = x.dims();
        let half = rope_dim / 2;
        let (rot, pass) = if rope_dim < hd {
            (
                x.clone().slice([0..seq, 0..heads, 0..rope_dim]),
                Some(x.slice([0..seq, 0..heads, rope_dim..hd])),
            )
        } else {
            (x, None)
        };
        let pairs = rot.reshape([seq, heads, half, 2]);
        let x0 = pairs
            .clone()
            .slice([0..seq, 0..heads, 0..half, 0..1])
            .reshape([seq, heads, half]);
        let x1 = pairs
            .slice([0..seq, 0..heads, 0..half, 1..2])
            .reshape([seq, heads, half]);
        let (cos, sin) = (self.cos.clone(), self.sin.clone());
        let y0 = x0.clone().mul(cos.clone()).sub(x1.clone().mul(sin.clone()));
        let y1 = x0.mul(sin).add(x1.mul(cos));
        let rot = Tensor::stack::<4>(vec![y0, y1], 3).reshape([seq, heads, rope_dim]);
        match pass {
            Some(p) => Tensor::cat(vec![rot, p], 2),
            None => rot,
        }
    }
}

/// `x / sqrt(mean(x²) + eps) * w` over the last dimension; `w` is `[1, dim]`.
fn rms_norm(x: Tensor<2>, w: &Tensor<2>, eps: f32) -> Tensor<2> {
    let ms = x.clone().square().mean_dim(1);
    x.mul(ms.add_scalar(eps).sqrt().recip()).mul(w.clone())
}

/// Rounds `x` (`[rows, n]`) as llama.cpp quantizes activations to Q8: per block of `block`
/// elements, `q = round_half_even(x * 127 / amax)` and `x' = q * d` with `d = amax / 127`
/// (itself rounded to f16 for `Q8_0`/`Q8_1`).
fn round_q8(x: Tensor<2>, block: usize, f16_scale: bool) -> Tensor<2> {
    let [rows, n] = x.dims();
    if !n.is_multiple_of(block) {
        return x;
    }
    let xb = x.reshape([rows, n / block, block]);
    let amax = xb.clone().abs().max_dim(2);
    // An all-zero block stays zero: 0 * (127 / tiny) = 0.
    let safe = amax.clone().clamp_min(1e-30);
    let id = safe.clone().full_like(127.0).div(safe);
    let q = xb.mul(id).round();
    let d = amax.div_scalar(127.0);
    let d = if f16_scale { round_f16(d) } else { d };
    q.mul(d).reshape([rows, n])
}

/// Rounds `x` to the nearest f16 value (normal range; smaller magnitudes use the subnormal
/// spacing), with tensor ops so that every backend can run it.
fn round_f16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    use std::f64::consts::LN_2;
    let exp = x
        .clone()
        .abs()
        .clamp_min(6.103_515_625e-5) // 2^-14, the smallest normal f16
        .log()
        .div_scalar(LN_2)
        .floor();
    let ulp = exp.sub_scalar(10.0).mul_scalar(LN_2).exp();
    x.div(ulp.clone()).round().mul(ulp)
}

/// Reads a float tensor back to the host (async: works in browsers too).
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("readback: {e:?}")))?;
    data.try_into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("readback: {e:?}")))
}

/// Keys and values of a contiguous span of blocks, with a fixed capacity in positions.
#[derive(Debug)]
pub struct BurnKvCache {
    blocks: Range<usize>,
    max_ctx: usize,
    len: usize,
    /// Per block: `[n_kv_heads, max_ctx, head_dim]`.
    k: Vec<Tensor<3>>,
    v: Vec<Tensor<3>>,
}

impl BurnKvCache {
    /// An empty cache for `blocks` of a model shaped like `config`, holding up to `max_ctx`
    /// positions, allocated on `device`.
    pub fn new(
        config: &LlamaConfig,
        blocks: Range<usize>,
        max_ctx: usize,
        device: &Device,
    ) -> Result<Self> {
        check_blocks(config, &blocks)?;
        if max_ctx == 0 {
            return Err(Error::InvalidArgument(
                "context size must be at least 1".into(),
            ));
        }
        // Room for attention's padding (read by the CubeCL kernels).
        let shape = [
            config.n_kv_heads,
            max_ctx.next_multiple_of(KV_PAD),
            config.head_dim,
        ];
        let n = blocks.len();
        Ok(Self {
            blocks,
            max_ctx,
            len: 0,
            k: (0..n).map(|_| Tensor::zeros(shape, device)).collect(),
            v: (0..n).map(|_| Tensor::zeros(shape, device)).collect(),
        })
    }

    /// Writes `k`, `v` (`[n_kv, seq, hd]`) at `start_pos` for block `slot` and returns the
    /// keys and values of positions `0..start_pos + seq`.
    fn append(
        &mut self,
        slot: usize,
        start_pos: usize,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [n_kv, seq, hd] = k.dims();
        let total = start_pos + seq;
        let write = [0..n_kv, start_pos..total, 0..hd];
        let read = [0..n_kv, 0..total, 0..hd];
        self.k[slot].inplace(|t| t.slice_assign(write.clone(), k));
        self.v[slot].inplace(|t| t.slice_assign(write, v));
        (
            self.k[slot].clone().slice(read.clone()),
            self.v[slot].clone().slice(read),
        )
    }
}

/// A session of a [`BurnLlama`] over all of its blocks: what
/// [`Generator::step_async`](crate::generate::Generator::step_async) drives in a browser,
/// where readback is asynchronous.
pub type BurnSession<M> = crate::generate::SpanSession<M>;

impl SpanCache for BurnKvCache {
    fn len(&self) -> usize {
        self.len
    }
    fn max_ctx(&self) -> usize {
        self.max_ctx
    }
    fn blocks(&self) -> Range<usize> {
        self.blocks.clone()
    }
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl SpanModel for BurnLlama {
    type Hidden = Tensor<2>;
    type Cache = BurnKvCache;

    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn spec(&self) -> &LoadSpec {
        self.weights.spec()
    }
    fn new_cache(&self, blocks: Range<usize>, max_ctx: usize) -> Result<BurnKvCache> {
        self.spec().check_holds(&blocks)?;
        BurnKvCache::new(
            &self.config,
            blocks,
            max_ctx.min(self.config.context_length),
            &self.device,
        )
    }
    fn embed(&self, tokens: &[u32]) -> Result<Tensor<2>> {
        BurnLlama::embed(self, tokens)
    }
    fn forward_span(&self, hidden: Tensor<2>, cache: &mut BurnKvCache) -> Result<Tensor<2>> {
        BurnLlama::forward_span(self, hidden, cache)
    }
    async fn last_logits(&self, hidden: Tensor<2>) -> Result<Vec<f32>> {
        BurnLlama::last_logits(self, hidden).await
    }
    fn hidden_from_rows(&self, rows: Vec<f32>) -> Result<Tensor<2>> {
        let dim = self.config.dim;
        let n = check_rows(rows.len(), dim)?;
        Ok(Tensor::from_data(
            TensorData::new(rows, [n, dim]),
            &self.device,
        ))
    }
    async fn hidden_into_rows(&self, hidden: Tensor<2>) -> Result<Vec<f32>> {
        read_f32(hidden).await
    }
}

/// Reads and dequantizes named tensors onto a device.
struct Loader<'a, R> {
    gguf: &'a Gguf,
    r: &'a mut R,
    device: &'a Device,
    /// Set when matrices with a kernel stay quantized on this CubeCL device.
    #[cfg(feature = "wgpu")]
    cube: Option<burn_cubecl::CubeDevice>,
}

impl<R: Read + Seek> WeightSource for Loader<'_, R> {
    type Norm = Tensor<2>;
    type Matrix = Linear;

    /// A `[1, n]` row.
    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<2>> {
        let v = read_norm(self.gguf, self.r, name, n)?;
        Ok(Tensor::from_data(TensorData::new(v, [1, n]), self.device))
    }

    /// Stored transposed as `[n_in, n_out]` so that `y = x @ W` (or, on a CubeCL device with
    /// a kernel for its type, quantized as the file holds it).
    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let info = matrix_info(self.gguf, name, n_in, n_out)?;
        #[cfg(feature = "wgpu")]
        if let (Some(dev), Some(format)) = (&self.cube, cube::QFormat::of(info.dtype)) {
            let raw = self.gguf.read_tensor(self.r, info)?;
            return Ok(Linear::Quant(cube::DeviceQMatrix::upload(
                format, &raw, n_out, n_in, dev,
            )?));
        }
        let w = self.gguf.read_tensor_f32(self.r, info)?;
        let t = transpose(&w, n_out, n_in);
        Ok(Linear::Dense {
            w: Tensor::from_data(TensorData::new(t, [n_in, n_out]), self.device),
            act: ActRounding::for_weight(info.dtype),
        })
    }
}

/// Transposes a row-major `[rows, cols]` matrix, in cache-friendly tiles.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut dst = vec![0.0f32; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_non_square() {
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        // [[0, 1, 2], [3, 4, 5]] -> [[0, 3], [1, 4], [2, 5]]
        assert_eq!(transpose(&src, 2, 3), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
