//! The `kwaainet` binary: parses the command line and hands off to the library code.

use clap::{Parser, Subcommand};

mod api;
mod audit;
mod audit_cli;
mod bench;
#[cfg(feature = "gpu")]
mod burn_backend;
mod consent;
mod cors;
mod data;
mod data_cli;
mod fetch;
mod footprint;
mod generate;
mod identity;
mod leaderboard;
mod model;
mod node;
mod serving;
mod swarm;
mod swarm_bench;
mod throughput;

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
    /// Generate text from a prompt, streaming tokens to stdout.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed and peak memory.
    Bench(bench::BenchArgs),
    /// Run a P2P node (bootstrap / relay / full roles) with its HTTP side, until SIGINT/SIGTERM.
    Start(Box<node::StartArgs>),
    /// Print this node's peer id, creating its identity key on first use.
    Identity(node::IdentityArgs),
    /// List the peers connected to the running node.
    Peers(node::QueryArgs),
    /// Show the running node's network state.
    Status(node::QueryArgs),
    /// The node's audit log of data operations.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
    /// Compliance reports from the node's audit log.
    Compliance {
        #[command(subcommand)]
        command: audit_cli::ComplianceCommand,
    },
    /// The operator's data on the running node: sealed, replicated to peers as ciphertext.
    Data {
        #[command(subcommand)]
        command: data_cli::DataCommand,
    },
    /// Data rights: export (Art. 15/20), erase (Art. 17), and offline verification.
    Gdpr {
        #[command(subcommand)]
        command: data_cli::GdprCommand,
    },
}

/// A rayon pool with `threads` workers (default: one per core).
fn pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        b = b.num_threads(t);
    }
    Ok(b.build()?)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchModel(args) => fetch::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Start(args) => node::start(&args),
        Command::Identity(args) => node::identity(&args),
        Command::Peers(args) => node::peers(&args),
        Command::Status(args) => node::status(&args),
        Command::Audit { command } => audit_cli::audit(&command),
        Command::Compliance { command } => audit_cli::compliance(&command),
        Command::Data { command } => data_cli::data(&command),
        Command::Gdpr { command } => data_cli::gdpr(&command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes, outermost first.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {}", chain.join(": "));
            }
            std::process::ExitCode::FAILURE
        }
    }
}
