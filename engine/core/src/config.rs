//! Llama-family hyper-parameters, read from GGUF metadata.

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};

/// Architectures whose GGUF layout matches Llama's (same tensor names and math).
const LLAMA_LIKE: &[&str] = &["llama", "mistral", "smollm", "granite"];

/// Hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture`, e.g. `llama`.
    pub arch: String,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// MLP inner size.
    pub ffn_dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// Rotary dimensions (usually `head_dim`).
    pub rope_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE frequency base.
    pub rope_theta: f32,
}

fn num(g: &Gguf, key: &str) -> Option<u64> {
    match g.get(key)? {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn float(g: &Gguf, key: &str) -> Option<f32> {
    match g.get(key)? {
        Value::F32(v) => Some(*v),
        Value::F64(v) => Some(*v as f32),
        _ => None,
    }
}

/// Refuses models that set what this engine's math does not implement, naming the key,
/// rather than running them wrongly. Neutral values (a scale of 1, RoPE scaling `none`)
/// are accepted.
fn refuse_unimplemented(g: &Gguf, arch: &str, head_dim: usize) -> Result<()> {
    let unsupported = |what: String| Err(Error::Unsupported(what));
    let key = |k: &str| format!("{arch}.{k}");
    if let Some(n) = num(g, &key("expert_count")).filter(|&n| n > 0) {
        return unsupported(format!(
            "mixture of experts ({} = {n})",
            key("expert_count")
        ));
    }
    match g.get(&key("rope.scaling.type")) {
        None => {}
        Some(Value::String(t)) if t == "none" => {}
        Some(v) => {
            return unsupported(format!(
                "RoPE scaling ({} = {v:?})",
                key("rope.scaling.type")
            ));
        }
    }
    // Granite's scales, and RoPE scaling factors given without a type.
    for k in [
        "rope.scaling.factor",
        "rope.scaling.attn_factor",
        "embedding_scale",
        "residual_scale",
        "logit_scale",
    ] {
        if let Some(v) = g.get(&key(k))
            && float(g, &key(k)) != Some(1.0)
        {
            return unsupported(format!("{} = {v:?} (only 1 is implemented)", key(k)));
        }
    }
    if let Some(v) = g.get(&key("attention.scale")) {
        let want = 1.0 / (head_dim as f32).sqrt();
        if !float(g, &key("attention.scale")).is_some_and(|s| (s - want).abs() <= want * 1e-6) {
            return unsupported(format!(
                "{} = {v:?} (only 1/sqrt(head size) = {want} is implemented)",
                key("attention.scale")
            ));
        }
    }
    for k in ["attention.key_length", "attention.value_length"] {
        if let Some(n) = num(g, &key(k)).filter(|&n| n != head_dim as u64) {
            return unsupported(format!(
                "{} = {n} (only the head size, {head_dim}, is implemented)",
                key(k)
            ));
        }
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return unsupported("per-frequency RoPE factors (tensor rope_freqs.weight)".into());
    }
    Ok(())
}

impl LlamaConfig {
    /// Reads the hyper-parameters, checking that they are consistent, and refuses what the
    /// engine does not implement (`Error::Unsupported`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = match g.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Error::Model("missing general.architecture".into())),
        };
        if !LLAMA_LIKE.contains(&arch.as_str()) {
            return Err(Error::Unsupported(format!(
                "architecture `{arch}` (supported: {})",
                LLAMA_LIKE.join(", ")
            )));
        }
        // u64 → usize checked: on wasm32 a plain `as` would wrap a hostile value into range.
        let opt = |k: &str| -> Result<Option<usize>> {
            let key = format!("{arch}.{k}");
            num(g, &key)
                .map(|v| usize::try_from(v).map_err(|_| Error::Model(format!("{key} too large"))))
                .transpose()
        };
        let req = |k: &str| -> Result<usize> {
            opt(k)?.ok_or_else(|| Error::Model(format!("missing or non-integer {arch}.{k}")))
        };
        let n_layers = req("block_count")?;
        let dim = req("embedding_length")?;
        let ffn_dim = req("feed_forward_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
        let context_length = req("context_length")?;
        let vocab_size = match opt("vocab_size")? {
            Some(v) => v,
            None => match g.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => return Err(Error::Model("unknown vocabulary size".into())),
            },
        };
        let norm_eps =
            float(g, &format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
        let rope_theta = float(g, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0);
        if n_layers == 0
            || n_layers > 1024
            || dim == 0
            || dim > 65_536
            || ffn_dim == 0
            || ffn_dim > 1 << 20
        {
            return Err(Error::Model(format!(
                "implausible sizes: {n_layers} blocks, hidden {dim}, ffn {ffn_dim}"
            )));
        }
        if n_heads == 0
            || n_kv_heads == 0
            || !dim.is_multiple_of(n_heads)
            || !n_heads.is_multiple_of(n_kv_heads)
        {
            return Err(Error::Model(format!(
                "inconsistent heads: hidden {dim}, {n_heads} heads, {n_kv_heads} kv heads"
            )));
        }
        let head_dim = dim / n_heads;
        let rope_dim = opt("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(Error::Model(format!(
                "rope dimension {rope_dim} invalid for head size {head_dim}"
            )));
        }
        if vocab_size == 0 || vocab_size > 1 << 24 || context_length == 0 {
            return Err(Error::Model(format!(
                "implausible vocab {vocab_size} / context {context_length}"
            )));
        }
        if !(norm_eps > 0.0 && norm_eps < 1.0 && rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(Error::Model(format!(
                "invalid eps {norm_eps} or rope base {rope_theta}"
            )));
        }
        refuse_unimplemented(g, &arch, head_dim)?;
        Ok(Self {
            arch,
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            vocab_size,
            context_length,
            norm_eps,
            rope_theta,
        })
    }

    /// cos and sin of the rotary angles `pos · base^(-2i/rope_dim)` for positions
    /// `start..start + n` (`n × rope_dim/2` each, row-major), computed like ggml's NORM
    /// rope: in f32, the angle multiplied step by step rather than raised to a power, and
    /// the same bits on every target (see [`crate::trig`]), so the values are llama.cpp's
    /// (x86-64 Linux) bit for bit in the browser too.
    pub fn rope_angles(&self, start: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.rope_dim / 2;
        let step = self.rope_step();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in start..start + n {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(crate::trig::cosf(theta));
                sin.push(crate::trig::sinf(theta));
                theta *= step;
            }
        }
        (cos, sin)
    }

    /// `base^(-2/rope_dim)`, the ratio of one rotary frequency to the next, as ggml's
    /// `powf(base, -2.0f/n_dims)`: the exponent rounded to f32 first, the power computed in
    /// double and rounded once (the correctly rounded value but in rare double-rounding
    /// cases; equal to glibc's `powf` for the bases and sizes tested below), and the same on
    /// every target (Rust's `f32::powf` is the C library's natively but its own port on
    /// wasm32).
    pub fn rope_step(&self) -> f32 {
        let exponent = -2.0 / self.rope_dim as f32;
        f64::from(self.rope_theta).powf(f64::from(exponent)) as f32
    }

    /// Size of one key (or value) row for all KV heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(extra: &[(&str, Value)]) -> Gguf {
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".into(), Value::U32(30)),
            ("llama.context_length".into(), Value::U32(8192)),
            ("llama.embedding_length".into(), Value::U32(576)),
            ("llama.feed_forward_length".into(), Value::U32(1536)),
            ("llama.attention.head_count".into(), Value::U32(9)),
            ("llama.attention.head_count_kv".into(), Value::U32(3)),
            ("llama.vocab_size".into(), Value::U32(49152)),
        ];
        for (k, v) in extra {
            metadata.retain(|(mk, _)| mk != k);
            metadata.push((k.to_string(), v.clone()));
        }
        Gguf {
            version: 3,
            metadata,
            tensors: vec![],
        }
    }

    #[test]
    fn reads_the_default_model_shape() {
        let c = LlamaConfig::from_gguf(&gguf(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.head_dim, c.kv_dim(), c.rope_dim), (64, 192, 64));
        assert_eq!((c.norm_eps, c.rope_theta), (1e-5, 10_000.0));
    }

    #[test]
    fn refuses_what_the_engine_does_not_implement() {
        let refused: &[(&str, Value)] = &[
            ("llama.expert_count", Value::U32(8)),
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.type", Value::String("yarn".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
            ("llama.rope.scaling.attn_factor", Value::F32(0.5)),
            ("llama.embedding_scale", Value::F32(12.0)),
            ("llama.residual_scale", Value::F32(0.22)),
            ("llama.logit_scale", Value::F32(8.0)),
            ("llama.logit_scale", Value::String("8".into())),
            ("llama.attention.scale", Value::F32(0.015625)),
            ("llama.attention.key_length", Value::U32(128)),
            ("llama.attention.value_length", Value::U32(32)),
        ];
        for (k, v) in refused {
            match LlamaConfig::from_gguf(&gguf(&[(k, v.clone())])) {
                Err(Error::Unsupported(m)) => assert!(m.contains(k), "{k}: {m}"),
                other => panic!("{k} = {v:?}: {other:?}"),
            }
        }
        // Neutral values are what the engine does.
        let neutral: &[(&str, Value)] = &[
            ("llama.expert_count", Value::U32(0)),
            ("llama.rope.scaling.type", Value::String("none".into())),
            ("llama.rope.scaling.factor", Value::F32(1.0)),
            ("llama.embedding_scale", Value::F64(1.0)),
            ("llama.attention.scale", Value::F32(0.125)),
            ("llama.attention.key_length", Value::U32(64)),
        ];
        let c = LlamaConfig::from_gguf(&gguf(neutral)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.head_dim, 64);
        // Llama 3.1's RoPE frequency factors come as a tensor.
        let mut g = gguf(&[]);
        g.tensors.push(crate::gguf::TensorInfo {
            name: "rope_freqs.weight".into(),
            shape: vec![32],
            dtype: crate::quant::GgmlType::F32,
            offset: 0,
            n_bytes: 128,
        });
        assert!(matches!(
            LlamaConfig::from_gguf(&g),
            Err(Error::Unsupported(m)) if m.contains("rope_freqs")
        ));
        // Granite is refused for its scales, with the key named.
        let granite = gguf(&[]);
        let mut granite = Gguf {
            metadata: granite
                .metadata
                .into_iter()
                .map(|(k, v)| (k.replace("llama.", "granite."), v))
                .collect(),
            ..granite
        };
        granite
            .metadata
            .retain(|(k, _)| k != "general.architecture");
        granite.metadata.push((
            "general.architecture".into(),
            Value::String("granite".into()),
        ));
        granite
            .metadata
            .push(("granite.residual_scale".into(), Value::F32(0.22)));
        assert!(matches!(
            LlamaConfig::from_gguf(&granite),
            Err(Error::Unsupported(m)) if m.contains("granite.residual_scale")
        ));
    }

    #[test]
    fn rejects_inconsistent_or_hostile_values() {
        let bad: &[(&str, Value)] = &[
            ("general.architecture", Value::String("gpt-neox".into())),
            ("llama.attention.head_count", Value::U32(0)),
            ("llama.attention.head_count", Value::U32(7)),
            ("llama.attention.head_count_kv", Value::U32(2)),
            ("llama.block_count", Value::U32(0)),
            ("llama.block_count", Value::I32(-1)),
            ("llama.embedding_length", Value::U64(u64::MAX)),
            ("llama.feed_forward_length", Value::String("1536".into())),
            ("llama.rope.dimension_count", Value::U32(65)),
            ("llama.rope.freq_base", Value::F32(f32::NAN)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(0.0)),
            ("llama.vocab_size", Value::U32(0)),
        ];
        for (k, v) in bad {
            let r = LlamaConfig::from_gguf(&gguf(&[(k, v.clone())]));
            assert!(r.is_err(), "{k} = {v:?} was accepted");
        }
    }

    /// The rotary step equals the C library's `powf` for the bases and head sizes models use
    /// (natively, where Rust's `powf` is the C library's).
    #[test]
    fn rope_step_is_powf() {
        let mut cfg = LlamaConfig::from_gguf(&gguf(&[])).unwrap_or_else(|e| panic!("{e}"));
        for base in [
            10_000f32,
            100_000.0,
            500_000.0,
            1_000_000.0,
            10_000_000.0,
            50_000.0,
            75_000.0,
        ] {
            for dims in (16..=256).step_by(8) {
                cfg.rope_theta = base;
                cfg.rope_dim = dims;
                let want = base.powf(-2.0 / dims as f32);
                assert_eq!(cfg.rope_step().to_bits(), want.to_bits(), "{base} {dims}");
            }
        }
    }
}
