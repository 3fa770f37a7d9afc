//! The `kwaainet` binary: parses the command line and hands off to the library code.

use clap::{Parser, Subcommand};

mod fetch;

/// KwaaiNet node and local inference tools.
#[derive(Debug, Parser)]
#[command(name = "kwaainet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download the default model (SmolLM2-135M-Instruct Q4_1) into the cache and print its path.
    FetchModel(fetch::FetchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::FetchModel(args) => fetch::run(&args),
    }
}
