#!/usr/bin/env bash
# Installs what building needs on a fresh Debian machine: libclang for
# libublk's bindgen, and the npm packages. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  echo "[deps] installing libclang-dev (bindgen needs it to build libublk)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

if [[ ! -d node_modules/.bin || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "[deps] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
