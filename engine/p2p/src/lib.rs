//! KwaaiNet's P2P network on rust-libp2p: the composed behaviour (identify, ping,
//! Kademlia on `/kwaainet/kad/1.0.0`, circuit relay v2, DCUtR, AutoNAT, connection limits,
//! `/kwaainet/info/1.0.0`), typed and signed DHT records, and — natively — the transports,
//! the node runtime, its persistent identity and its HTTP side.
//!
//! Native transports are compiled under `cfg(not(wasm_browser))`, the browser ones
//! (WebRTC-direct and WebSocket through `web-sys`) under `cfg(wasm_browser)`; the alias
//! is defined once, in `build.rs`.
//!
//! ```
//! use kwaainet_p2p::record::{node_key, is_dialable};
//! let peer = libp2p::PeerId::random();
//! assert!(node_key(&peer).as_ref().starts_with(b"/kwaainet/node/"));
//! assert!(!is_dialable(&"/ip4/0.0.0.0/tcp/4001".parse().unwrap(), true));
//! ```

pub mod behaviour;
mod command;
pub mod config;
pub mod consent;
pub mod did;
pub mod error;
pub mod frame;
pub mod host;
pub mod info;
mod lookup;
pub mod msg;
pub mod record;
pub mod region;
pub mod request;

#[cfg(not(wasm_browser))]
pub mod health;
#[cfg(not(wasm_browser))]
pub mod http;
#[cfg(not(wasm_browser))]
pub mod identity;
#[cfg(not(wasm_browser))]
pub mod node;
#[cfg(not(wasm_browser))]
mod private_file;
#[cfg(not(wasm_browser))]
pub mod transport;

#[cfg(wasm_browser)]
pub mod browser;
#[cfg(any(wasm_browser, feature = "webrtc"))]
mod webrtc_chunks;
#[cfg(all(not(wasm_browser), feature = "webrtc"))]
mod webrtc_compat;

pub use config::{KAD_PROTOCOL, NodeConfig, RelayReservations};
pub use error::{Error, Result};
pub use libp2p;
pub use lookup::Lookup;
#[cfg(not(wasm_browser))]
pub use node::{KadMode, NatStatus, NodeHandle, NodeState, PeerState, spawn, spawn_memory};
