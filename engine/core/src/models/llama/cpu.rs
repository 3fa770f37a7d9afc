//! A Llama-family decoder on the CPU with quantized weights, executable whole or as
//! spans of blocks (`embed`, `blocks[a..b)`, `head`) so a peer can serve part of a model.
//!
//! The math follows llama.cpp's CPU path closely (f16-rounded KV cache and attention
//! operands, f64 sums in RMSNorm and softmax, iterative RoPE angles) so greedy decoding
//! reproduces its tokens.

use std::future::{Future, ready};
use std::io::{Read, Seek};
use std::ops::Range;

use half::f16;

use super::{
    BlockWeights, KV_PAD, LoadSpec, SpanCache, SpanModel, WeightSource, Weights, check_blocks,
    check_rows, matrix_info, read_norm,
};
use crate::config::LlamaConfig;
use crate::gguf::Gguf;
use crate::kernels::{Acts, QMatrix, dot_f16_ordered, dot_f16_tiled, matmul_many, softmax, swiglu};
use crate::{Error, Result};

type Block = BlockWeights<Vec<f32>, QMatrix>;

/// One sequence of a batched pass ([`Llama::forward_batch`]): its cache and how many new
/// rows of the batch are its.
#[derive(Debug)]
pub struct BatchSeq<'a> {
    /// The sequence's cache (every sequence of a batch covers the same blocks).
    pub cache: &'a mut KvCache,
    /// Its rows in the batch.
    pub n: usize,
    /// The rows are part of a prompt of more than one token. llama.cpp runs such a prompt
    /// as one batch, and ggml then sums attention's dot products in another order than for
    /// a single row (see [`dot_f16_tiled`]); following it keeps the numbers llama.cpp's.
    pub prompt: bool,
}

/// The model (or the loaded part of it).
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    weights: Weights<Vec<f32>, QMatrix>,
}

/// Keys and values of past positions for one session over a span of blocks.
///
/// Values are stored f16-rounded (as llama.cpp's default f16 cache holds them) but widened
/// to f32 so attention needs no conversion per step; storage grows with use up to `max_ctx`.
#[derive(Debug, Clone)]
pub struct KvCache {
    blocks: Range<usize>,
    kv_dim: usize,
    max_ctx: usize,
    len: usize,
    k: Vec<Vec<f32>>,
    /// Values stored transposed (`[kv_dim][cap]`) so each output element of attention
    /// is one contiguous dot product over positions.
    vt: Vec<Vec<f32>>,
    cap: usize,
}

impl KvCache {
    /// An empty cache for `blocks` holding at most `max_ctx` positions.
    pub fn new(config: &LlamaConfig, blocks: Range<usize>, max_ctx: usize) -> Result<Self> {
        check_blocks(config, &blocks)?;
        if max_ctx == 0 {
            return Err(Error::InvalidArgument(
                "context size must be at least 1".into(),
            ));
        }
        let n = blocks.len();
        Ok(Self {
            blocks,
            kv_dim: config.kv_dim(),
            max_ctx,
            len: 0,
            k: vec![Vec::new(); n],
            vt: vec![Vec::new(); n],
            cap: 0,
        })
    }
    /// Appends keys and values (`n × kv_dim` each, after [`Self::reserve`]) of the
    /// positions following `len` to block `ci`, f16-rounded.
    fn append(&mut self, ci: usize, k: &[f32], v: &[f32]) {
        let (start, cap, kv_dim) = (self.len, self.cap, self.kv_dim);
        self.k[ci].extend(k.iter().map(|&x| round16(x)));
        let vt = &mut self.vt[ci];
        for (t, row) in v.chunks_exact(kv_dim).enumerate() {
            for (d, &x) in row.iter().enumerate() {
                vt[d * cap + start + t] = round16(x);
            }
        }
    }

    /// Makes room for `extra` more positions in the transposed value store.
    fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = need
            .next_power_of_two()
            .max(64)
            .min(self.max_ctx.max(need))
            .next_multiple_of(KV_PAD);
        for vt in &mut self.vt {
            let mut grown = vec![0f32; self.kv_dim * cap];
            if self.cap > 0 {
                for (d, row) in grown.chunks_exact_mut(cap).enumerate() {
                    row[..self.len].copy_from_slice(&vt[d * self.cap..d * self.cap + self.len]);
                }
            }
            *vt = grown;
        }
        self.cap = cap;
    }

    /// Bytes held by stored positions.
    pub fn n_bytes(&self) -> usize {
        self.k.iter().chain(&self.vt).map(|b| b.len() * 4).sum()
    }
}

/// Reads weights for the CPU: matrices stay in their GGML blocks, norms become f32.
struct Source<'a, R> {
    g: &'a Gguf,
    r: &'a mut R,
}

impl<R: Read + Seek> WeightSource for Source<'_, R> {
    type Norm = Vec<f32>;
    type Matrix = QMatrix;

    fn norm(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        read_norm(self.g, self.r, name, len)
    }

    fn matrix(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<QMatrix> {
        let info = matrix_info(self.g, name, n_in, n_out)?;
        QMatrix::new(info.dtype, n_out, n_in, self.g.read_tensor(self.r, info)?)
    }
}

impl Llama {
    /// Loads the parts of the model named by `spec`, reading tensor by tensor from `r`
    /// (the bytes of unloaded parts are never read).
    pub fn load<R: Read + Seek>(g: &Gguf, r: &mut R, spec: LoadSpec) -> Result<Self> {
        let config = LlamaConfig::from_gguf(g)?;
        let weights = Weights::load(g, &config, spec, &mut Source { g, r })?;
        Ok(Self { config, weights })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// What was loaded.
    pub fn spec(&self) -> &LoadSpec {
        self.weights.spec()
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes(|n| n.len() * 4, QMatrix::n_bytes)
    }

    /// A cache for this model's loaded blocks (or a sub-span of them).
    pub fn new_cache(&self, blocks: Range<usize>, max_ctx: usize) -> Result<KvCache> {
        self.spec().check_holds(&blocks)?;
        KvCache::new(
            &self.config,
            blocks,
            max_ctx.min(self.config.context_length),
        )
    }

    /// Hidden states (`tokens.len() × dim`, row-major) for `tokens`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let e = self.weights.embedding()?;
        let dim = self.config.dim;
        let mut out = vec![0f32; tokens.len() * dim];
        for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(dim)) {
            let t = t as usize;
            if t >= self.config.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {t} outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            e.dequantize_row(t, row)?;
        }
        Ok(out)
    }

    /// Runs the blocks of `cache` over `hidden` (`n × dim`) in place, for the `n` positions
    /// following those already in the cache, and appends their keys and values to it.
    /// ([`SpanModel::forward_span`] is the same pass on owned rows.)
    pub fn forward_span_in_place(&self, hidden: &mut [f32], cache: &mut KvCache) -> Result<()> {
        let n = check_rows(hidden.len(), self.config.dim)?;
        self.forward_batch(
            hidden,
            &mut [BatchSeq {
                cache,
                n,
                prompt: n > 1,
            }],
        )
    }

    /// Runs several sequences through the blocks in one pass: `hidden` holds each
    /// sequence's rows in turn (`seqs[0].n` rows, then `seqs[1].n`, ...), each run after
    /// the positions already in its own cache. Every weight matrix is read once for all
    /// rows (continuous batching: decode steps of many sequences and prefill chunks share
    /// a pass); attention stays per sequence. Each row's result is the one a pass of that
    /// sequence alone gives, bit for bit.
    pub fn forward_batch(&self, hidden: &mut [f32], seqs: &mut [BatchSeq<'_>]) -> Result<()> {
        let dim = self.config.dim;
        let Some(first) = seqs.first() else {
            return Err(Error::InvalidArgument("no sequences to run".into()));
        };
        let blocks = first.cache.blocks.clone();
        let mut rows = 0;
        for s in seqs.iter() {
            self.spec().check_holds(&s.cache.blocks)?;
            if s.cache.blocks != blocks {
                return Err(Error::InvalidArgument(format!(
                    "a batch runs one span: caches over {blocks:?} and {:?}",
                    s.cache.blocks
                )));
            }
            if s.n == 0 {
                return Err(Error::InvalidArgument("a sequence with no rows".into()));
            }
            if s.cache.len + s.n > s.cache.max_ctx {
                return Err(Error::ContextFull {
                    needed: s.cache.len + s.n,
                    max: s.cache.max_ctx,
                });
            }
            if s.cache.kv_dim != self.config.kv_dim() {
                return Err(Error::InvalidArgument(
                    "cache belongs to another model".into(),
                ));
            }
            rows += s.n;
        }
        if hidden.len() != rows * dim {
            return Err(Error::InvalidArgument(format!(
                "{} hidden values are not {rows} rows of {dim}",
                hidden.len()
            )));
        }
        let ropes: Vec<Rope> = seqs
            .iter()
            .map(|s| Rope::new(&self.config, s.cache.len, s.n))
            .collect();
        for s in seqs.iter_mut() {
            s.cache.reserve(s.n);
        }
        for (ci, bi) in blocks.enumerate() {
            let block = self.weights.block(bi)?;
            self.block_forward(block, hidden, rows, seqs, &ropes, ci)?;
        }
        for s in seqs.iter_mut() {
            s.cache.len += s.n;
        }
        Ok(())
    }

    fn block_forward(
        &self,
        b: &Block,
        x: &mut [f32],
        n: usize,
        seqs: &mut [BatchSeq<'_>],
        ropes: &[Rope],
        ci: usize,
    ) -> Result<()> {
        let c = &self.config;
        let (dim, kv_dim) = (c.dim, c.kv_dim());
        let mut xn = vec![0f32; n * dim];
        rms_norm(x, &b.attn_norm, c.norm_eps, &mut xn);
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        {
            let mut acts = Acts::new(&xn, n, dim)?;
            matmul_many(
                &mut [(&b.wq, &mut q), (&b.wk, &mut k), (&b.wv, &mut v)],
                &mut acts,
            )?;
        }
        let mut row = 0;
        for (s, rope) in seqs.iter_mut().zip(ropes) {
            let (q, k, v) = (
                &mut q[row * dim..(row + s.n) * dim],
                &mut k[row * kv_dim..(row + s.n) * kv_dim],
                &v[row * kv_dim..(row + s.n) * kv_dim],
            );
            rope.apply(q, c.n_heads, c.head_dim);
            rope.apply(k, c.n_kv_heads, c.head_dim);
            s.cache.append(ci, k, v);
            row += s.n;
        }
        // Attention is independent per sequence, query row and head: pieces of rows (or,
        // with fewer rows than threads to share them, single heads of a row) spread over the
        // threads; each piece's numbers are what one pass would give.
        let mut att = vec![0f32; n * dim];
        {
            let threads = crate::kernels::threads();
            let (hd, n_heads) = (c.head_dim, c.n_heads);
            let rows_per_task = n.div_ceil(4 * threads).max(1);
            let mut tasks = Vec::new();
            let (mut q_left, mut att_left) = (&q[..], &mut att[..]);
            for s in seqs.iter() {
                let (qs, qr) = q_left.split_at(s.n * dim);
                let (atts, ar) = att_left.split_at_mut(s.n * dim);
                (q_left, att_left) = (qr, ar);
                if n >= 2 * threads {
                    for (i, (qc, ac)) in qs
                        .chunks(rows_per_task * dim)
                        .zip(atts.chunks_mut(rows_per_task * dim))
                        .enumerate()
                    {
                        tasks.push((&*s.cache, s.prompt, i * rows_per_task, 0, qc, ac));
                    }
                } else {
                    for (t, (qc, ac)) in qs.chunks(dim).zip(atts.chunks_mut(dim)).enumerate() {
                        for (h, ah) in ac.chunks_mut(hd).enumerate().take(n_heads) {
                            tasks.push((&*s.cache, s.prompt, t, h, qc, ah));
                        }
                    }
                }
            }
            crate::kernels::run_tasks(&mut tasks, |(cache, prompt, first, h0, qc, ac)| {
                self.attend(qc, cache, ci, *first, *h0, *prompt, ac)
            });
        }
        let mut o = vec![0f32; n * dim];
        b.wo.matmul(&mut Acts::new(&att, n, dim)?, &mut o)?;
        for (xi, oi) in x.iter_mut().zip(&o) {
            *xi += oi;
        }

        rms_norm(x, &b.ffn_norm, c.norm_eps, &mut xn);
        let ffn = c.ffn_dim;
        let mut g = vec![0f32; n * ffn];
        let mut u = vec![0f32; n * ffn];
        {
            let mut acts = Acts::new(&xn, n, dim)?;
            matmul_many(&mut [(&b.w_gate, &mut g), (&b.w_up, &mut u)], &mut acts)?;
        }
        swiglu(&mut g, &u);
        b.w_down.matmul(&mut Acts::new(&g, n, ffn)?, &mut o)?;
        for (xi, oi) in x.iter_mut().zip(&o) {
            *xi += oi;
        }
        Ok(())
    }

    /// Attention of query rows `q` (rows `first..` of one sequence's new rows, their keys
    /// and values already appended to block `ci` of `cache`, which has not yet counted them),
    /// one row and head at a time, causal over cached + new positions, into `att`: every
    /// head of those rows, or (when `att` is shorter than a row) heads `h0..` of one row.
    /// Operands are f16-rounded and reduced in llama.cpp's order (see `kernels`): its
    /// batched one for prompt rows.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &[f32],
        cache: &KvCache,
        ci: usize,
        first: usize,
        h0: usize,
        prompt: bool,
        att: &mut [f32],
    ) {
        let dot = if prompt {
            dot_f16_tiled
        } else {
            dot_f16_ordered
        };
        let c = &self.config;
        let (dim, kv_dim, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let (start, cap) = (cache.len, cache.cap);
        let (kc, vt) = (&cache.k[ci], &cache.vt[ci]);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = Vec::with_capacity(start + q.len() / dim);
        let mut qh = vec![0f32; hd];
        // The output's row width: whole rows, or the heads asked for of a single row.
        let width = att.len().min(dim);
        let heads = h0..h0 + width / hd;
        for t in 0..q.len() / dim {
            let ctx = start + first + t + 1;
            for h in heads.clone() {
                let kvh = h / group;
                for (dst, &src) in qh
                    .iter_mut()
                    .zip(&q[t * dim + h * hd..t * dim + (h + 1) * hd])
                {
                    *dst = round16(src);
                }
                scores.clear();
                for p in 0..ctx {
                    let kr = &kc[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
                    scores.push(dot(kr, &qh) * scale);
                }
                let n_kv = ctx.next_multiple_of(KV_PAD).min(cap);
                scores.resize(n_kv, f32::NEG_INFINITY);
                softmax(&mut scores);
                for w in scores.iter_mut() {
                    *w = round16(*w);
                }
                let out = &mut att[t * width + (h - h0) * hd..t * width + (h - h0 + 1) * hd];
                for (d, o) in out.iter_mut().enumerate() {
                    let col = (kvh * hd + d) * cap;
                    *o = dot(&vt[col..col + n_kv], &scores);
                }
            }
        }
    }

    /// Logits of the last row of `hidden` (final norm + output head).
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        if hidden.len() < dim || !hidden.len().is_multiple_of(dim) {
            return Err(Error::InvalidArgument(format!(
                "{} hidden values are not rows of {dim}",
                hidden.len()
            )));
        }
        self.logits_rows(hidden, &[hidden.len() / dim - 1])
    }

    /// Logits of the chosen `rows` of `hidden` (`rows.len() × vocab`, in that order), the
    /// output head read once for all of them.
    pub fn logits_rows(&self, hidden: &[f32], rows: &[usize]) -> Result<Vec<f32>> {
        let (norm, output) = self.weights.head()?;
        let dim = self.config.dim;
        if rows.is_empty() || rows.iter().any(|&r| (r + 1) * dim > hidden.len()) {
            return Err(Error::InvalidArgument(format!(
                "rows {rows:?} of {} hidden values of {dim}",
                hidden.len()
            )));
        }
        let mut xn = vec![0f32; rows.len() * dim];
        for (&r, out) in rows.iter().zip(xn.chunks_exact_mut(dim)) {
            rms_norm(
                &hidden[r * dim..(r + 1) * dim],
                norm,
                self.config.norm_eps,
                out,
            );
        }
        let mut out = vec![0f32; rows.len() * self.config.vocab_size];
        output.matmul(&mut Acts::new(&xn, rows.len(), dim)?, &mut out)?;
        Ok(out)
    }

    /// Embeds `tokens`, runs every loaded block (the model must be loaded whole) and
    /// returns the logits of the last position.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to run".into()));
        }
        if cache.blocks != (0..self.config.n_layers) {
            return Err(Error::InvalidArgument(
                "forward needs a cache over every block".into(),
            ));
        }
        let mut h = self.embed(tokens)?;
        self.forward_span_in_place(&mut h, cache)?;
        self.logits(&h)
    }
}

impl SpanCache for KvCache {
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
        if len < self.len {
            self.len = len;
            for k in &mut self.k {
                k.truncate(len * self.kv_dim);
            }
            // Padded attention reads past `len`: stale values must read as zero.
            for vt in &mut self.vt {
                for row in vt.chunks_exact_mut(self.cap) {
                    row[len..].fill(0.0);
                }
            }
        }
    }
}

impl SpanModel for Llama {
    type Hidden = Vec<f32>;
    type Cache = KvCache;

    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn spec(&self) -> &LoadSpec {
        self.weights.spec()
    }
    fn new_cache(&self, blocks: Range<usize>, max_ctx: usize) -> Result<KvCache> {
        Llama::new_cache(self, blocks, max_ctx)
    }
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Llama::embed(self, tokens)
    }
    fn forward_span(&self, mut hidden: Vec<f32>, cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_span_in_place(&mut hidden, cache)?;
        Ok(hidden)
    }
    fn last_logits(&self, hidden: Vec<f32>) -> impl Future<Output = Result<Vec<f32>>> {
        ready(self.logits(&hidden))
    }
    fn hidden_from_rows(&self, rows: Vec<f32>) -> Result<Vec<f32>> {
        check_rows(rows.len(), self.config.dim)?;
        Ok(rows)
    }
    fn hidden_into_rows(&self, hidden: Vec<f32>) -> impl Future<Output = Result<Vec<f32>>> {
        ready(Ok(hidden))
    }
}

fn round16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// `out = x / sqrt(mean(x²) + eps) * w`, row by row, with an f64 sum like ggml's.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / dim as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((oi, &xi), &wi) in o.iter_mut().zip(row).zip(w) {
            *oi = xi * scale * wi;
        }
    }
}

/// cos/sin tables for `n` consecutive positions (see [`LlamaConfig::rope_angles`]).
struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    fn new(c: &LlamaConfig, start: usize, n: usize) -> Self {
        let (cos, sin) = c.rope_angles(start, n);
        Self {
            half: c.rope_dim / 2,
            cos,
            sin,
        }
    }

    /// Rotates adjacent pairs of the first `rope_dim` values of each head of each row.
    ///
    /// Each rotated value is one fused multiply-add over one rounded product
    /// (`fma(x0, cos, -(x1·sin))`, `fma(x0, sin, x1·cos)`): the code GCC makes of ggml's
    /// `x0*cos - x1*sin` for FMA-capable x86-64 (C compilers contract by default), and so
    /// llama.cpp's numbers bit for bit (with two rounded products, one position in a few
    /// differs by an ulp, which the 8-bit activation quantization can amplify to a logit).
    fn apply(&self, x: &mut [f32], n_heads: usize, hd: usize) {
        let row_len = n_heads * hd;
        for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
            let cs = &self.cos[t * self.half..(t + 1) * self.half];
            let sn = &self.sin[t * self.half..(t + 1) * self.half];
            for head in row.chunks_exact_mut(hd) {
                for i in 0..self.half {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0.mul_add(cs[i], -(x1 * sn[i]));
                    head[2 * i + 1] = x0.mul_add(sn[i], x1 * cs[i]);
                }
            }
        }
    }
}
