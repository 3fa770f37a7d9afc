//! Defines the one `cfg` alias the crate uses for the browser target.

fn main() {
    cfg_aliases::cfg_aliases! {
        // wasm32 in a browser (no WASI, no emscripten): browser transports only.
        wasm_browser: { all(target_arch = "wasm32", target_os = "unknown") },
    }
}
