#!/usr/bin/env bash
# Builds the native addon (release), writes the TypeScript generated from
# the Rust core (lib/wire.ts), and compiles the TypeScript layer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo run --quiet -p ublk-codegen -- .
npx napi build --platform --release \
  --manifest-path crates/ublk-node/Cargo.toml \
  --package-json-path package.json \
  --output-dir .
npx tsc -p tsconfig.build.json
