#!/usr/bin/env bash
# Fails if a built addon needs a newer glibc than the stated floor
# (scripts/native-target.sh): any symbol `objdump -T` shows with a GLIBC_
# version above it, and any strong undefined symbol with no version at all
# (a function the floor's glibc lacks links that way, and fails only when
# first called) except Node's own napi_* functions. Prints the offenders.
#   scripts/check-glibc.sh [FILE.node]   (default: the x86_64 gnu addon)
# OBJDUMP names another objdump (aarch64-linux-gnu-objdump for arm64).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/native-target.sh

file=${1:-ublk.linux-x64-gnu.node}
[[ -f $file ]] || { echo "check-glibc: $file not found (build it first)" >&2; exit 1; }
symbols=$(${OBJDUMP:-objdump} -T "$file")

newer=$(awk -v floor="$GLIBC_FLOOR" '
  function newer_than_floor(v,    a, b, n, m, i, x, y) {
    n = split(v, a, "."); m = split(floor, b, ".")
    for (i = 1; i <= (n > m ? n : m); i++) {
      x = (i <= n ? a[i] + 0 : 0); y = (i <= m ? b[i] + 0 : 0)
      if (x != y) return x > y
    }
    return 0
  }
  match($0, /GLIBC_[0-9]+(\.[0-9]+)+/) {
    v = substr($0, RSTART + 6, RLENGTH - 6)
    if (newer_than_floor(v)) print "  GLIBC_" v "  " $NF
  }' <<<"$symbols")
# Undefined, not weak ("w" in the flags column), no version, not Node's.
unversioned=$(awk '/\*UND\*/ && !/\(/ && !/GLIBC_/ && $2 != "w" && $NF !~ /^napi_/ { print "  " $NF }' <<<"$symbols")

max=$(grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' <<<"$symbols" | sort -uV | tail -n1)
status=0
if [[ -n $newer ]]; then
  echo "check-glibc: $file needs symbols newer than the floor GLIBC_$GLIBC_FLOOR:" >&2
  echo "$newer" >&2
  status=1
fi
if [[ -n $unversioned ]]; then
  echo "check-glibc: $file has undefined symbols with no version (missing from glibc $GLIBC_FLOOR; define a fallback in crates/ublk-node/src/glibc_compat.rs):" >&2
  echo "$unversioned" >&2
  status=1
fi
((status == 0)) && echo "check-glibc: $file needs at most $max (floor GLIBC_$GLIBC_FLOOR)"
exit $status
