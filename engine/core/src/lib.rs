//! KwaaiNet's model math: GGUF reader, tokenizer and chat template, a Llama-family model
//! with quantized kernels, KV cache, sampler and block-span execution.

pub mod chat;
pub mod error;
pub mod gguf;
pub mod quant;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use tokenizer::{StreamDecoder, TokenType, Tokenizer};
