#!/usr/bin/env bash
# Builds the browser engine (engine/wasm) into dist/engine/:
#   kwaainet_wasm.js (ES module glue, `wasm-bindgen --target web`), kwaainet_wasm.d.ts,
#   kwaainet_wasm_bg.wasm (optimized by wasm-opt when npm's binaryen is installed).
#
#   bash scripts/build-wasm.sh            release build (profile wasm-release)
#   OUT=dir bash scripts/build-wasm.sh    another output folder
#   WASM_OPT=0 bash scripts/build-wasm.sh skip wasm-opt (keeps function names, for profiles)
#   FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh
#                                         the WebGPU engine (burn's wgpu backend + our CubeCL
#                                         kernels): profile `release` (LTO over the burn
#                                         stack costs many minutes), wasm-opt -O1
#   FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh
#                                         the CPU engine with a page's span server
#                                         (WasmSpanServer), as the default build otherwise
#   FEATURES=threads OUT=dist/engine-mt bash scripts/build-wasm.sh
#                                         the multi-threaded CPU engine (rayon on web workers
#                                         over shared memory, wasm-bindgen-rayon): nightly
#                                         with atomics and `-Z build-std`, profile
#                                         `wasm-threads`; its worker helper is in snippets/
#   RELAXED=1 OUT=dist/engine-relaxed bash scripts/build-wasm.sh
#                                         the CPU engine with relaxed SIMD in its quantized
#                                         kernels (engine/core kernels/wasm_relaxed.rs: still
#                                         llama.cpp's AVX2 tokens where relaxed_madd is fused,
#                                         the simd128 path elsewhere); a module only engines
#                                         with relaxed SIMD can compile (Chromium >= 114)
#   MODULE=p2p bash scripts/build-wasm.sh the page-side P2P node (crate engine/wasm-p2p:
#                                         rust-libp2p over WebRTC-direct and WebSocket, a
#                                         Kademlia client, a relay client) into dist/p2p/:
#                                         profile `wasm-p2p` (opt-level "z", LTO), wasm-opt -Oz
#
# Every module's files are named kwaainet_wasm.js / kwaainet_wasm_bg.wasm in its folder.
#
# Needs what scripts/setup.sh installs: the wasm32 target, wasm-bindgen-cli at the
# version in Cargo.lock, and node_modules (binaryen's wasm-opt; skipped when absent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kwaainet/target}"
FEATURES="${FEATURES:-}"
MODULE="${MODULE:-engine}"
CRATE=kwaainet-wasm
say() { printf 'build-wasm: %s\n' "$*" >&2; }
if [ "$FEATURES" = p2p ]; then
    say "the P2P node is its own crate now: MODULE=p2p bash scripts/build-wasm.sh"
    exit 2
fi
# Size budgets (gzip -9 of the optimized .wasm): an engine module 4 MiB, the P2P module
# 1 MiB. A build over its budget fails (npm test builds all three modules).
if [ "$MODULE" = p2p ]; then
    CRATE=kwaainet-wasm-p2p
    PROFILE="${WASM_PROFILE:-wasm-p2p}"
    OPT_LEVEL="${WASM_OPT_LEVEL:--Oz}"
    BUDGET=$((1024 * 1024))
    OUT="${OUT:-dist/p2p}"
elif [ "$MODULE" != engine ]; then
    say "MODULE is engine (default) or p2p, not $MODULE"
    exit 2
elif [[ "$FEATURES" == *webgpu* ]]; then
    PROFILE="${WASM_PROFILE:-release}"
    OPT_LEVEL="${WASM_OPT_LEVEL:--O1}"
    BUDGET=$((4 * 1024 * 1024))
elif [[ "$FEATURES" == *threads* ]]; then
    PROFILE="${WASM_PROFILE:-wasm-threads}"
    OPT_LEVEL="${WASM_OPT_LEVEL:--O3}"
    BUDGET=$((4 * 1024 * 1024))
else
    PROFILE="${WASM_PROFILE:-wasm-release}"
    OPT_LEVEL="${WASM_OPT_LEVEL:--O3}"
    BUDGET=$((4 * 1024 * 1024))
fi
OUT="${OUT:-dist/engine}"
target=wasm32-unknown-unknown
RELAXED_FEATURE=""
RELAXED_OPT=""
if [ "${RELAXED:-0}" = 1 ]; then
    RELAXED_FEATURE=",+relaxed-simd"
    RELAXED_OPT="--enable-relaxed-simd"
fi

if [[ "$FEATURES" == *threads* ]]; then
    # Threads need wasm32 atomics, and std rebuilt with them: nightly's build-std (setup.sh
    # installs nightly's rust-src and wasm32 target). RUSTFLAGS replaces the config's flags,
    # so simd128 is named again. The linker is told to make the memory shared and imported
    # (each worker instantiates the module over the same memory), to declare a maximum (the
    # whole 4 GiB), and to export the thread-local-storage hooks wasm-bindgen's thread start
    # calls.
    link=""
    for a in --shared-memory --import-memory --max-memory=4294967296 --export=__wasm_init_tls \
        --export=__tls_size --export=__tls_align --export=__tls_base; do
        link="$link -C link-arg=$a"
    done
    RUSTFLAGS="-C target-feature=+simd128${RELAXED_FEATURE},+atomics,+bulk-memory,+mutable-globals$link" \
        cargo +nightly build -Z build-std=panic_abort,std -p "$CRATE" --target "$target" \
        --profile "$PROFILE" --features "$FEATURES"
elif [ -n "$RELAXED_FEATURE" ]; then
    # RUSTFLAGS replaces .cargo/config.toml's flags: simd128 is named again.
    RUSTFLAGS="-C target-feature=+simd128$RELAXED_FEATURE" \
        cargo build -p "$CRATE" --target "$target" --profile "$PROFILE" ${FEATURES:+--features "$FEATURES"}
else
    # .cargo/config.toml turns on simd128 for this target.
    cargo build -p "$CRATE" --target "$target" --profile "$PROFILE" ${FEATURES:+--features "$FEATURES"}
fi
wasm="$CARGO_TARGET_DIR/$target/$PROFILE/${CRATE//-/_}.wasm"

rm -rf "$OUT"
mkdir -p "$OUT"
wasm-bindgen --target web --out-name kwaainet_wasm --out-dir "$OUT" "$wasm"
# Lets node load the glue as the ES module it is (no "type" warning, no re-parse).
printf '{ "type": "module" }\n' >"$OUT/package.json"

# npm's binaryen (Debian's wasm-opt 108 breaks wasm-bindgen's init code: see ENVIRONMENT).
opt=node_modules/.bin/wasm-opt
THREADS_OPT=""
[[ "$FEATURES" == *threads* ]] && THREADS_OPT="--enable-threads"
bg="$OUT/kwaainet_wasm_bg.wasm"
if [ "${WASM_OPT:-1}" = 0 ]; then
    say "WASM_OPT=0: not optimizing with wasm-opt"
elif [ -x "$opt" ]; then
    # The feature flags must cover everything rustc emits (simd128 above all) or wasm-opt
    # rejects the module; -O3 keeps the kernels fast, --strip-debug drops the name and
    # DWARF sections.
    "$opt" "$OPT_LEVEL" --strip-debug --strip-producers \
        --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-multivalue \
        --enable-reference-types ${THREADS_OPT:-} ${RELAXED_OPT:-} \
        "$bg" -o "$bg.opt"
    mv "$bg.opt" "$bg"
else
    say "no $opt (run scripts/setup.sh): the module is not optimized by wasm-opt"
fi

raw=$(wc -c <"$bg")
gz=$(gzip -9 -c "$bg" | wc -c)
say "$bg: $raw bytes, $gz gzipped"
if [ "${WASM_OPT:-1}" != 0 ] && [ -x "$opt" ] && [ "$gz" -gt "$BUDGET" ]; then
    say "$bg: $gz gzipped bytes exceed the budget of $BUDGET"
    exit 1
fi
