#!/usr/bin/env bash
# The Rust checks of `npm test`: clippy, then the test binaries 20 times in
# a row. scripts/test.sh runs this at low priority while the device tests
# run in the VM (which leaves a third of the two cores idle); on its own:
# `bash scripts/rust-checks.sh`. The last line is the number of Rust tests
# that passed (in the first of the 20 runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0
echo "=== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "=== cargo test, 20 runs in a row (a race that fails one run in twenty shows here)"
# The test binaries themselves, 20 times (cargo's own start-up would cost
# more than the tests): what `cargo test` runs, from each crate's directory.
# Not the examples (--lib --bins --tests): the device tests are running
# target/debug/examples/journaled_loop, built before them with the
# features of ublk-core alone, and a workspace build would replace it.
mapfile -t test_bins < <(cargo test --workspace --quiet --no-run --lib --bins --tests --message-format=json |
  node -e '
    const lines = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l))
    for (const m of lines) {
      if (m.reason === "compiler-artifact" && m.profile.test && m.executable) {
        console.log(`${require("path").dirname(m.manifest_path)}\t${m.executable}`)
      }
    }')
((${#test_bins[@]} > 0)) || { echo "cargo built no test binaries" >&2; exit 1; }
# The crates have no doc tests; their run prints "0 passed", shown only if
# it fails, so that every "test result" line printed counts real tests.
if ! out=$(cargo test --workspace --quiet --doc 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
for run in $(seq 1 20); do
  for entry in "${test_bins[@]}"; do
    if ! out=$(cd "${entry%%$'\t'*}" && "${entry#*$'\t'}" -q 2>&1); then
      printf '%s\n' "$out" >&2
      echo "cargo test (${entry#*$'\t'}) failed on run $run of 20" >&2
      exit 1
    fi
    # The first run's results are shown, with their counts (binaries
    # without tests are left out: their "0 passed" would read as nothing run).
    if ((run == 1)) && [[ $out != *"running 0 tests"* ]]; then
      printf '%s\n' "$out"
      n=$(sed -nE 's/^test result: ok\. ([0-9]+) passed.*/\1/p' <<<"$out")
      passed=$((passed + ${n:-0}))
    fi
  done
done
echo "20 runs of ${#test_bins[@]} test binaries passed"
echo "$passed"
