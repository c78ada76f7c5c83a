#!/usr/bin/env bash
# `npm run bench [-- --json] [-- --quick]`: builds, then runs every system
# side by side on a kernel with ublk (this one, or the test VM's). With
# --json, stdout is one JSON object and everything else goes to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

json=false
for a in "$@"; do [[ $a == --json ]] && json=true; done

{
  bash scripts/ensure-deps.sh
  bash scripts/build.sh >/dev/null
  bash bench/install-rublk.sh || echo "rublk could not be installed; benchmarking without it"
} >&2

rublk_bin="${UBLK_BENCH_CACHE:-$HOME/.cache/ublk-bench}/rublk/bin/rublk"
out=$(mktemp -d "${TMPDIR:-/tmp}/ublk-bench.XXXXXX")
trap 'rm -rf "$out"' EXIT
cmd=(node --import tsx bench/run.ts --out "$out/result.json" --rublk "$rublk_bin" "$@")

run() {
  if [[ -e /dev/ublk-control ]]; then
    "${cmd[@]}"
  else
    UBLK_VM_OUT_DIR=$out UBLK_VM_TIMEOUT=${UBLK_VM_TIMEOUT:-3000} bash scripts/vm/run.sh -- "${cmd[@]}"
  fi
}

# The dispatch path alone runs on this host: it needs no kernel.
bridge_json=$(node --import tsx bench/bridge.ts --json)

if $json; then
  run >&2
  node -e '
    const fs = require("fs")
    const devices = JSON.parse(fs.readFileSync(process.argv[1], "utf8"))
    const bridge = JSON.parse(process.argv[2])
    devices.bridge = bridge
    devices.ratios.bridge_batched_vs_per_io_call = bridge.batched_vs_per_io_call
    console.log(JSON.stringify(devices, null, 2))
  ' "$out/result.json" "$bridge_json"
else
  node --import tsx bench/bridge.ts
  run
fi
