#!/usr/bin/env bash
# `npm start`: set up, build what is missing, fetch the default model, build the CDN bundle
# if missing, and run a local KwaaiNet node (bootstrap + relay + full) on 127.0.0.1 that
# serves the demo site. Stop it with Ctrl-C.
#
#   npm start                                   the local node and demo site
#   KWAAINET_HTTP=127.0.0.1:9000 npm start      another HTTP port (KWAAINET_PORT: P2P port)
#   npm start -- --region DE                    extra `kwaainet start` flags
#   npm start -- generate --prompt "Why is the sky blue?"   any subcommand, run as is
#   KWAAINET_BIN=path/to/kwaainet npm start     run that binary instead of building one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/setup.sh
if [ -n "${KWAAINET_BIN:-}" ]; then
    bin="$KWAAINET_BIN"
else
    cargo build --release -p kwaainet
    bin="$CARGO_TARGET_DIR/release/kwaainet"
fi

case "${1:-}" in
    "" | -*) ;;
    *) exec "$bin" "$@" ;; # a subcommand: `npm start -- generate`
esac

model=$("$bin" fetch-model)

# The browser engine, the page's P2P node and the CDN bundle, when missing (the first run
# takes a few minutes). A rebuilt module means a rebuilt bundle.
rebuild_cdn=0
if [ ! -f dist/engine/kwaainet_wasm_bg.wasm ]; then
    bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
if [ ! -f dist/p2p/kwaainet_wasm_bg.wasm ]; then
    MODULE=p2p bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
# The engine a visitor's tab serves blocks with (the demo's "Serve blocks"), and the
# multi-threaded CPU engine (the page is cross-origin isolated: the node sends COOP/COEP).
if [ ! -f dist/engine-serve/kwaainet_wasm_bg.wasm ]; then
    FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
if [ ! -f dist/engine-mt/kwaainet_wasm_bg.wasm ]; then
    FEATURES=threads OUT=dist/engine-mt bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
# Both CPU engines again with relaxed SIMD (Chromium loads them: faster kernels, the same
# tokens). Rebuilt with the plain ones, whose glue loads them.
if [ "$rebuild_cdn" = 1 ] || [ ! -f dist/engine-relaxed/kwaainet_wasm_bg.wasm ]; then
    RELAXED=1 OUT=dist/engine-relaxed bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
if [ "$rebuild_cdn" = 1 ] || [ ! -f dist/engine-mt-relaxed/kwaainet_wasm_bg.wasm ]; then
    RELAXED=1 FEATURES=threads OUT=dist/engine-mt-relaxed bash scripts/build-wasm.sh
    rebuild_cdn=1
fi
if [ "$rebuild_cdn" = 1 ] || ! compgen -G 'dist/cdn/v*/distributed-ai.js' >/dev/null; then
    node cdn/build.mjs
fi

http="${KWAAINET_HTTP:-127.0.0.1:8080}"
echo "demo site: http://$http/  (node state: http://$http/api/v1/state, metrics: http://$http/metrics)"
exec "$bin" start --host 127.0.0.1 --port "${KWAAINET_PORT:-4001}" --full --relay \
    --http "$http" --site-dir demo-site --cdn-dir dist/cdn --model "$model" "$@"
