#!/usr/bin/env bash
# Builds the native addon (release), writes the TypeScript generated from
# the Rust core (lib/wire.ts), and compiles the TypeScript layer.
#
# The addon is the one the x86_64 glibc package ships: cross-compiled the
# napi-rs way (`--cross-compile`, i.e. cargo-zigbuild with zig as the C
# compiler and linker) for the glibc floor in scripts/native-target.sh, so
# it loads on any glibc from that one on. scripts/ensure-deps.sh installs
# zig (PyPI's ziglang) and cargo-zigbuild.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/native-target.sh
# cargo-zigbuild comes from PyPI (scripts/ensure-deps.sh): pip's scripts directory.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

if ! command -v cargo-zigbuild >/dev/null || ! { command -v zig >/dev/null || python3 -m ziglang version >/dev/null 2>&1; }; then
  echo "build: cargo-zigbuild and zig are needed (bash scripts/ensure-deps.sh installs them)" >&2
  exit 1
fi

cargo run --quiet -p ublk-codegen -- .
npx napi build --platform --release --cross-compile --target "$NATIVE_TARGET" \
  --manifest-path crates/ublk-node/Cargo.toml \
  --package-json-path package.json \
  --output-dir .
npx tsc -p tsconfig.build.json
