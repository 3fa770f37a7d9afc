//! KwaaiNet's model math: GGUF reader, tokenizer and chat template, a Llama-family model
//! with quantized kernels, KV cache, sampler and block-span execution.

pub mod config;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod sampler;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use model::{KvCache, Llama, LoadSpec};
pub use sampler::{Sampler, SamplerConfig};
