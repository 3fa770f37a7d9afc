//! The errors the engine throws to JavaScript, as Rust types: [`ErrorCode`] and
//! [`EngineError`]. The bindings turn them into `Error`s with a `code`;
//! `sdk-ts/src/wasm-errors.ts` lists the same codes (a test here reads it and fails when the
//! lists disagree) and maps each to a typed error. The page-side P2P node's codes are in
//! `kwaainet-wasm-p2p` (`P2pCode`).

/// What kind of failure an [`EngineError`] is: the stable, machine-readable part, thrown to
/// JavaScript as the error's `code` (the kebab-case names of [`ErrorCode::as_str`];
/// `sdk-ts/src/wasm-errors.ts` mirrors them as `WasmErrorCode`, and the SDK maps each one
/// to a typed error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The GGUF file is malformed, cut short or over a safety limit.
    Gguf,
    /// The model's hyper-parameters or weights are inconsistent.
    Model,
    /// The model needs something this engine does not implement (an architecture, a tensor
    /// type, RoPE scaling...): refused rather than run wrongly.
    Unsupported,
    /// The tokenizer metadata is missing or inconsistent.
    Tokenizer,
    /// The chat template failed to parse or render.
    Template,
    /// A caller's argument is out of range or malformed.
    InvalidArgument,
    /// The prompt and the tokens asked for outgrow the context (`needed`, `max`).
    ContextFull,
    /// The generation is over, or another one replaced it.
    Generation,
    /// The WebGPU adapter or device is missing or was lost.
    Webgpu,
    /// The tensor backend failed (a readback, a kernel launch).
    Backend,
    /// Wasm memory is exhausted.
    Memory,
    /// Generating through the swarm failed: no server covers some blocks, or failover gave
    /// up (the servers' answers, not this engine, were at fault).
    Swarm,
    /// The engine's own state: freed, busy (a re-entrant call), a loader used twice.
    Internal,
}

impl ErrorCode {
    /// Every code (the TypeScript mirror is checked against this list).
    pub const ALL: [ErrorCode; 13] = [
        Self::Gguf,
        Self::Model,
        Self::Unsupported,
        Self::Tokenizer,
        Self::Template,
        Self::InvalidArgument,
        Self::ContextFull,
        Self::Generation,
        Self::Webgpu,
        Self::Backend,
        Self::Memory,
        Self::Swarm,
        Self::Internal,
    ];

    /// The name JavaScript sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Model => "model",
            Self::Unsupported => "unsupported",
            Self::Tokenizer => "tokenizer",
            Self::Template => "template",
            Self::InvalidArgument => "invalid-argument",
            Self::ContextFull => "context-full",
            Self::Generation => "generation",
            Self::Webgpu => "webgpu",
            Self::Backend => "backend",
            Self::Memory => "memory",
            Self::Swarm => "swarm",
            Self::Internal => "internal",
        }
    }
}

/// An error for JavaScript: an [`ErrorCode`], a human-readable message, and a context
/// overflow's numbers. The bindings throw it as an `Error` with `code` (and `needed`, `max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// Stable, machine-readable kind.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// For [`ErrorCode::ContextFull`]: positions needed, and positions the context holds.
    pub context: Option<(usize, usize)>,
}

impl EngineError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            context: None,
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EngineError {}

impl From<kwaainet_core::gguf_stream::StreamError> for EngineError {
    fn from(e: kwaainet_core::gguf_stream::StreamError) -> Self {
        use kwaainet_core::gguf_stream::StreamErrorKind as K;
        match e.kind {
            K::Malformed => Self::new(ErrorCode::Gguf, e.message),
            K::OutOfMemory => Self::new(
                ErrorCode::Memory,
                format!(
                    "{} ({} bytes of wasm memory in use)",
                    e.message,
                    crate::wasm_memory_bytes()
                ),
            ),
            K::InvalidArgument => Self::new(ErrorCode::InvalidArgument, e.message),
            K::Used => Self::new(ErrorCode::Internal, e.message),
        }
    }
}

impl From<kwaainet_core::Error> for EngineError {
    fn from(e: kwaainet_core::Error) -> Self {
        use kwaainet_core::Error as E;
        match e {
            E::Gguf(e) => Self::new(ErrorCode::Gguf, e.to_string()),
            // The only reader here is the in-memory file: an I/O error means it is cut short.
            E::Io(e) => Self::new(ErrorCode::Gguf, e.to_string()),
            // Only the model file can ask for something unsupported (an architecture, a
            // tensor type): "unsupported architecture `x` ...".
            E::Unsupported(m) => Self::new(ErrorCode::Unsupported, format!("unsupported {m}")),
            E::Tokenizer(m) => Self::new(ErrorCode::Tokenizer, m),
            E::Template(m) => Self::new(ErrorCode::Template, m),
            E::Model(m) => Self::new(ErrorCode::Model, m),
            E::InvalidArgument(m) => Self::new(ErrorCode::InvalidArgument, m),
            E::ContextFull { needed, max } => Self {
                code: ErrorCode::ContextFull,
                message: e.to_string(),
                context: Some((needed, max)),
            },
            E::Backend(m) => Self::new(ErrorCode::Backend, m),
            E::Ended => Self::new(
                ErrorCode::Generation,
                "ended: a newer start() on the same engine replaced it",
            ),
            E::Busy => Self::new(ErrorCode::Internal, "engine is busy (re-entrant call)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted names in `const NAME = [ ... ]` of the SDK's mirror.
    fn ts_list(name: &str) -> Vec<String> {
        let ts = include_str!("../../../sdk-ts/src/wasm-errors.ts");
        let start = ts
            .find(&format!("const {name} = ["))
            .unwrap_or_else(|| panic!("{name} not found in wasm-errors.ts"));
        let body = &ts[start..];
        let end = body.find(']').unwrap_or(body.len());
        body[..end]
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_sdk_lists_every_code_and_no_other() {
        let engine: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(ts_list("WASM_ERROR_CODES"), engine);
    }

    #[test]
    fn a_context_overflow_keeps_its_numbers() {
        let e = EngineError::from(kwaainet_core::Error::ContextFull {
            needed: 600,
            max: 512,
        });
        assert_eq!(e.code, ErrorCode::ContextFull);
        assert_eq!(e.context, Some((600, 512)));
        assert!(
            e.message.contains("600") && e.message.contains("512"),
            "{e}"
        );
        let e = EngineError::from(kwaainet_core::Error::Unsupported(
            "architecture `gpt9`".into(),
        ));
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert_eq!(e.context, None);
        let e = EngineError::from(kwaainet_core::Error::Backend("readback".into()));
        assert_eq!(e.code, ErrorCode::Backend);
    }
}
