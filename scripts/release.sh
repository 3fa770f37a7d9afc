#!/usr/bin/env bash
# `npm run release`: the `kwaainet` binaries for every target this machine can build, in
# release archives with a SHA256SUMS file, under dist/release/.
#
#   bash scripts/release.sh                 every target whose toolchain is installed
#   bash scripts/release.sh x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
#   bash scripts/release.sh --list          the targets and what each needs
#
# Per target: `kwaainet-<version>-<target>.tar.gz` (`.zip` for Windows) holding the binary,
# README.md, the licences, a sample config (kwaainet.toml), the systemd unit and the launchd
# plist. The x86-64 Linux target also gets `kwaainet-<version>-<target>-lean.tar.gz`, built
# without the GPU stack (`--no-default-features`); the cross targets are lean builds (their
# GPU backends are not built here). Binaries come from the `dist` profile (stripped,
# LTO, size-optimized but for the engine: Cargo.toml), built in $CARGO_TARGET_DIR like every other build.
#
# Cross toolchains (Debian): gcc-aarch64-linux-gnu + libc6-dev-arm64-cross for aarch64,
# gcc-mingw-w64-x86-64 for Windows, and the Rust targets (`rustup target add ...`).
# `scripts/setup.sh --cross` installs them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=x86_64-unknown-linux-gnu
ALL=("$HOST" aarch64-unknown-linux-gnu x86_64-pc-windows-gnu)
OUT=dist/release
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kwaainet/target}"

version() {
    sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml
}

# The C cross compiler a target links with (empty for the host).
linker_for() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu-gcc ;;
        x86_64-pc-windows-gnu) echo x86_64-w64-mingw32-gcc ;;
        *) echo "" ;;
    esac
}

can_build() {
    local t=$1 cc
    cc=$(linker_for "$t")
    [ -z "$cc" ] || command -v "$cc" >/dev/null || return 1
    rustup target list --installed 2>/dev/null | grep -qx "$t"
}

if [ "${1:-}" = "--list" ]; then
    for t in "${ALL[@]}"; do
        if can_build "$t"; then s="ready"; else s="needs $(linker_for "$t") and \`rustup target add $t\`"; fi
        printf '%-28s %s\n' "$t" "$s"
    done
    exit 0
fi

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    for t in "${ALL[@]}"; do
        if can_build "$t"; then TARGETS+=("$t"); else echo "skipping $t: no toolchain (see --list)"; fi
    done
fi

VERSION=$(version)
[ -n "$VERSION" ] || { echo "no workspace version in Cargo.toml" >&2; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT"/kwaainet-"$VERSION"-* "$OUT/SHA256SUMS"

# build TARGET SUFFIX CARGO_FLAGS...: builds, stages and archives one binary.
package() {
    local target=$1 suffix=$2
    shift 2
    local name="kwaainet-$VERSION-$target$suffix"
    echo "==> $name"
    local start=$SECONDS
    cargo build --locked --profile dist -p kwaainet --target "$target" "$@"
    local exe=kwaainet
    case "$target" in *windows*) exe=kwaainet.exe ;; esac
    local bin="$CARGO_TARGET_DIR/$target/dist/$exe"
    local stage
    stage=$(mktemp -d)
    mkdir "$stage/$name"
    cp "$bin" README.md LICENSE-MIT LICENSE-APACHE packaging/kwaainet.toml \
        packaging/kwaainet.service packaging/ai.kwaai.kwaainet.plist "$stage/$name/"
    case "$target" in
        *windows*) (cd "$stage" && python3 -m zipfile -c "$OLDPWD/$OUT/$name.zip" "$name") ;;
        *) tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name \
            -czf "$OUT/$name.tar.gz" "$name" ;;
    esac
    rm -rf "$stage"
    printf '    %s: %s bytes stripped, built in %ss\n' "$exe" "$(stat -c %s "$bin")" $((SECONDS - start))
}

for t in "${TARGETS[@]}"; do
    case "$t" in
        "$HOST")
            package "$t" ""
            package "$t" -lean --no-default-features
            ;;
        *) package "$t" "" --no-default-features ;;
    esac
done

(cd "$OUT" && sha256sum kwaainet-"$VERSION"-* >SHA256SUMS)
echo "==> $OUT"
cat "$OUT/SHA256SUMS"
