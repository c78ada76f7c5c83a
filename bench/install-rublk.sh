#!/usr/bin/env bash
# Installs rublk, the Rust ublk server the benchmark compares against, with
# cargo from crates.io into a cache outside the repository. Idempotent.
set -euo pipefail
root="${UBLK_BENCH_CACHE:-$HOME/.cache/ublk-bench}/rublk"
if [[ -x $root/bin/rublk ]]; then
  exit 0
fi
echo "[bench] cargo install rublk (a few minutes, once)"
cargo install --locked --quiet --root "$root" rublk
