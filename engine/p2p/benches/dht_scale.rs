//! DHT at scale: an in-process swarm of real KwaaiNet nodes on the memory transport.
//!
//!   cargo bench -p kwaainet-p2p --bench dht_scale                 1,000 nodes
//!   KWAAINET_SIM_NODES=10000 KWAAINET_SIM_LOOKUPS=2000 cargo bench -p kwaainet-p2p --bench dht_scale
//!
//! Prints lookup success rate, peers contacted per lookup and latency percentiles.
//! See engine/p2p/README.md ("Scale simulation") for the numbers and the path to 10,000.

#![allow(clippy::print_stdout)]

mod sim;

use sim::{SimConfig, run};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let cfg = SimConfig {
        nodes: env("KWAAINET_SIM_NODES", 1000),
        lookups: env("KWAAINET_SIM_LOOKUPS", 1000),
        bootstrap_fanout: env("KWAAINET_SIM_FANOUT", 3),
        concurrency: env("KWAAINET_SIM_CONCURRENCY", 32),
        idle_timeout_secs: env("KWAAINET_SIM_IDLE_SECS", 5) as u64,
        maintenance: env("KWAAINET_SIM_MAINTENANCE", 0) != 0,
        ..SimConfig::default()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("dht_scale=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "dht_scale: {} nodes, {} lookups (memory transport, noise + yamux)",
        cfg.nodes, cfg.lookups
    );
    let report = rt.block_on(run(cfg))?;
    print!("{report}");
    Ok(())
}
