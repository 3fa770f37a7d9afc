//! The crate's one error type.

/// Everything that can go wrong in `kwaainet-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the model file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The GGUF file is malformed, truncated or exceeds a safety limit.
    #[error("malformed GGUF: {0}")]
    Gguf(#[from] crate::gguf::GgufError),
    /// A feature of the file or request that this engine does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer metadata is missing or inconsistent.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The model's hyper-parameters or weights are inconsistent.
    #[error("model: {0}")]
    Model(String),
    /// A caller passed an out-of-range argument (span, position, context overflow...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A sequence would outgrow its context: `needed` positions against `max`.
    #[error("context full: {needed} positions needed, the context holds {max}")]
    ContextFull {
        /// Positions the call needs in all.
        needed: usize,
        /// Positions the context holds.
        max: usize,
    },
    /// The tensor backend failed (device lost, readback error...).
    #[error("backend: {0}")]
    Backend(String),
    /// The generation a call is about has ended: a newer one replaced it, or its runtime
    /// was freed.
    #[error("the generation has ended: a newer start replaced it")]
    Ended,
    /// The generation is in the middle of a step (a re-entrant call while it awaits the
    /// device).
    #[error("busy: the generation is in the middle of a step")]
    Busy,
}

/// Shorthand for `Result<T, kwaainet_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
