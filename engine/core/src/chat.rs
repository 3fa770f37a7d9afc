//! Chat prompts: a model's Jinja chat template (`tokenizer.chat_template`) rendered with
//! minijinja, with the globals Hugging Face templates expect (`messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`) and Python
//! string/dict methods (`.strip()`, `.startswith()`, `.items()`, ...).
//!
//! ```
//! use kwaainet_core::{ChatMessage, ChatTemplate};
//!
//! let prompt = ChatTemplate::chatml().render(&[ChatMessage::new("user", "Hi")], true)?;
//! assert_eq!(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//! # Ok::<(), kwaainet_core::Error>(())
//! ```

use minijinja::{Environment, ErrorKind, Value, context};

use crate::gguf::{Gguf, Value as GgufValue};
use crate::{Error, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// The ChatML format, for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const NAME: &str = "chat";

fn template_error(e: minijinja::Error) -> Error {
    // minijinja's Display already names the template and line; add the cause chain.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the texts templates see under those
    /// names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two options on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The ChatML template (`<|im_start|>role\n...<|im_end|>\n`), with no BOS/EOS text.
    pub fn chatml() -> Self {
        match Self::new(CHATML, "", "") {
            Ok(t) => t,
            // The constant template is covered by a test; this arm is unreachable.
            Err(e) => unreachable!("built-in ChatML template: {e}"),
        }
    }

    /// Reads `tokenizer.chat_template`; `Ok(None)` if the model has none. The BOS/EOS
    /// texts come from the vocabulary's `bos_token_id`/`eos_token_id`.
    pub fn from_gguf(gguf: &Gguf) -> Result<Option<Self>> {
        let source = match gguf.get("tokenizer.chat_template") {
            None => return Ok(None),
            Some(GgufValue::String(s)) => s,
            Some(_) => {
                return Err(Error::Template(
                    "tokenizer.chat_template is not a string".into(),
                ));
            }
        };
        let token = |key: &str| -> String {
            let id = gguf.get(key).and_then(|v| match *v {
                GgufValue::U32(x) => usize::try_from(x).ok(),
                GgufValue::I32(x) => usize::try_from(x).ok(),
                GgufValue::U64(x) => usize::try_from(x).ok(),
                GgufValue::I64(x) => usize::try_from(x).ok(),
                _ => None,
            });
            match (id, gguf.get("tokenizer.ggml.tokens")) {
                (Some(id), Some(GgufValue::Array(toks))) => match toks.get(id) {
                    Some(GgufValue::String(s)) => s.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            }
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::new(source, &bos, &eos).map(Some)
    }

    /// Renders the conversation; with `add_generation_prompt` the result ends with the
    /// header of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(template_error)
    }
}

/// `messages` rendered through `template`, or through ChatML when the model ships none.
pub fn render(
    template: Option<&ChatTemplate>,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String> {
    match template {
        Some(t) => t.render(messages, add_generation_prompt),
        None => ChatTemplate::chatml().render(messages, add_generation_prompt),
    }
}

/// Token ids of a prompt, built the same way by every host (CLI, node API, browser):
/// `messages` rendered through `template` (ChatML when the model ships none) with the
/// assistant's generation prompt, or `text` as it is; BOS first when the model asks for it
/// and the rendered text does not already start with it. Special-token texts in the prompt
/// are parsed as the special tokens (as llama.cpp does). The caller's own token ids are
/// taken as they are, once checked against the vocabulary. An empty prompt is an
/// `InvalidArgument` error: there is nothing to continue.
pub fn prompt_ids(
    tokenizer: &crate::Tokenizer,
    template: Option<&ChatTemplate>,
    prompt: Prompt<'_>,
) -> Result<Vec<u32>> {
    let text = match prompt {
        Prompt::Chat(messages) => render(template, messages, true)?,
        Prompt::Text(text) => text.to_owned(),
        Prompt::Tokens(ids) => {
            tokenizer.check_ids(ids)?;
            return non_empty(ids.to_vec());
        }
    };
    let mut ids = Vec::new();
    if tokenizer.add_bos()
        && let Some(b) = tokenizer.bos_id()
        && !text.starts_with(tokenizer.token_text(b).unwrap_or("\u{0}"))
    {
        ids.push(b);
    }
    ids.extend(tokenizer.encode(&text, true)?);
    non_empty(ids)
}

fn non_empty(ids: Vec<u32>) -> Result<Vec<u32>> {
    if ids.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    Ok(ids)
}

/// What a prompt is made of.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Chat turns, rendered through the model's template.
    Chat(&'a [ChatMessage]),
    /// Text used as it is.
    Text(&'a str),
    /// Token ids used as they are.
    Tokens(&'a [u32]),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "  Be brief. "),
            ChatMessage::new("user", "Hi"),
        ]
    }

    #[test]
    fn chatml_renders() {
        let out = ChatTemplate::chatml().render(&msgs(), true);
        assert_eq!(
            out.ok().as_deref(),
            Some(
                "<|im_start|>system\n  Be brief. <|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            )
        );
    }

    #[test]
    fn python_methods_and_globals() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.content.strip().startswith('Be') %}[{{ m.content.strip() }}]{% else %}{{ m['content'] | upper }}{% endif %}\n{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").map_err(|e| e.to_string());
        let out = t.and_then(|t| t.render(&msgs(), false).map_err(|e| e.to_string()));
        // trim_blocks eats the newline after each block tag, as in Hugging Face.
        assert_eq!(out.as_deref(), Ok("<s>[Be brief.]HI</s>"));
    }

    #[test]
    fn raise_exception_is_a_template_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "");
        match t.map(|t| t.render(&msgs(), true)) {
            Ok(Err(Error::Template(m))) => assert!(m.contains("roles must alternate"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_error_is_a_template_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(Error::Template(_))
        ));
    }
}
