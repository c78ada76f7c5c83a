#!/usr/bin/env bash
# Everything `npm test` runs: rustfmt, the addon build and its
# generated-file drift check, TypeScript checks, the host tests, then the
# real-device tests on a kernel with ublk (natively when this kernel has
# /dev/ublk-control, otherwise in the test VM), with clippy and the Rust
# unit tests running beside them at low priority (scripts/rust-checks.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
step() { printf '\n=== %s  [%s, %d s in]\n' "$*" "$(date +%T)" $((SECONDS - started)); }

# Every run's counts add up to the one plain total line that ends the output.
passed=0 failed=0 skipped=0
run_log=$(mktemp /tmp/ublk-ts-test-run.XXXXXX)
trap 'rm -f "$run_log"' EXIT
color=()
[[ -t 1 ]] && color=(--color)
# Runs an ava command with its output shown and kept, then adds its summary
# ("N tests passed", "N tests skipped", ...) to the totals.
ava_counted() {
  "$@" 2>&1 | tee "$run_log"
  local counts n kind
  # Colours (ava's --color on a terminal) and the serial console's \r out first.
  counts=$(sed -E 's/\x1b\[[0-9;]*m//g; s/\r//g' "$run_log" | sed -nE 's/^[[:space:]]*([0-9]+) tests? (passed|failed|skipped|todo)$/\1 \2/p')
  [[ $counts == *passed* ]] || { echo "no ava summary found in the output of: $*" >&2; exit 1; }
  while read -r n kind; do
    case $kind in
      passed) passed=$((passed + n)) ;;
      failed) failed=$((failed + n)) ;;
      *) skipped=$((skipped + n)) ;;
    esac
  done <<<"$counts"
}

step "dependencies"
bash scripts/ensure-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "build the addon and the TypeScript layer"
bash scripts/build.sh

# The journaled loop example (the device tests run this Rust-only
# target): built beside the TypeScript checks below, which use one core.
journaled_log=$(mktemp /tmp/ublk-ts-journaled-build.XXXXXX)
cargo build -p ublk-core --example journaled_loop --quiet >"$journaled_log" 2>&1 &
journaled_build=$!
trap 'kill "$journaled_build" 2>/dev/null || true; rm -f "$run_log" "$journaled_log"' EXIT

step "generated files are up to date"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  if ! git diff --exit-code -- index.js index.d.ts lib/wire.ts; then
    echo "index.js / index.d.ts / lib/wire.ts changed when rebuilt: commit the regenerated files" >&2
    exit 1
  fi
fi

step "the addon needs no glibc newer than the floor (objdump -T)"
bash scripts/check-glibc.sh

step "tsc: type-check everything, compile the tests and examples"
# The tests run as JavaScript under plain Node: tsx costs ~6 s per process
# in the VM's emulated CPU, and the device tests start dozens of processes.
npx tsc -p tsconfig.test.json

step "eslint (typescript-eslint)"
npx eslint .

step "npm pack the root and x86_64 packages, install them with no toolchain (.packed-install/)"
# The device test parts/packed-install.ts (in lifecycle.test.js) serves a device from there.
node scripts/pack.js

step "the journaled loop example, built in the background since the addon was"
if ! wait "$journaled_build"; then
  cat "$journaled_log"
  echo "building the journaled loop example failed (above)" >&2
  exit 1
fi
cat "$journaled_log"
rm -f "$journaled_log"

step "Rust checks (clippy, cargo test x20): started in the background at low priority, while the device tests run"
# The emulated VM keeps about two thirds of the two cores busy: the checks
# take the rest (nice 19: the VM's threads go first), and their output is
# shown when the device tests are done. A failure still fails this script.
rust_log=$(mktemp /tmp/ublk-ts-rust-checks.XXXXXX)
# In a session of their own, so that a failure before they are done stops
# every cargo and rustc of theirs, not only the script.
nice -n 19 setsid -w bash scripts/rust-checks.sh >"$rust_log" 2>&1 &
rust_checks=$!
trap 'kill -- "-$rust_checks" 2>/dev/null || true; rm -f "$run_log" "$rust_log"' EXIT

step "host tests (ava)"
ava_counted node_modules/.bin/ava "${color[@]}" __test__/*.test.js

step "real-device tests (ava)"
# ava directly, not through npx: npx alone takes 12 s to start in the VM.
device_tests=(node_modules/.bin/ava "${color[@]}" --concurrency=1 __test__/device/)
if [[ -e /dev/ublk-control ]]; then
  echo "this kernel has ublk: running natively on $(uname -r)"
  ava_counted "${device_tests[@]}"
else
  # The newest backports kernel has the fast paths (zero copy, batch IO);
  # Debian's stable 6.12 has the older behaviour the fallbacks are for.
  for kernel in trixie backports; do
    step "real-device tests (ava) in the VM, kernel: $kernel"
    ava_counted env UBLK_VM_KERNEL=$kernel bash scripts/vm/run.sh -- "${device_tests[@]}"
  done
fi

step "Rust checks (clippy, cargo test x20): their output"
if ! wait "$rust_checks"; then
  cat "$rust_log"
  echo "the Rust checks failed (above)" >&2
  exit 1
fi
head -n -1 "$rust_log"
passed=$((passed + $(tail -n 1 "$rust_log")))

# The last line: every test of every run (Rust unit tests once, host tests,
# device tests per kernel), in the plain form CI systems read.
printf '\nnpm test took %d s\n' $((SECONDS - started))
# ava exits non-zero on a failure, which ends this script; this is a second guard.
((failed == 0)) || { echo "$failed test(s) failed" >&2; exit 1; }
echo "total: $passed passed, $failed failed, $skipped skipped"
