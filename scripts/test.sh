#!/usr/bin/env bash
# `npm test`: every check, in order, failing fast. Each step prints its wall time; a summary
# closes the run.
#
#   bash scripts/test.sh              all steps
#   bash scripts/test.sh fmt clippy   only those (in the order given)
#   bash scripts/test.sh --list       the step names
#
# To add a step: write a `step_<name>` function below and add <name> to STEPS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=(setup fmt clippy build fetch-model rust-tests api p2p wasm32 wasm-engine ts browser package arm)

BIN() { printf '%s/release/kwaainet' "$CARGO_TARGET_DIR"; }

# Whether engine/wasm has the `webgpu` feature (the WebGPU engine module, dist/engine-webgpu/).
has_webgpu_engine() { grep -q '^webgpu' engine/wasm/Cargo.toml; }
build_webgpu_engine() { FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh; }
build_threads_engine() { FEATURES=threads OUT=dist/engine-mt bash scripts/build-wasm.sh; }
# The CPU engines with relaxed SIMD in their kernels (engine/core kernels/wasm_relaxed.rs),
# single- and multi-threaded: the CDN ships their .wasm next to the plain ones.
build_relaxed_engines() {
    RELAXED=1 OUT=dist/engine-relaxed bash scripts/build-wasm.sh
    RELAXED=1 FEATURES=threads OUT=dist/engine-mt-relaxed bash scripts/build-wasm.sh
}

step_setup() {
    # Sourced so that CARGO_TARGET_DIR reaches the later steps.
    . scripts/setup.sh
}

step_fmt() {
    cargo fmt --all --check
}

step_clippy() {
    # A check build in the dev profile: its artifacts are separate from the release ones.
    cargo clippy --workspace --all-targets -- -D warnings
    # The JavaScript bindings compile on wasm32 only: the engine's (engine/wasm) and the
    # page-side P2P node's (engine/wasm-p2p, with kwaainet-p2p's cfg(wasm_browser) code).
    cargo clippy -p kwaainet-wasm --target wasm32-unknown-unknown -- -D warnings
    # The span server a page runs (feature `serve`), natively (its test) and on wasm32.
    cargo clippy -p kwaainet-wasm --features serve --all-targets -- -D warnings
    cargo clippy -p kwaainet-wasm --features serve --target wasm32-unknown-unknown -- -D warnings
    cargo clippy -p kwaainet-wasm-p2p --target wasm32-unknown-unknown -- -D warnings
    # The audit log's proofs and checkpoints verify in a page too.
    cargo clippy -p kwaainet-audit --target wasm32-unknown-unknown -- -D warnings
    # The footprint's GPU energy counter (feature `nvml`, loaded from the driver at run time:
    # these machines have none, so it is checked here and its test runs where one is), and
    # the footprint crate on wasm32 (a page's span server meters its steps with it).
    cargo clippy -p kwaainet-footprint --features nvml --all-targets -- -D warnings
    cargo clippy -p kwaainet-footprint --target wasm32-unknown-unknown -- -D warnings
    # Averaging and training (burn with autodiff on its pure-Rust CPU backend) build for a
    # page too; the libp2p transport is native only for now.
    cargo clippy -p kwaainet-hivemind --target wasm32-unknown-unknown -- -D warnings
    # The relaxed-SIMD kernels (RELAXED=1 builds).
    RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
        cargo clippy -p kwaainet-wasm --target wasm32-unknown-unknown -- -D warnings
    # The multi-threaded engine (feature `threads`): wasm32 with atomics, so nightly and
    # build-std, as scripts/build-wasm.sh builds it.
    RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals" \
        cargo +nightly clippy -Z build-std=panic_abort,std -p kwaainet-wasm --features threads \
        --target wasm32-unknown-unknown -- -D warnings
}

step_build() {
    cargo build --release -p kwaainet
}

step_fetch-model() {
    # Tests find the model through KWAAINET_MODEL (and fail without it: see rust-tests).
    KWAAINET_MODEL=$("$(BIN)" fetch-model)
    export KWAAINET_MODEL
    echo "model: $KWAAINET_MODEL"
}

step_rust-tests() {
    # Tests that need the model, a wgpu adapter or the Solid pod fail here instead of skipping.
    export KWAAINET_REQUIRE_MODEL=1
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    local lvp
    lvp="/usr/share/vulkan/icd.d/lvp_icd.$(uname -m).json"
    if [ -f "$lvp" ]; then
        export KWAAINET_REQUIRE_WGPU=1 VK_ICD_FILENAMES="$lvp"
    else
        echo "no lavapipe ($lvp): wgpu tests may skip"
    fi
    # The Solid pod of kwaainet-storage's SolidStore test (the Community Solid Server, into
    # the cache; a no-op once installed): the test fails instead of skipping without it.
    node scripts/solid-pod.mjs install
    export KWAAINET_REQUIRE_SOLID=1
    cargo test --workspace --release
    # A page's span server between native spans, and a page's swarm client (kwaainet-wasm's
    # `serve` feature).
    cargo test --release -p kwaainet-wasm --features serve --test span --test swarm_client
}

step_api() {
    # The node's OpenAI-compatible API: the official `openai` npm client, raw HTTP and the
    # SDK's endpoint mode against `kwaainet start` on 127.0.0.1 with the default model.
    if [ -z "${KWAAINET_MODEL:-}" ]; then
        step_fetch-model
    fi
    npm run --silent build -w @kwaainet/sdk
    KWAAINET_BIN="$(BIN)" node --test --test-timeout=600000 native-relay/tests/api/
}

step_p2p() {
    # The P2P crate's own tests (five-node DHT, hostile peers, HTTP side, 60-node memory
    # swarm) and the binary's node tests already ran in rust-tests. Here: interop with
    # js-libp2p (npm `libp2p` under node) dialing `kwaainet start` over TCP.
    KWAAINET_BIN="$(BIN)" node --test engine/p2p/tests/interop/
    # The browser joins: the page-side node (rust-libp2p in wasm, dist/p2p/) through the
    # SDK's KwaaiNetwork in headless Chromium, against `kwaainet start` on 127.0.0.1:
    # WebRTC-direct, WebSocket fallback, DHT lookup, page-to-page messages through the
    # relay, reconnect after a node restart; a page checks a node's audit log (audit.test.mjs:
    # signature, root, inclusion, consistency, a lying node caught). Then a page serves a span (serve.test.mjs):
    # native → page → native routes, consent withdrawn and the page closed mid-generation.
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    MODULE=p2p bash scripts/build-wasm.sh
    FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh
    npm run --silent build -w @kwaainet/sdk
    KWAAINET_BIN="$(BIN)" node --test --test-timeout=300000 engine/p2p/tests/browser/
}

step_wasm32() {
    # The browser's WebGPU engine (engine/wasm with the `webgpu` feature: the burn model on
    # burn's wgpu backend and our CubeCL kernels, WebGPU in the browser) built as the module
    # the SDK ships, into dist/engine-webgpu/; this is also the wasm32 build of kwaainet-core's
    # burn model. The CPU engine is the wasm-engine step.
    build_webgpu_engine
}

step_ts() {
    # The browser side: strict type check of every TypeScript file, the npm package build
    # (@kwaainet/sdk: ESM + .d.ts), the CDN bundle (built twice to prove it deterministic;
    # it picks up dist/engine/ when the wasm engine was built), then the node tests.
    node_modules/.bin/tsc -p tsconfig.json
    npm run --silent build -w @kwaainet/sdk
    node cdn/build.mjs --check-deterministic
    node sdk-ts/test/run.mjs
}

step_wasm-engine() {
    # The browser engine as shipped (scripts/build-wasm.sh prints the module's raw and gzip
    # sizes), run in node: simd128 kernels against llama.cpp's tokens, the JS API, errors.
    export KWAAINET_REQUIRE_MODEL=1
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    bash scripts/build-wasm.sh
    # The multi-threaded CPU engine (nightly, build-std): run in Chromium by the browser
    # step, in a cross-origin-isolated page (node cannot start its web workers).
    build_threads_engine
    # The relaxed-SIMD builds: tested in Chromium (tests/relaxed.test.mjs here; the browser
    # step through the SDK), which has relaxed SIMD (node 20 only behind a flag).
    build_relaxed_engines
    # Both modules' generated declarations satisfy the SDK's engine contract, their values
    # typed by the Rust-generated engine-types.ts (the WebGPU module: the wasm32 step).
    if [ -f dist/engine-webgpu/kwaainet_wasm.d.ts ]; then
        node_modules/.bin/tsc -p engine/wasm/tests/types
    fi
    node --test engine/wasm/tests/
}

step_browser() {
    # The browser side end to end in headless Chromium (playwright-core drives Debian's
    # /usr/bin/chromium): the demo page on the one-line tag with SRI, model download with
    # progress / Range resume / SHA-256 / Cache Storage, llama.cpp's reference tokens through
    # the SDK, CPU fallback, abort, worker and service-worker hosts, the WebGPU engine in the
    # service worker (SwiftShader: --enable-unsafe-webgpu). Uses dist/engine and
    # dist/engine-webgpu (the wasm-engine step) and the CDN bundle, rebuilt here so it holds
    # those engines.
    export KWAAINET_REQUIRE_MODEL=1
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    if [ ! -f dist/engine/kwaainet_wasm_bg.wasm ]; then
        bash scripts/build-wasm.sh
    fi
    if has_webgpu_engine && [ ! -f dist/engine-webgpu/kwaainet_wasm_bg.wasm ]; then
        build_webgpu_engine
    fi
    if [ ! -f dist/engine-mt/kwaainet_wasm_bg.wasm ]; then
        build_threads_engine
    fi
    if [ ! -f dist/engine-relaxed/kwaainet_wasm_bg.wasm ] || [ ! -f dist/engine-mt-relaxed/kwaainet_wasm_bg.wasm ]; then
        build_relaxed_engines
    fi
    node cdn/build.mjs >/dev/null
    node --test --test-timeout=300000 demo-site/tests/
}

step_package() {
    # `npm import` as a user meets it: `npm pack` of @kwaainet/sdk (its prepack builds the
    # SDK and the CDN bundle and copies every engine in: sdk-ts/scripts/pack-assets.mjs),
    # `npm publish --dry-run`, then a minimal Vite app (Vite from the npm registry) on the
    # packed tarball, built and served on 127.0.0.1, and under `vite` dev, streaming
    # llama.cpp's tokens in headless Chromium (sdk-ts/test/package/). Needs the three
    # engine modules: built by the p2p, wasm32 and wasm-engine steps.
    export KWAAINET_REQUIRE_MODEL=1
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    node --test --test-timeout=900000 sdk-ts/test/package/
}

step_arm() {
    # Other platforms (README "Running a node"). The lean kwaainet (no GPU stack) built for
    # aarch64 with Debian's cross toolchain and run under qemu-user: the NEON kernels' unit
    # tests, llama.cpp's AVX2 greedy tokens and teacher-forced argmaxes through the NEON
    # kernels (they reproduce AVX2 bit for bit), `generate` there equal to this machine's,
    # and an ARM node serving a span in a swarm of x86-64 nodes. Then the lean Windows build,
    # cross-compiled with mingw-w64, under Wine where it is installed: `generate` equal to
    # this machine's, a node that a native node reaches, and its key file's owner-only DACL.
    export KWAAINET_REQUIRE_MODEL=1
    if [ -z "${KWAAINET_MODEL:-}" ]; then # run without the fetch-model step
        step_fetch-model
    fi
    local arm=aarch64-unknown-linux-gnu core=(-p kwaainet-core --no-default-features --features threads)
    export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
    cargo test --release --target "$arm" "${core[@]}" --lib kernels
    cargo test --release --target "$arm" "${core[@]}" --test reference -- \
        --exact greedy_matches_llama_cpp_on_avx2
    cargo build --release --target "$arm" -p kwaainet --no-default-features
    KWAAINET_ARM_BIN="$CARGO_TARGET_DIR/$arm/release/kwaainet" \
        cargo test --workspace --release --test node -- --exact an_arm_node_serves_a_span_in_an_x86_swarm
    local win=x86_64-pc-windows-gnu
    cargo build --release --target "$win" -p kwaainet --no-default-features
    local exe="$CARGO_TARGET_DIR/$win/release/kwaainet.exe" wine=
    wine=$(command -v wine64 || command -v wine || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)
    if [ -z "$wine" ]; then
        echo "no Wine: the Windows build is compile-checked only"
        return 0
    fi
    # Wine 8 (Debian 12) lacks bcryptprimitives.dll, which Rust's std imports: a stand-in
    # beside the exe (native-relay/tests/wine/bcryptprimitives.c; test support, never shipped).
    x86_64-w64-mingw32-gcc -O2 -shared -o "$(dirname "$exe")/bcryptprimitives.dll" \
        native-relay/tests/wine/bcryptprimitives.c -ladvapi32
    export WINEPREFIX="${WINEPREFIX:-$HOME/.cache/kwaainet/wine}" WINEDEBUG=-all
    local prompt="The capital of France is" want got
    want=$("$(BIN)" generate --model "$KWAAINET_MODEL" --prompt "$prompt" --max-tokens 8)
    got=$(timeout 300 "$wine" "$exe" generate --model "$KWAAINET_MODEL" --prompt "$prompt" --max-tokens 8)
    [ "$got" = "$want" ] || { echo "kwaainet.exe under Wine: '$got', expected '$want'"; return 1; }
    echo "kwaainet.exe under Wine generates what this machine's build does: $got"
    KWAAINET_WINDOWS_BIN="$exe" KWAAINET_WINE="$wine" \
        cargo test --workspace --release --test node -- --exact \
        a_windows_node_is_reached_by_a_native_peer a_windows_key_file_is_private_to_its_user
}

# ---------------------------------------------------------------------------------------

if [ "${1:-}" = --list ]; then
    printf '%s\n' "${STEPS[@]}"
    exit 0
fi
if [ $# -gt 0 ]; then
    for name in "$@"; do
        declare -F "step_$name" >/dev/null || {
            echo "unknown step: $name (steps: ${STEPS[*]})" >&2
            exit 2
        }
    done
    # Setup always runs first: later steps need its environment.
    [ "$1" = setup ] || set -- setup "$@"
    STEPS=("$@")
fi

TIMES=()
CURRENT=
RUN_START=$EPOCHREALTIME

elapsed() { # seconds since $1 (an $EPOCHREALTIME), one decimal
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

summary() {
    local status=$1
    echo
    echo "==> summary"
    local line
    for line in "${TIMES[@]}"; do
        echo "    $line"
    done
    if [ "$status" -ne 0 ] && [ -n "$CURRENT" ]; then
        echo "    FAILED  $CURRENT (exit $status after $(elapsed "$STEP_START") s)"
    fi
    echo "    total   $(elapsed "$RUN_START") s"
    if [ "$status" -eq 0 ]; then
        echo "==> all ${#TIMES[@]} steps passed"
    else
        echo "==> FAILED at step: ${CURRENT:-?}"
    fi
}
trap 'summary $?' EXIT

i=0
for name in "${STEPS[@]}"; do
    i=$((i + 1))
    CURRENT=$name
    STEP_START=$EPOCHREALTIME
    echo
    echo "==> [$i/${#STEPS[@]}] $name"
    "step_$name" # not in a condition: `set -e` must stay in force inside the step
    t=$(elapsed "$STEP_START")
    echo "==> $name: ok in $t s"
    TIMES+=("$(printf '%-12s %8s s' "$name" "$t")")
    CURRENT=
done
