//! The TypeScript types of the values that cross to JavaScript, generated from their Rust
//! definitions in `engine.rs` with ts-rs, and the test that keeps the committed file
//! (`sdk-ts/src/engine-types.ts`, which the SDK types its engine calls with) equal to them.
//!
//! After changing one of those types: `KWAAINET_BLESS=1 cargo test -p kwaainet-wasm
//! engine_types` rewrites the file; without it the test fails and shows the difference.

use std::path::PathBuf;

use ts_rs::{Config, TS};

use crate::engine::{
    Backend, EngineLimits, Finish, GpuInfo, GpuLimits, Info, Message, Request, StepResult,
};

/// The file the SDK imports.
fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-ts/src/engine-types.ts")
}

fn decl<T: TS>(cfg: &Config) -> String {
    let docs = T::docs().unwrap_or_default();
    format!("{docs}export {}\n", T::decl(cfg))
}

/// The whole file, as these Rust types give it.
fn generated() -> String {
    // Every integer here fits a JavaScript number (u64 only for `seed`, typed by hand).
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from engine/wasm/src/engine.rs by ts-rs (engine/wasm/src/engine_types.rs).\n\
         // Do not edit: change the Rust types, then run\n\
         // `KWAAINET_BLESS=1 cargo test -p kwaainet-wasm engine_types`.\n\n",
    );
    for d in [
        decl::<Backend>(&cfg),
        decl::<Info>(&cfg),
        decl::<EngineLimits>(&cfg),
        decl::<GpuInfo>(&cfg),
        decl::<GpuLimits>(&cfg),
        decl::<Message>(&cfg),
        decl::<Request>(&cfg),
        decl::<Finish>(&cfg),
        decl::<StepResult>(&cfg),
    ] {
        out.push_str(&d);
        out.push('\n');
    }
    out.pop();
    out
}

#[test]
fn engine_types_match_the_committed_typescript() {
    let want = generated();
    let path = committed();
    if std::env::var("KWAAINET_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let diff: Vec<String> = have
            .lines()
            .zip(want.lines())
            .enumerate()
            .filter(|(_, (h, w))| h != w)
            .take(5)
            .map(|(i, (h, w))| format!("line {}:\n  file: {h}\n  Rust: {w}", i + 1))
            .collect();
        panic!(
            "{} differs from the Rust types ({} vs {} lines; first differences below). \
             Regenerate it with `KWAAINET_BLESS=1 cargo test -p kwaainet-wasm engine_types`.\n{}",
            path.display(),
            have.lines().count(),
            want.lines().count(),
            diff.join("\n")
        );
    }
}

/// `Request::FIELDS` (the keys `start()` accepts) names exactly the request's fields.
#[test]
fn request_fields_are_the_struct_fields() {
    let decl = Request::decl(&Config::new());
    let body = decl
        .split_once('{')
        .and_then(|(_, b)| b.rsplit_once('}'))
        .map(|(b, _)| b)
        .unwrap_or_default();
    let mut fields: Vec<&str> = body
        .split(',')
        .filter_map(|f| f.rsplit_once("*/").map_or(Some(f), |(_, f)| Some(f)))
        .filter_map(|f| f.split_once("?:").map(|(name, _)| name.trim()))
        .collect();
    let mut want: Vec<&str> = Request::FIELDS.to_vec();
    fields.sort_unstable();
    want.sort_unstable();
    assert_eq!(fields, want, "from {decl}");
}
