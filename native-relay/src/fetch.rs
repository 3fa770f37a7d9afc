//! `kwaainet fetch-model`: INTERFACE STUB — being implemented.

use std::path::PathBuf;

/// Arguments of `kwaainet fetch-model`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Cache directory (default: $KWAAINET_CACHE or ~/.cache/kwaainet/models).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the command.
pub fn run(_args: &FetchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

/// Returns the path of the default model, downloading it first if it is not cached.
#[allow(dead_code)]
pub fn ensure_default_model(_dir: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    anyhow::bail!("not yet implemented")
}
