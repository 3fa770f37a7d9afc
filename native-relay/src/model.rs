//! Opening a GGUF model for the CLI commands: weights, tokenizer and chat template.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use kwaainet_core::chat::{ChatMessage, ChatTemplate, Prompt, prompt_ids};
use kwaainet_core::gguf::Gguf;
use kwaainet_core::tokenizer::Tokenizer;
use kwaainet_core::{Llama, LlamaConfig, LoadSpec};

/// A model ready to generate with.
#[derive(Debug)]
pub struct Loaded<M> {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub model: M,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

/// `--model`, or the default model (fetched into the cache when missing).
pub fn resolve(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => crate::fetch::ensure_default_model(None),
    }
}

/// Reads the header, tokenizer, template and every weight of the model at `path` for the
/// CPU engine.
pub fn load(path: &Path) -> anyhow::Result<Loaded<Llama>> {
    load_with(path, |gguf, r, config| {
        Ok(Llama::load(gguf, r, LoadSpec::full(config))?)
    })
}

/// Reads what [`load`] reads, with only the parts `spec` chooses (from the model's config)
/// of the weights: a span server's blocks, or a swarm client's embedding and head.
pub fn load_spec(
    path: &Path,
    spec: impl FnOnce(&LlamaConfig) -> anyhow::Result<LoadSpec>,
) -> anyhow::Result<Loaded<Arc<Llama>>> {
    load_with(path, |gguf, r, config| {
        Ok(Arc::new(Llama::load(gguf, r, spec(config)?)?))
    })
}

/// Like [`load`], with the weights put on a burn device.
#[cfg(feature = "gpu")]
pub fn load_burn(
    path: &Path,
    device: &burn::tensor::Device,
) -> anyhow::Result<Loaded<kwaainet_core::models::llama::burn::BurnLlama>> {
    load_with(path, |gguf, r, config| {
        Ok(kwaainet_core::models::llama::burn::BurnLlama::load(
            gguf,
            r,
            device,
            LoadSpec::full(config),
        )?)
    })
}

fn load_with<M>(
    path: &Path,
    load_weights: impl FnOnce(&Gguf, &mut BufReader<File>, &LlamaConfig) -> anyhow::Result<M>,
) -> anyhow::Result<Loaded<M>> {
    let file = File::open(path).with_context(|| format!("cannot open model {}", path.display()))?;
    let file_bytes = file.metadata()?.len();
    let mut r = BufReader::new(file);
    let gguf = Gguf::read(&mut r)
        .with_context(|| format!("{} is not a usable GGUF file", path.display()))?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    let tokenizer =
        Tokenizer::from_gguf(&gguf).context("cannot build the tokenizer from the GGUF metadata")?;
    let template = ChatTemplate::from_gguf(&gguf).context("the GGUF chat template is invalid")?;
    let model = load_weights(&gguf, &mut r, &config)
        .with_context(|| format!("cannot load the weights of {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        arch = %config.arch,
        blocks = config.n_layers,
        hidden = config.dim,
        "model loaded"
    );
    Ok(Loaded {
        path: path.to_path_buf(),
        file_bytes,
        model,
        tokenizer,
        template,
    })
}

impl<M> Loaded<M> {
    /// Token ids for `prompt`: rendered through the chat template when `chat`, with BOS
    /// prepended when the model asks for it.
    pub fn prompt_ids(
        &self,
        prompt: &str,
        system: Option<&str>,
        chat: bool,
    ) -> anyhow::Result<Vec<u32>> {
        let messages: Vec<ChatMessage> = system
            .map(|s| ChatMessage::new("system", s))
            .into_iter()
            .chain([ChatMessage::new("user", prompt)])
            .collect();
        let prompt = if chat {
            Prompt::Chat(&messages)
        } else {
            Prompt::Text(prompt)
        };
        Ok(prompt_ids(&self.tokenizer, self.template.as_ref(), prompt)?)
    }
}
