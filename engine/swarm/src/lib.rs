//! Distributed inference on KwaaiNet: span servers each run some of a model's blocks, and a
//! client generates through a chain of them (Petals' design), with failover that keeps the
//! output identical.
//!
//! - [`protocol`]: `/kwaainet/inference/1.0.0`, its frames and messages, with limits.
//! - [`server`]: a [`SpanServer`] and its per-stream [`server::Connection`]s: sessions, step
//!   semantics, a KV-cache budget that answers `busy` when full.
//! - [`client`]: a [`SwarmSession`], the engine's `Session` over a route of servers, with
//!   bans, re-planning and history replay.
//! - [`placement`]: which blocks a server should take (Petals' rule), and when to move.
//! - [`route`]: the route planner (Dijkstra over round trips, throughput and free cache).
//! - [`link`]: how a client reaches a server ([`Connector`], [`Link`]); [`LocalServers`]
//!   for servers in this process.
//! - `net` (native): the protocol over libp2p streams: `net::serve` for a node's spans,
//!   `net::NetConnector` for clients.
//!
//! Hidden states travel in one of [`kwaainet_core::codec::Codec`]'s formats.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kwaainet_core::{gguf::Gguf, Llama, LoadSpec};
//! use kwaainet_swarm::{ClientConfig, LocalServers, ServerConfig, ServerEntry, SpanServer, SwarmSession};
//!
//! let path = "SmolLM2-135M-Instruct.Q4_1.gguf";
//! let load = |spec: LoadSpec| -> Result<Arc<Llama>, Box<dyn std::error::Error>> {
//!     let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
//!     let g = Gguf::read(&mut r)?;
//!     Ok(Arc::new(Llama::load(&g, &mut r, spec)?))
//! };
//! let servers = LocalServers::new();
//! let mut entries = Vec::new();
//! for (id, blocks) in [("a", 0..15), ("b", 15..30)] {
//!     let model = load(LoadSpec { blocks: blocks.clone(), embed: false, head: false })?;
//!     let config = ServerConfig { cache_tokens: 4096, ..ServerConfig::new("smollm2") };
//!     servers.add(id, Arc::new(SpanServer::new(model, config)));
//!     entries.push(ServerEntry::new(id, blocks));
//! }
//! let local = load(LoadSpec { blocks: 0..0, embed: true, head: true })?;
//! let mut session = SwarmSession::new(local, entries, Arc::new(servers), ClientConfig::new("smollm2"), "s1");
//! let logits = session.forward_tokens(&[1, 4093, 198])?;
//! # let _ = logits; Ok(()) }
//! ```

pub mod client;
pub mod link;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod net;
pub mod placement;
pub mod protocol;
pub mod route;
pub mod server;

pub use client::{ClientConfig, CodecChoice, ServerEntry, SwarmError, SwarmSession, SwarmStats};
pub use link::{Connector, Link, LinkError, LocalServers};
pub use server::{ServerConfig, ServerStats, SpanServer};

use kwaainet_core::gguf::{Gguf, Value};

/// The id a model is announced and asked for under: its GGUF name and the start of its
/// SHA-256, so two different files never mix.
pub fn model_id(gguf: &Gguf, sha256: &str) -> String {
    let name = match gguf.get("general.name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => match gguf.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => "model".into(),
        },
    };
    let slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let hash = sha256.get(..16).unwrap_or(sha256);
    format!("{slug}@{hash}")
}
