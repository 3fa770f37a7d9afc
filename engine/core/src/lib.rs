//! KwaaiNet's model math: GGUF reader, tokenizer and chat template, a Llama-family model
//! with quantized kernels, KV cache, sampler and block-span execution.

#[cfg(feature = "burn")]
pub mod burn_model;
pub mod config;
pub mod error;
pub mod gguf;
pub mod quant;

pub use config::LlamaConfig;
pub use error::{Error, Result};
