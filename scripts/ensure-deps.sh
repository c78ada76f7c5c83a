#!/usr/bin/env bash
# Installs what building needs on a fresh Debian machine: libclang for
# libublk's bindgen, zig and cargo-zigbuild for the addon's cross build to
# the glibc floor (scripts/build.sh), and the npm packages. Idempotent and
# quiet when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  echo "[deps] installing libclang-dev (bindgen needs it to build libublk)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

# The addon is linked by zig against an old glibc's symbols: zig and
# cargo-zigbuild both from PyPI (the ziglang wheel, run as `python3 -m
# ziglang`, which cargo-zigbuild finds by itself; cargo-zigbuild's wheel is
# its prebuilt binary, where `cargo install` would spend two minutes
# compiling it). Pinned: a new zig can change what links. scripts/build.sh
# puts pip's scripts directory on PATH.
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
pip_version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
wanted=()
[[ $(pip_version ziglang) == "$ZIGLANG_VERSION" ]] || wanted+=("ziglang==$ZIGLANG_VERSION")
[[ $(pip_version cargo-zigbuild) == "$CARGO_ZIGBUILD_VERSION" ]] || wanted+=("cargo-zigbuild==$CARGO_ZIGBUILD_VERSION")
if ((${#wanted[@]} > 0)); then
  echo "[deps] pip install ${wanted[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
fi

if [[ ! -d node_modules/.bin || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "[deps] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
