#![doc = include_str!("../README.md")]

pub mod batch;
#[cfg(feature = "burn")]
pub mod burn_model;
pub mod chat;
pub mod codec;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod tokenizer;
pub mod trig;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use model::{KvCache, Llama, LoadSpec};
pub use sampler::{Sampler, SamplerConfig};
pub use tokenizer::{StreamDecoder, TokenType, Tokenizer};
