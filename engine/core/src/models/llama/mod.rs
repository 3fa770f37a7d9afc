//! The Llama-family decoder (`llama`, `mistral`, `smollm` layouts; see [`LlamaConfig`]).
//!
//! | Module | Backend | Block math |
//! |---|---|---|
//! | this one | all | what a peer loads ([`LoadSpec`]), the weights by their GGUF names (`Weights`), the span seam ([`SpanModel`], [`SpanCache`]) |
//! | [`cpu`] | the CPU, native and wasm32 | fused dequantize × dot kernels on quantized weights (`crate::kernels`), llama.cpp's numbers bit for bit |
//! | `burn` (feature `burn`) | any burn backend (wgpu, flex) | burn tensor ops, with llama.cpp's activation rounding emulated |
//! | `cube` (feature `wgpu`) | burn's wgpu backend | CubeCL kernels that run the burn model's blocks in the CPU engine's order |
//!
//! Every backend loads any [`LoadSpec`] (a peer reads only the tensors of its span) and runs
//! a span through the same [`SpanModel`] calls: `embed` on the first peer, `forward_span`
//! over each peer's blocks with its own cache, `last_logits` on the last.

#[cfg(feature = "burn")]
pub mod burn;
pub mod cpu;
#[cfg(feature = "wgpu")]
mod cube;

use std::future::Future;
use std::io::{Read, Seek};
use std::ops::Range;

use crate::gguf::{Gguf, TensorInfo};
use crate::{Error, LlamaConfig, Result};

/// Attention runs over the cache padded to a multiple of this many positions (masked
/// scores, zero values), as llama.cpp does: the padding moves its dot products onto their
/// SIMD reduction order, which results must follow to match it bit for bit. Any multiple
/// of 32 gives the same numbers; 32 is the cheapest. Every backend pads the same way.
pub(crate) const KV_PAD: usize = 32;

/// Which parts of a model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// Transformer blocks to load.
    pub blocks: Range<usize>,
    /// Load the token embedding (first peer of a chain).
    pub embed: bool,
    /// Load the final norm and output head (last peer of a chain).
    pub head: bool,
}

impl LoadSpec {
    /// Everything: a standalone model.
    pub fn full(config: &LlamaConfig) -> Self {
        Self {
            blocks: 0..config.n_layers,
            embed: true,
            head: true,
        }
    }

    /// Refuses `blocks` unless this spec loads every one of them.
    pub fn check_holds(&self, blocks: &Range<usize>) -> Result<()> {
        if blocks.start < self.blocks.start
            || blocks.end > self.blocks.end
            || blocks.start > blocks.end
        {
            return Err(Error::InvalidArgument(format!(
                "blocks {blocks:?} not loaded (this peer holds {:?})",
                self.blocks
            )));
        }
        Ok(())
    }
}

/// Refuses a block range that is not a range of `config`'s blocks.
pub(crate) fn check_blocks(config: &LlamaConfig, blocks: &Range<usize>) -> Result<()> {
    if blocks.start > blocks.end || blocks.end > config.n_layers {
        return Err(Error::InvalidArgument(format!(
            "blocks {blocks:?} outside 0..{}",
            config.n_layers
        )));
    }
    Ok(())
}

/// The GGUF name of tensor `what` (`attn_q`, `ffn_down`, …) of block `i`.
fn block_tensor(i: usize, what: &str) -> String {
    format!("blk.{i}.{what}.weight")
}

/// The tensor `name` of `g`, or a `model` error naming it.
pub(crate) fn tensor<'a>(g: &'a Gguf, name: &str) -> Result<&'a TensorInfo> {
    g.tensor(name)
        .ok_or_else(|| Error::Model(format!("tensor {name} missing")))
}

/// Where a backend's weights come from: it reads each tensor the shared loader names
/// ([`Weights::load`]) into its own representation.
pub(crate) trait WeightSource {
    /// A norm's weight vector.
    type Norm;
    /// A projection matrix.
    type Matrix;
    /// Reads the vector `name` of `len` values.
    fn norm(&mut self, name: &str, len: usize) -> Result<Self::Norm>;
    /// Reads the matrix `name`, GGML shape `[n_in, n_out]` (`n_out` rows of `n_in` values).
    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Self::Matrix>;
}

/// One transformer block's weights as a backend holds them.
#[derive(Debug)]
pub(crate) struct BlockWeights<N, M> {
    pub attn_norm: N,
    pub wq: M,
    pub wk: M,
    pub wv: M,
    pub wo: M,
    pub ffn_norm: N,
    pub w_gate: M,
    pub w_up: M,
    pub w_down: M,
}

impl<N, M> BlockWeights<N, M> {
    fn load<S: WeightSource<Norm = N, Matrix = M>>(
        c: &LlamaConfig,
        i: usize,
        s: &mut S,
    ) -> Result<Self> {
        let (dim, kv, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let n = |what| block_tensor(i, what);
        Ok(Self {
            attn_norm: s.norm(&n("attn_norm"), dim)?,
            wq: s.matrix(&n("attn_q"), dim, dim)?,
            wk: s.matrix(&n("attn_k"), dim, kv)?,
            wv: s.matrix(&n("attn_v"), dim, kv)?,
            wo: s.matrix(&n("attn_output"), dim, dim)?,
            ffn_norm: s.norm(&n("ffn_norm"), dim)?,
            w_gate: s.matrix(&n("ffn_gate"), dim, ffn)?,
            w_up: s.matrix(&n("ffn_up"), dim, ffn)?,
            w_down: s.matrix(&n("ffn_down"), ffn, dim)?,
        })
    }

    /// The two norm vectors.
    pub fn norms(&self) -> [&N; 2] {
        [&self.attn_norm, &self.ffn_norm]
    }

    /// The seven projections.
    pub fn matrices(&self) -> [&M; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    /// The seven projections, mutably.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    pub fn matrices_mut(&mut self) -> [&mut M; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }
}

/// The final norm and the output projection.
#[derive(Debug)]
pub(crate) struct HeadWeights<N, M> {
    pub norm: N,
    /// `output.weight`; `None` when the model ties its head to the token embedding.
    pub output: Option<M>,
}

/// The loaded part of a model, as a backend holds it.
#[derive(Debug)]
pub(crate) struct Weights<N, M> {
    spec: LoadSpec,
    /// `token_embd`: held when the spec embeds, or when a tied head needs it.
    embedding: Option<M>,
    /// The blocks of `spec.blocks`, in order.
    blocks: Vec<BlockWeights<N, M>>,
    head: Option<HeadWeights<N, M>>,
}

impl<N, M> Weights<N, M> {
    /// Reads the tensors `spec` names, and only those, through `source`.
    pub fn load<S: WeightSource<Norm = N, Matrix = M>>(
        g: &Gguf,
        config: &LlamaConfig,
        spec: LoadSpec,
        source: &mut S,
    ) -> Result<Self> {
        check_blocks(config, &spec.blocks)?;
        let (dim, vocab) = (config.dim, config.vocab_size);
        let tied = g.tensor("output.weight").is_none();
        let embedding = if spec.embed || (spec.head && tied) {
            Some(source.matrix("token_embd.weight", dim, vocab)?)
        } else {
            None
        };
        let blocks = spec
            .blocks
            .clone()
            .map(|i| BlockWeights::load(config, i, source))
            .collect::<Result<Vec<_>>>()?;
        let head = if spec.head {
            Some(HeadWeights {
                output: if tied {
                    None
                } else {
                    Some(source.matrix("output.weight", dim, vocab)?)
                },
                norm: source.norm("output_norm.weight", dim)?,
            })
        } else {
            None
        };
        Ok(Self {
            spec,
            embedding,
            blocks,
            head,
        })
    }

    /// What was loaded.
    pub fn spec(&self) -> &LoadSpec {
        &self.spec
    }

    /// The token embedding, when this spec embeds.
    pub fn embedding(&self) -> Result<&M> {
        match &self.embedding {
            Some(e) if self.spec.embed => Ok(e),
            _ => Err(Error::InvalidArgument("embedding not loaded".into())),
        }
    }

    /// The final norm and the output matrix (the embedding when tied), when this spec has
    /// the head.
    pub fn head(&self) -> Result<(&N, &M)> {
        let h = self
            .head
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("output head not loaded".into()))?;
        let output = h.output.as_ref().or(self.embedding.as_ref());
        let output = output.ok_or_else(|| Error::Model("tied head without embedding".into()))?;
        Ok((&h.norm, output))
    }

    /// Block `i` of the model (which must be loaded: callers check spans first).
    pub fn block(&self, i: usize) -> Result<&BlockWeights<N, M>> {
        i.checked_sub(self.spec.blocks.start)
            .and_then(|k| self.blocks.get(k))
            .ok_or_else(|| Error::InvalidArgument(format!("block {i} not loaded")))
    }

    /// Every matrix held (the embedding once, even where the head shares it).
    pub fn matrices(&self) -> impl Iterator<Item = &M> {
        let head = self.head.as_ref().and_then(|h| h.output.as_ref());
        self.blocks
            .iter()
            .flat_map(BlockWeights::matrices)
            .chain(self.embedding.as_ref())
            .chain(head)
    }

    /// Every matrix held, mutably.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    pub fn matrices_mut(&mut self) -> impl Iterator<Item = &mut M> {
        let head = self.head.as_mut().and_then(|h| h.output.as_mut());
        self.blocks
            .iter_mut()
            .flat_map(BlockWeights::matrices_mut)
            .chain(self.embedding.as_mut())
            .chain(head)
    }

    /// Every norm vector held.
    pub fn norms(&self) -> impl Iterator<Item = &N> {
        self.blocks
            .iter()
            .flat_map(BlockWeights::norms)
            .chain(self.head.as_ref().map(|h| &h.norm))
    }

    /// Bytes held, given each part's size.
    pub fn bytes(&self, norm: impl Fn(&N) -> usize, matrix: impl Fn(&M) -> usize) -> usize {
        self.norms().map(norm).sum::<usize>() + self.matrices().map(matrix).sum::<usize>()
    }
}

/// The `[n_in, n_out]` matrix `name` of `g`: its info, after checking the shape (GGML pads
/// shapes with trailing 1s).
pub(crate) fn matrix_info<'a>(
    g: &'a Gguf,
    name: &str,
    n_in: usize,
    n_out: usize,
) -> Result<&'a TensorInfo> {
    let info = tensor(g, name)?;
    let mut shape = info.shape.as_slice();
    while shape.len() > 2 && shape.last() == Some(&1) {
        shape = &shape[..shape.len() - 1];
    }
    if shape != [n_in, n_out] {
        return Err(Error::Model(format!(
            "{name}: shape {:?}, expected [{n_in}, {n_out}]",
            info.shape
        )));
    }
    Ok(info)
}

/// The norm vector `name` of `g` as f32 (norm weights are f32, f16 or bf16).
pub(crate) fn read_norm<R: Read + Seek>(
    g: &Gguf,
    r: &mut R,
    name: &str,
    len: usize,
) -> Result<Vec<f32>> {
    let info = tensor(g, name)?;
    if info.shape.iter().product::<usize>() != len {
        return Err(Error::Model(format!(
            "{name}: shape {:?}, expected [{len}]",
            info.shape
        )));
    }
    if !matches!(
        info.dtype,
        crate::quant::GgmlType::F32 | crate::quant::GgmlType::F16 | crate::quant::GgmlType::BF16
    ) {
        return Err(Error::Unsupported(format!(
            "{name}: norm weights of type {:?}",
            info.dtype
        )));
    }
    let bytes = g.read_tensor(r, info)?;
    let mut out = vec![0f32; len];
    crate::quant::dequantize(info.dtype, &bytes, &mut out)?;
    Ok(out)
}

/// Keys and values of one session over a span of blocks, on some backend.
pub trait SpanCache {
    /// Positions stored.
    fn len(&self) -> usize;
    /// True when nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Capacity in positions.
    fn max_ctx(&self) -> usize;
    /// The blocks this cache serves.
    fn blocks(&self) -> Range<usize>;
    /// Forgets every position from `len` on (no-op when `len >= self.len()`).
    fn truncate(&mut self, len: usize);
    /// Forgets everything.
    fn clear(&mut self) {
        self.truncate(0);
    }
}

/// A Llama-family model (or the loaded part of it) on one backend: the seam every host
/// runs a model through, whole or as a span of a distributed chain.
///
/// Hidden states stay in the backend's own form between calls ([`SpanModel::Hidden`]: host
/// rows on the CPU, a device tensor on a GPU); [`SpanModel::hidden_from_rows`] and
/// [`SpanModel::hidden_into_rows`] move them to and from `n × dim` f32 rows, the form they
/// cross the network in. Results come back asynchronously because a browser's GPU reads
/// back only that way; on the CPU the futures are ready at once.
pub trait SpanModel {
    /// Hidden states of `n` positions, `n × dim`.
    type Hidden;
    /// Keys and values of one session over a span of blocks.
    type Cache: SpanCache;

    /// Hyper-parameters.
    fn config(&self) -> &LlamaConfig;
    /// What was loaded.
    fn spec(&self) -> &LoadSpec;
    /// An empty cache for `blocks` (loaded ones) holding up to `max_ctx` positions (at most
    /// the training context).
    fn new_cache(&self, blocks: Range<usize>, max_ctx: usize) -> Result<Self::Cache>;
    /// Hidden states for `tokens` (the spec must embed).
    fn embed(&self, tokens: &[u32]) -> Result<Self::Hidden>;
    /// Runs the blocks of `cache` over `hidden`, for the positions following those already
    /// in the cache, and appends their keys and values to it.
    fn forward_span(&self, hidden: Self::Hidden, cache: &mut Self::Cache) -> Result<Self::Hidden>;
    /// Logits of the last position of `hidden` (the spec must have the head).
    fn last_logits(&self, hidden: Self::Hidden) -> impl Future<Output = Result<Vec<f32>>>;
    /// Hidden states from `n × dim` rows.
    fn hidden_from_rows(&self, rows: Vec<f32>) -> Result<Self::Hidden>;
    /// Hidden states as `n × dim` rows.
    fn hidden_into_rows(&self, hidden: Self::Hidden) -> impl Future<Output = Result<Vec<f32>>>;
}

/// Checks that `rows` holds whole rows of `dim` values, at least one.
pub(crate) fn check_rows(rows: usize, dim: usize) -> Result<usize> {
    if rows == 0 || !rows.is_multiple_of(dim) {
        return Err(Error::InvalidArgument(format!(
            "{rows} hidden values are not rows of {dim}"
        )));
    }
    Ok(rows / dim)
}
