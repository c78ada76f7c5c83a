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

# The addon is linked by zig against an old glibc's symbols: zig from PyPI
# (the ziglang wheel, run as `python3 -m ziglang`, which cargo-zigbuild
# finds by itself), cargo-zigbuild from crates.io. Pinned: a new zig can
# change what links.
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
if [[ $(python3 -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null) != "$ZIGLANG_VERSION" ]]; then
  echo "[deps] pip install ziglang==$ZIGLANG_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
fi
if ! cargo install --list | grep -qx "cargo-zigbuild v$CARGO_ZIGBUILD_VERSION:"; then
  echo "[deps] cargo install cargo-zigbuild@$CARGO_ZIGBUILD_VERSION (about 2 minutes)"
  cargo install --quiet --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
fi

if [[ ! -d node_modules/.bin || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "[deps] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
