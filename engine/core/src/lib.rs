#![doc = include_str!("../README.md")]

pub mod batch;
pub mod chat;
pub mod codec;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_stream;
pub mod kernels;
pub mod models;
pub mod quant;
pub mod runtime;
pub mod sampler;
pub mod tokenizer;
pub mod trig;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use models::llama::cpu::{BatchSeq, KvCache, Llama};
pub use models::llama::{LoadSpec, SpanCache, SpanModel};
pub use sampler::{Sampler, SamplerConfig};
pub use tokenizer::{StreamDecoder, TokenType, Tokenizer};
