//! KwaaiNet's CPU inference engine for browsers: [`kwaainet_core`]'s quantized model,
//! tokenizer, chat template and sampler exposed to JavaScript with `wasm-bindgen`.
//!
//! The JavaScript API (`WasmEngine`, `WasmGeneration`, `engineVersion`, `simd128`) is the
//! contract in the crate README. This file only converts values; the logic is in
//! [`engine`], which is plain Rust. Errors reach JavaScript as `Error`s with a stable `code`
//! (`gguf`, `invalid-argument`, `context-full` with `needed` and `max`, …: see
//! [`engine::ErrorCode`]) and a human-readable message.
//!
//! Build with `scripts/build-wasm.sh` (wasm32 with simd128, then `wasm-bindgen --target
//! web` and `wasm-opt`). The bindings (and their JavaScript dependencies) exist only on wasm32; natively the
//! crate is the plain-Rust [`engine`], which its tests run against the real model.

pub mod engine;
#[cfg(test)]
mod engine_types;
pub mod error;
#[cfg(feature = "webgpu")]
mod gpu;
#[cfg(feature = "serve")]
pub mod span;
#[cfg(feature = "serve")]
pub mod swarm_client;

#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(target_arch = "wasm32")]
pub use bindings::*;
#[cfg(all(target_arch = "wasm32", feature = "serve"))]
mod swarm_bindings;
#[cfg(all(target_arch = "wasm32", feature = "serve"))]
pub use swarm_bindings::*;

pub(crate) fn engine_version_str() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub(crate) fn has_simd128() -> bool {
    cfg!(target_feature = "simd128")
}

/// The most linear memory a wasm32 module can address: 65536 pages of 64 KiB.
pub(crate) const WASM_MEMORY_MAX_BYTES: u64 = 1 << 32;

/// The module's linear memory now, in bytes (0 natively).
pub(crate) fn wasm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    0
}
