//! KwaaiNet's page-side P2P node as a WebAssembly module (`dist/p2p/`, built by
//! `MODULE=p2p bash scripts/build-wasm.sh`): [`kwaainet_p2p::browser`]'s node (rust-libp2p
//! over WebRTC-direct and WebSocket, a Kademlia client, a relay client) exposed to
//! JavaScript. The SDK wraps it as `KwaaiNetwork` (`sdk-ts/src/network.ts`). A crate of its
//! own, so the engine module (`kwaainet-wasm`) and this one are separate builds with
//! additive features, and neither carries the other's code.
//!
//! Errors reach JavaScript as `Error`s named `KwaaiNetP2pError` with a stable `code`
//! ([`P2pCode`]); the bindings exist on wasm32 only.

#[cfg(target_arch = "wasm32")]
pub mod audit;
#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
pub mod idb;
#[cfg(target_arch = "wasm32")]
pub mod identity;
#[cfg(target_arch = "wasm32")]
pub mod rights;
#[cfg(target_arch = "wasm32")]
pub mod serve;
#[cfg(target_arch = "wasm32")]
pub mod vault;
#[cfg(target_arch = "wasm32")]
pub use bindings::*;

/// What kind of failure a P2P module error is: its `code` in JavaScript
/// (`WASM_P2P_ERROR_CODES` in `sdk-ts/src/wasm-errors.ts`; a test here fails when the two
/// lists disagree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum P2pCode {
    /// Bad arguments (options, a peer id, an address).
    InvalidArgument,
    /// A dial failed or the node is offline.
    Unreachable,
    /// A lookup or message failed or timed out.
    Query,
    /// A record failed verification.
    Record,
    /// The node was freed.
    Stopped,
    /// Anything else.
    Internal,
}

impl P2pCode {
    /// Every code.
    pub const ALL: [P2pCode; 6] = [
        Self::InvalidArgument,
        Self::Unreachable,
        Self::Query,
        Self::Record,
        Self::Stopped,
        Self::Internal,
    ];

    /// The name JavaScript sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid-argument",
            Self::Unreachable => "unreachable",
            Self::Query => "query",
            Self::Record => "record",
            Self::Stopped => "stopped",
            Self::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_lists_every_code_and_no_other() {
        let ts = include_str!("../../../sdk-ts/src/wasm-errors.ts");
        let start = ts
            .find("const WASM_P2P_ERROR_CODES = [")
            .unwrap_or_else(|| panic!("WASM_P2P_ERROR_CODES not found in wasm-errors.ts"));
        let body = &ts[start..];
        let body = &body[..body.find(']').unwrap_or(body.len())];
        let listed: Vec<&str> = body.split('\'').skip(1).step_by(2).collect();
        let ours: Vec<&str> = P2pCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, ours);
    }
}
