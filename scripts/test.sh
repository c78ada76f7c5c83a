#!/usr/bin/env bash
# Everything `npm test` runs, in order: Rust checks and unit tests, the
# addon build and its generated-file drift check, TypeScript checks, the
# host tests, then the real-device tests on a kernel with ublk (natively
# when this kernel has /dev/ublk-control, otherwise in the test VM).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
bash scripts/ensure-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test, 20 runs in a row (a race that fails one run in twenty shows here)"
cargo test --workspace --quiet --no-run
for run in $(seq 1 20); do
  if ! out=$(cargo test --workspace --quiet 2>&1); then
    printf '%s\n' "$out" >&2
    echo "cargo test failed on run $run of 20" >&2
    exit 1
  fi
done
echo "20 runs passed"
# The device tests run this Rust-only target (the core's batch hook).
cargo build -p ublk-core --example journaled_loop --quiet

step "build the addon and the TypeScript layer"
bash scripts/build.sh

step "generated files are up to date"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  if ! git diff --exit-code -- index.js index.d.ts lib/wire.ts; then
    echo "index.js / index.d.ts / lib/wire.ts changed when rebuilt: commit the regenerated files" >&2
    exit 1
  fi
fi

step "tsc --noEmit"
npx tsc --noEmit -p tsconfig.json

step "host tests (ava)"
npx ava __test__/*.test.ts

step "real-device tests (ava)"
device_tests=(npx ava --concurrency=1 __test__/device/)
if [[ -e /dev/ublk-control ]]; then
  echo "this kernel has ublk: running natively on $(uname -r)"
  "${device_tests[@]}"
else
  # The newest backports kernel has the fast paths (zero copy, batch IO);
  # Debian's stable 6.12 has the older behaviour the fallbacks are for.
  for kernel in backports trixie; do
    step "real-device tests (ava) in the VM, kernel: $kernel"
    UBLK_VM_KERNEL=$kernel bash scripts/vm/run.sh -- "${device_tests[@]}"
  done
fi
