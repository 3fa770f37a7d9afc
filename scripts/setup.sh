#!/usr/bin/env bash
# Prepares this machine to build and test KwaaiNet. Idempotent, and fast when nothing is
# missing (no network, no apt-get, no rustup downloads).
#
#   bash scripts/setup.sh     check and install
#   . scripts/setup.sh        the same, and also export CARGO_TARGET_DIR into this shell
#
# - the Rust toolchain pinned in rust-toolchain.toml, with the wasm32-unknown-unknown target;
# - mesa-vulkan-drivers (lavapipe: Vulkan on the CPU), so the wgpu backend runs natively
#   without a GPU; installed with apt-get where that exists (required when CI=true);
# - npm dev dependencies (npm ci) when node_modules is missing or older than package-lock.json;
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

# Rust toolchain + wasm32 target.
target=wasm32-unknown-unknown
channel=$(sed -n 's/^channel *= *"\(.*\)".*/\1/p' rust-toolchain.toml)
if ! command -v rustup >/dev/null 2>&1; then
    say "rustup not found; using the cargo on PATH as is (install rustup: https://rustup.rs)"
else
    if ! rustup toolchain list | grep -q "^${channel}-"; then
        say "installing Rust ${channel} (pinned in rust-toolchain.toml)"
        rustup toolchain install # reads rust-toolchain.toml: channel, components, targets
    fi
    if ! rustup target list --installed --toolchain "$channel" | grep -qx "$target"; then
        say "adding the ${target} target to Rust ${channel}"
        rustup target add --toolchain "$channel" "$target"
    fi
fi

# lavapipe for the wgpu backend on the CPU.
pkg=mesa-vulkan-drivers
if dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    :
elif ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get: install a Vulkan driver yourself to run the wgpu tests (they are skipped otherwise)"
else
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo -n) # never prompt: CI has no stdin
    fi
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    say "installing ${pkg} (lavapipe, for the wgpu backend on the CPU)"
    if ! { "${apt[@]}" update -qq &&
        "${apt[@]}" install -y -qq --no-install-recommends "$pkg"; } </dev/null; then
        if [ "${CI:-}" = true ]; then
            say "could not install ${pkg}"
            exit 1
        fi
        say "could not install ${pkg}; the wgpu tests will be skipped (as root: apt-get install ${pkg})"
    fi
fi

# npm dev dependencies (TypeScript, esbuild), exactly as package-lock.json pins them. npm
# writes node_modules/.package-lock.json on every install: it is the stamp.
if ! command -v npm >/dev/null 2>&1; then
    say "npm not found: install Node.js 20+ (the TypeScript checks need it)"
    [ "${CI:-}" != true ] || exit 1
elif [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    say "installing npm dev dependencies (npm ci)"
    npm ci --no-audit --no-fund </dev/null
fi
