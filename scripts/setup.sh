#!/usr/bin/env bash
# Prepares this machine to build and test KwaaiNet. Idempotent, and fast when nothing is
# missing (no network, no apt-get, no rustup downloads).
#
#   bash scripts/setup.sh     check and install
#   . scripts/setup.sh        the same, and also export CARGO_TARGET_DIR into this shell
#
# - the Rust toolchain pinned in rust-toolchain.toml, with the wasm32-unknown-unknown,
#   aarch64-unknown-linux-gnu and x86_64-pc-windows-gnu targets, and Debian's cross
#   toolchains and qemu-user for the latter two (npm test's `arm` step);
# - mesa-vulkan-drivers (lavapipe: Vulkan on the CPU), so the wgpu backend runs natively
#   without a GPU, and chromium, for the browser tests; installed with apt-get where that
#   exists (required when CI=true);
# - wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in Cargo.lock (the
#   browser engine's build needs the two to match); cargo install, a few minutes, once;
# - the npm devDependencies (TypeScript, esbuild, binaryen's wasm-opt, playwright-core) with `npm ci` when node_modules is
#   missing or older than package-lock.json;
# - the Solid pod for kwaainet-storage's SolidStore test (@solid/community-server, pinned in
#   engine/storage/tests/solid-pod/), installed into $KWAAINET_CACHE/solid-pod (else
#   ~/.cache/kwaainet/solid-pod) by `node scripts/solid-pod.mjs install`, not into the
#   repository's node_modules (636 packages, 105 MB); skipped when its lock is unchanged;
# - CARGO_TARGET_DIR defaults to ~/.cache/kwaainet/target: outside the clone, so a fresh
#   clone on the same machine reuses earlier builds.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: do the work in a child bash (so `set -e` holds there whatever the caller's
    # context), then export into the caller.
    bash "${BASH_SOURCE[0]}" || return
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kwaainet/target}"
    return 0
fi

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# Rust toolchain + its targets: wasm32 (the browser modules), aarch64 Linux (the ARM node,
# run under qemu-user in npm test's `arm` step) and Windows (mingw; compile-checked there).
channel=$(sed -n 's/^channel *= *"\(.*\)".*/\1/p' rust-toolchain.toml)
if ! command -v rustup >/dev/null 2>&1; then
    say "rustup not found; using the cargo on PATH as is (install rustup: https://rustup.rs)"
else
    if ! rustup toolchain list | grep -q "^${channel}-"; then
        say "installing Rust ${channel} (pinned in rust-toolchain.toml)"
        rustup toolchain install # reads rust-toolchain.toml: channel, components, targets
    fi
    installed=$(rustup target list --installed --toolchain "$channel")
    for target in wasm32-unknown-unknown aarch64-unknown-linux-gnu x86_64-pc-windows-gnu; do
        if ! grep -qx "$target" <<<"$installed"; then
            say "adding the ${target} target to Rust ${channel}"
            rustup target add --toolchain "$channel" "$target"
        fi
    done
    # Nightly, for one module only: the multi-threaded CPU engine needs wasm32 atomics and
    # std rebuilt with them (`-Z build-std`, scripts/build-wasm.sh FEATURES=threads), so
    # nightly's rust-src and wasm32 target. Everything else builds on the pinned stable.
    if ! rustup toolchain list | grep -q "^nightly-"; then
        say "installing Rust nightly (the multi-threaded browser engine's build-std)"
        rustup toolchain install nightly --profile minimal
    fi
    if ! rustup component list --installed --toolchain nightly | grep -q "^rust-src"; then
        say "adding rust-src to Rust nightly"
        rustup component add --toolchain nightly rust-src
    fi
    if ! rustup target list --installed --toolchain nightly | grep -qx wasm32-unknown-unknown; then
        say "adding the wasm32-unknown-unknown target to Rust nightly"
        rustup target add --toolchain nightly wasm32-unknown-unknown
    fi
fi

# Debian packages, installed with apt-get when missing (required when CI=true): lavapipe
# for the wgpu backend on the CPU, and Chromium for the browser tests (npm test's `browser`
# step drives /usr/bin/chromium with playwright-core).
apt_updated=
apt_install() { # package, what it is for
    local pkg=$1 why=$2
    if dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        return 0
    elif ! command -v apt-get >/dev/null 2>&1; then
        if [ "${CI:-}" = true ]; then
            say "no apt-get: cannot install ${pkg} (${why})"
            exit 1
        fi
        say "no apt-get: install ${pkg} yourself (${why}); the tests that need it are skipped otherwise"
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo -n) # never prompt: CI has no stdin
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    say "installing ${pkg} (${why})"
    if ! { { [ -n "$apt_updated" ] || "${apt[@]}" update -qq; } &&
        "${apt[@]}" install -y -qq --no-install-recommends "$pkg"; } </dev/null; then
        if [ "${CI:-}" = true ]; then
            say "could not install ${pkg}"
            exit 1
        fi
        say "could not install ${pkg}; the tests that need it will be skipped (as root: apt-get install ${pkg})"
    fi
    apt_updated=1
}
apt_install mesa-vulkan-drivers "lavapipe, for the wgpu backend on the CPU"
apt_install chromium "headless Chromium, for the browser tests"
# The cross builds of npm test's `arm` step: Debian's aarch64 and mingw-w64 C toolchains
# (linkers, and C code such as ring's), and qemu-user to run the aarch64 binaries here.
apt_install gcc-aarch64-linux-gnu "the aarch64 cross linker"
apt_install libc6-dev-arm64-cross "the aarch64 C library, to link against"
apt_install qemu-user "qemu-aarch64, to run the ARM node and tests"
apt_install gcc-mingw-w64-x86-64 "the Windows (mingw-w64) cross compiler"
apt_install wine64 "Wine, to run the Windows build"

# wasm-bindgen-cli matching the wasm-bindgen crate in Cargo.lock.
wb_want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
wb_have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ -z "$wb_want" ]; then
    say "no wasm-bindgen in Cargo.lock: skipping wasm-bindgen-cli"
elif [ "$wb_have" != "$wb_want" ]; then
    say "installing wasm-bindgen-cli ${wb_want}${wb_have:+ (found ${wb_have})}; takes a few minutes, once"
    # Not --locked: a dependency pinned in its lock file is no longer on crates.io.
    cargo install wasm-bindgen-cli --version "$wb_want"
fi

# npm devDependencies (TypeScript, esbuild; binaryen's wasm-opt for
# scripts/build-wasm.sh), reinstalled when
# package-lock.json differs from the copy kept beside the last install.
stamp=node_modules/.kwaainet-package-lock.json
if ! command -v npm >/dev/null 2>&1; then
    say "npm not found: install Node.js 20+ (https://nodejs.org)"
    exit 1
elif ! cmp -s package-lock.json "$stamp"; then
    say "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error </dev/null
    cp package-lock.json "$stamp"
fi
node scripts/solid-pod.mjs install </dev/null
