#!/usr/bin/env bash
# The README's first command: builds what is needed, then runs the null
# RAID1 demo on a kernel with ublk (this one, or the test VM's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-deps.sh
bash scripts/build.sh >/dev/null
demo=(node --import tsx examples/raid1-demo.ts)
if [[ -e /dev/ublk-control ]]; then
  "${demo[@]}"
else
  echo "no ublk on this kernel ($(uname -r)): running the demo in the test VM"
  bash scripts/vm/run.sh -- "${demo[@]}"
fi
