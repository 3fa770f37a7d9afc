#!/usr/bin/env bash
# `npm start`: set up, build the `kwaainet` CLI (release), fetch the default model, and
# stream a chat answer from it.
#
#   npm start                                   the default question
#   npm start -- --prompt "Why is the sky blue?" --max-tokens 128
#   npm start -- --backend wgpu --seed 7        extra `generate` flags
#   npm start -- bench                          any other subcommand, run as is
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/setup.sh
cargo build --release -p kwaainet
bin="$CARGO_TARGET_DIR/release/kwaainet"

case "${1:-}" in
    "" | -*) ;;
    *) exec "$bin" "$@" ;; # a subcommand: `npm start -- bench`
esac

model=$("$bin" fetch-model)

# Defaults for `generate`, each dropped when the caller passes that flag itself.
has() {
    local flag=$1 arg
    shift
    for arg in "$@"; do
        [[ "$arg" = "$flag" || "$arg" = "$flag="* ]] && return 0
    done
    return 1
}
defaults=()
has --model "$@" || defaults+=(--model "$model")
has --chat "$@" || defaults+=(--chat)
has --prompt "$@" || defaults+=(--prompt "What is the capital of France?")
has --max-tokens "$@" || defaults+=(--max-tokens 64)
# The template's built-in system message leads this 135M model astray on short questions.
has --system "$@" || defaults+=(--system "You are a helpful assistant.")

exec "$bin" generate "${defaults[@]}" "$@"
