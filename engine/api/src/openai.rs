//! The request bodies of the OpenAI routes, and their checks: what a request asks for,
//! turned into the engine's terms ([`Job`]) or refused with the field at fault.

use kwaainet_core::ChatMessage;
use kwaainet_core::SamplerConfig;
use kwaainet_core::batch::MAX_TOP_LOGPROBS;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several (at most [`MAX_STOPS`]).
    Many(Vec<String>),
}

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// A message's `content`: a string or an array of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`; other types are refused).
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// `text` (others, such as `image_url` or `input_audio`, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Its content (an assistant message may have none).
    #[serde(default)]
    pub content: Option<Content>,
    /// Tool calls of an assistant message: refused (no tools here).
    #[serde(default)]
    pub tool_calls: Option<Value>,
}

/// Fields shared by both routes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// The model (the node's default when absent).
    #[serde(default)]
    pub model: Option<String>,
    /// Token budget.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Sampling temperature, 0..=2 (default 1).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep the `top_k` most likely tokens (an extension, as llama.cpp's server has it).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// -2..=2.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// -2..=2.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Multiplicative repetition penalty (an extension, as llama.cpp's server has it).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Keep generating past end-of-generation tokens (an extension, as llama.cpp's server
    /// has it: for benchmarks and reference runs).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Name tokens `token_id:<id>` in log-probabilities (vLLM's extension).
    #[serde(default)]
    pub return_tokens_as_token_ids: Option<bool>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Choices per request: only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// Refused: no token biasing.
    #[serde(default)]
    pub logit_bias: Option<Value>,
    /// Tools and functions: refused.
    #[serde(default)]
    pub tools: Option<Value>,
    /// See `tools`.
    #[serde(default)]
    pub functions: Option<Value>,
    /// See `tools`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// See `tools`.
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Only `{"type": "text"}`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Refused: audio output.
    #[serde(default)]
    pub audio: Option<Value>,
    /// Only `["text"]`.
    #[serde(default)]
    pub modalities: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Return each token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0..=20 (needs `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<u32>,
}

/// `prompt` of a text completion: text or token ids, alone or in a list of one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A list of texts (one only: a batch of prompts is refused).
    Texts(Vec<String>),
    /// A list of token-id lists (one only).
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// The prompt.
    pub prompt: PromptInput,
    /// Return the log-probabilities of each token and this many alternatives (0..=20).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Put the prompt before the completion (with its log-probabilities when asked).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Refused: no insertion.
    #[serde(default)]
    pub suffix: Option<Value>,
    /// Only 1.
    #[serde(default)]
    pub best_of: Option<u32>,
}

/// What a prompt is, once checked.
#[derive(Debug, Clone)]
pub enum PromptSpec {
    /// Chat turns for the model's template.
    Chat(Vec<ChatMessage>),
    /// Raw text.
    Text(String),
    /// Token ids as given.
    Tokens(Vec<u32>),
}

/// A request in the engine's terms.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model asked for (`None`: the default).
    pub model: Option<String>,
    /// The prompt.
    pub prompt: PromptSpec,
    /// Token budget, if the client set one (else the rest of the context).
    pub max_tokens: Option<usize>,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream events.
    pub stream: bool,
    /// A usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Per-token log-probabilities with this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Echo the prompt (text completions).
    pub echo: bool,
    /// Generate past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Name tokens by id in log-probabilities.
    pub token_ids: bool,
}

fn refuse_if_set(v: &Option<Value>, param: &str, what: &str) -> Result<(), ApiError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::unsupported(
            param,
            format!("{what} are not supported by this server"),
        )),
    }
}

fn range(v: Option<f32>, param: &str, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
            Some(param),
            format!("{param} must be between {lo} and {hi}, got {x}"),
        )),
        other => Ok(other),
    }
}

impl Common {
    /// Checks the shared fields and gives the sampling settings.
    fn check(&self) -> Result<(SamplerConfig, Vec<String>), ApiError> {
        refuse_if_set(&self.tools, "tools", "tools")?;
        refuse_if_set(&self.functions, "functions", "functions")?;
        refuse_if_set(&self.tool_choice, "tool_choice", "tool choices")?;
        refuse_if_set(&self.function_call, "function_call", "function calls")?;
        refuse_if_set(&self.audio, "audio", "audio outputs")?;
        refuse_if_set(&self.logit_bias, "logit_bias", "logit biases")?;
        if let Some(f) = &self.response_format
            && f.get("type").and_then(Value::as_str) != Some("text")
            && !f.is_null()
        {
            return Err(ApiError::unsupported(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported (no JSON mode or schemas)",
            ));
        }
        if let Some(m) = &self.modalities
            && m.as_array()
                .is_none_or(|a| a.iter().any(|x| x.as_str() != Some("text")))
        {
            return Err(ApiError::unsupported(
                "modalities",
                "only the text modality is supported",
            ));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n must be 1 (one choice per request), got {n}"),
            ));
        }
        let temperature = range(self.temperature, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
        let top_p = range(self.top_p, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if top_p == 0.0 {
            return Err(ApiError::invalid(Some("top_p"), "top_p must be above 0"));
        }
        let presence = range(self.presence_penalty, "presence_penalty", -2.0, 2.0)?;
        let frequency = range(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)?;
        let repetition = range(self.repetition_penalty, "repetition_penalty", 0.01, 10.0)?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOPS} stop strings"),
            ));
        }
        if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid(
                Some("stop"),
                "stop strings must be 1 to 256 bytes",
            ));
        }
        let sampler = SamplerConfig {
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0) as usize,
            presence_penalty: presence.unwrap_or(0.0),
            frequency_penalty: frequency.unwrap_or(0.0),
            repetition_penalty: repetition.unwrap_or(1.0),
            // A fixed seed reproduces; without one every request draws differently.
            seed: match self.seed {
                Some(s) => s as u64,
                None => fresh_seed(),
            },
            ..SamplerConfig::default()
        };
        Ok((sampler, stop))
    }

    fn max_tokens(&self, other: Option<u64>) -> Result<Option<usize>, ApiError> {
        match other.or(self.max_tokens) {
            Some(0) => Err(ApiError::invalid(
                Some("max_tokens"),
                "max_tokens must be at least 1",
            )),
            Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            None => Ok(None),
        }
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// A seed nobody chose: the clock's nanoseconds mixed with a counter.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl ChatRequest {
    /// Checks the request and turns it into a [`Job`].
    pub fn into_job(self) -> Result<Job, ApiError> {
        let (sampler, stop) = self.common.check()?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "messages must hold at least one message",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" | "function" => {
                    return Err(ApiError::unsupported(
                        &format!("{param}.role"),
                        "tool messages are not supported by this server",
                    ));
                }
                other => {
                    return Err(ApiError::invalid(
                        Some(&format!("{param}.role")),
                        format!("unknown role `{other}` (system, developer, user or assistant)"),
                    ));
                }
            };
            if m.tool_calls.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::unsupported(
                    &format!("{param}.tool_calls"),
                    "tool calls are not supported by this server",
                ));
            }
            let content = match &m.content {
                None if role == "assistant" => String::new(),
                None => {
                    return Err(ApiError::invalid(
                        Some(&format!("{param}.content")),
                        "a message needs content",
                    ));
                }
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    Some(&format!("{param}.content[{j}].text")),
                                    "a text part needs text",
                                ));
                            }
                            (kind, _) => {
                                return Err(ApiError::unsupported(
                                    &format!("{param}.content[{j}].type"),
                                    format!(
                                        "content parts of type `{kind}` (images, audio, files) are not supported: this model reads text only"
                                    ),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage::new(role, content));
        }
        if self.logprobs != Some(true) && self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            ));
        }
        let top = top_logprobs(self.top_logprobs, "top_logprobs")?;
        Ok(Job {
            model: self.common.model.clone(),
            max_tokens: self.common.max_tokens(self.max_completion_tokens)?,
            prompt: PromptSpec::Chat(messages),
            sampler,
            stop,
            stream: self.common.stream.unwrap_or(false),
            include_usage: self.common.include_usage(),
            top_logprobs: (self.logprobs == Some(true)).then_some(top),
            echo: false,
            ignore_eos: self.common.ignore_eos.unwrap_or(false),
            token_ids: self.common.return_tokens_as_token_ids.unwrap_or(false),
        })
    }
}

fn top_logprobs(k: Option<u32>, param: &str) -> Result<usize, ApiError> {
    let k = k.unwrap_or(0) as usize;
    if k > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            Some(param),
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(k)
}

impl CompletionRequest {
    /// Checks the request and turns it into a [`Job`].
    pub fn into_job(self) -> Result<Job, ApiError> {
        let (sampler, stop) = self.common.check()?;
        refuse_if_set(&self.suffix, "suffix", "suffixes (insertion)")?;
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid(Some("best_of"), "best_of must be 1"));
        }
        let one = |n: usize| -> Result<(), ApiError> {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    Some("prompt"),
                    format!("one prompt per request (got {n})"),
                ))
            }
        };
        let prompt = match self.prompt {
            PromptInput::Text(t) => PromptSpec::Text(t),
            PromptInput::Tokens(t) => PromptSpec::Tokens(t),
            PromptInput::Texts(mut v) => {
                one(v.len())?;
                PromptSpec::Text(v.remove(0))
            }
            PromptInput::TokenLists(mut v) => {
                one(v.len())?;
                PromptSpec::Tokens(v.remove(0))
            }
        };
        let top = match self.logprobs {
            None => None,
            Some(k) => Some(top_logprobs(Some(k), "logprobs")?),
        };
        Ok(Job {
            model: self.common.model.clone(),
            // OpenAI's default for text completions.
            max_tokens: Some(self.common.max_tokens(None)?.unwrap_or(16)),
            prompt,
            sampler,
            stop,
            stream: self.common.stream.unwrap_or(false),
            include_usage: self.common.include_usage(),
            top_logprobs: top,
            echo: self.echo.unwrap_or(false),
            ignore_eos: self.common.ignore_eos.unwrap_or(false),
            token_ids: self.common.return_tokens_as_token_ids.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chat(v: Value) -> Result<Job, ApiError> {
        serde_json::from_value::<ChatRequest>(v).unwrap().into_job()
    }

    #[test]
    fn chat_requests_become_jobs() {
        let j = chat(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null},
            ],
            "max_completion_tokens": 7,
            "temperature": 0,
            "stop": "\n",
            "logprobs": true,
            "top_logprobs": 2,
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 42,
            "user": "ignored-extra-field",
        }))
        .unwrap();
        let PromptSpec::Chat(m) = &j.prompt else {
            panic!()
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "Hi there");
        assert_eq!(j.max_tokens, Some(7));
        assert_eq!(j.sampler.temperature, 0.0);
        assert_eq!(j.sampler.seed, 42);
        assert_eq!(j.stop, vec!["\n"]);
        assert_eq!(j.top_logprobs, Some(2));
        assert!(j.stream && j.include_usage);
    }

    #[test]
    fn bad_and_unsupported_fields_name_the_parameter() {
        let base =
            || serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let cases = [
            ("n", serde_json::json!(2), "n"),
            ("temperature", serde_json::json!(3.5), "temperature"),
            ("top_p", serde_json::json!(0), "top_p"),
            (
                "presence_penalty",
                serde_json::json!(-2.5),
                "presence_penalty",
            ),
            ("tools", serde_json::json!([{"type": "function"}]), "tools"),
            ("stop", serde_json::json!(["a", "b", "c", "d", "e"]), "stop"),
            ("max_tokens", serde_json::json!(0), "max_tokens"),
            ("top_logprobs", serde_json::json!(3), "top_logprobs"),
            (
                "response_format",
                serde_json::json!({"type": "json_object"}),
                "response_format",
            ),
        ];
        for (field, value, param) in cases {
            let mut v = base();
            v[field] = value;
            let e = chat(v).unwrap_err();
            assert_eq!(e.status, 400, "{field}");
            assert_eq!(e.param.as_deref(), Some(param), "{field}");
        }
        let mut v = base();
        v["messages"] = serde_json::json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
        let e = chat(v).unwrap_err();
        assert_eq!(e.code, Some("unsupported_parameter"));
        assert!(e.message.contains("image_url"));
        let mut v = base();
        v["messages"] = serde_json::json!([]);
        assert_eq!(chat(v).unwrap_err().param.as_deref(), Some("messages"));
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        for (p, want_tokens) in [
            (serde_json::json!("hi"), false),
            (serde_json::json!(["hi"]), false),
            (serde_json::json!([1, 2, 3]), true),
            (serde_json::json!([[1, 2, 3]]), true),
        ] {
            let j = serde_json::from_value::<CompletionRequest>(
                serde_json::json!({"model": "m", "prompt": p, "echo": true, "logprobs": 1}),
            )
            .unwrap()
            .into_job()
            .unwrap();
            assert_eq!(matches!(j.prompt, PromptSpec::Tokens(_)), want_tokens);
            assert_eq!(j.max_tokens, Some(16));
            assert!(j.echo);
            assert_eq!(j.top_logprobs, Some(1));
        }
        let two = serde_json::from_value::<CompletionRequest>(
            serde_json::json!({"model": "m", "prompt": ["a", "b"]}),
        )
        .unwrap()
        .into_job()
        .unwrap_err();
        assert_eq!(two.param.as_deref(), Some("prompt"));
    }
}
