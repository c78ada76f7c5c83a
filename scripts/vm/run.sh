#!/usr/bin/env bash
# Usage: scripts/vm/run.sh [--] CMD [ARG...]
# Boots the test VM (a Debian kernel with ublk, see README.md beside this file), runs CMD
# in it as root in the host's file system (read-only, with writable scratch space) and in
# the caller's working directory, streams its output, powers off and exits with CMD's
# exit code: 124 if the VM timed out, 125 if it stopped without an exit code.
#
# Environment: UBLK_VM_KERNEL, UBLK_VM_CACHE, ... (setup.sh), and
#   UBLK_VM_TIMEOUT  wall-clock seconds before qemu is killed (default 1500)
#   UBLK_VM_BOOT_TIMEOUT  seconds a boot may take to start CMD before it is tried again
#                    (default 120; a boot takes 7 to 10 s under TCG)
#   UBLK_VM_MEM      guest memory (default 4G)      UBLK_VM_CPUS  guest CPUs (default 2)
#   UBLK_VM_ACCEL    kvm | tcg (default: kvm when /dev/kvm boots a guest, else tcg)
#   UBLK_VM_OUT_DIR  a host directory shared writable at the same path in the guest
#   UBLK_VM_OVERLAY  host directories (space separated; / for all) made writable in the
#                    guest; what is written there is dropped at power-off
#   UBLK_VM_ENV      more variable names to pass to CMD (space separated)
#   UBLK_VM_DMESG    1: print the guest's kernel log after CMD
#   UBLK_VM_APPEND   more kernel command line arguments
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ${1:-} == -- ]]; then shift; fi
if (($# == 0)); then
  echo "usage: $0 [--] CMD [ARG...]" >&2
  exit 2
fi

timeout_s=${UBLK_VM_TIMEOUT:-1500}
[[ $timeout_s =~ ^[0-9]+$ ]] || { echo "[vm] error: UBLK_VM_TIMEOUT must be seconds" >&2; exit 2; }
boot_timeout_s=${UBLK_VM_BOOT_TIMEOUT:-120}
[[ $boot_timeout_s =~ ^[0-9]+$ ]] || { echo "[vm] error: UBLK_VM_BOOT_TIMEOUT must be seconds" >&2; exit 2; }

kdir=$(bash "$here/setup.sh" | tail -n1)
[[ -f $kdir/vmlinuz && -f $kdir/initrd.gz ]] || { echo "[vm] error: setup.sh gave no kernel" >&2; exit 1; }
abi=$(<"$kdir/kernel-version")

# Single-quotes a word for sh.
q() { local s=$1; printf "'%s'" "${s//\'/\'\\\'\'}"; }

ctl=$(mktemp -d "${TMPDIR:-/tmp}/ublk-vm.XXXXXX")
qemu_pid=
sleep_pid=
watch_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [[ -n $qemu_pid ]]; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  if [[ -n $sleep_pid ]]; then kill "$sleep_pid" 2>/dev/null || true; fi
  if [[ -n $watch_pid ]]; then kill "$watch_pid" 2>/dev/null || true; fi
  rm -rf "$ctl"
}
trap cleanup EXIT
trap 'echo "[vm] interrupted" >&2; exit 130' INT
trap 'echo "[vm] terminated" >&2; exit 143' TERM

# PATH: the host's node first, then the usual directories, then the caller's PATH.
path=
add_path() {
  case ":$path:" in *":$1:"*) ;; *) path=${path:+$path:}$1 ;; esac
}
if node=$(command -v node 2>/dev/null); then add_path "$(dirname "$node")"; fi
for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do add_path "$d"; done
IFS=: read -r -a host_path <<<"${PATH:-}"
for d in "${host_path[@]}"; do [[ $d == /* ]] && add_path "$d"; done

host_tty=
if [[ -t 1 ]]; then host_tty=1; fi
read -r -a extra_env <<<"${UBLK_VM_ENV:-}"
{
  echo "# written by scripts/vm/run.sh"
  echo "export PATH=$(q "$path")"
  echo "export HOME=/root"
  if [[ -n $host_tty ]]; then echo "export TERM=$(q "${TERM:-vt100}")"; else echo "export TERM=dumb"; fi
  echo "export UBLK_VM_GUEST=1"
  for name in $(compgen -e); do
    pass=
    case $name in
      UBLK_*|AVA_*|CI|FORCE_COLOR|NO_COLOR|NODE_OPTIONS|LANG|LC_*|TZ) pass=1 ;;
    esac
    for e in "${extra_env[@]}"; do [[ $name == "$e" ]] && pass=1; done
    if [[ -n $pass ]]; then echo "export $name=$(q "${!name}")"; fi
  done
  echo "cd $(q "$PWD") || exit 126"
  printf 'exec'
  for a in "$@"; do printf ' %s' "$(q "$a")"; done
  printf '\n'
} >"$ctl/cmd.sh"

out_dir=${UBLK_VM_OUT_DIR:-}
if [[ -n $out_dir ]]; then
  mkdir -p "$out_dir"
  out_dir=$(cd "$out_dir" && pwd -P)
fi
# Host directories made writable in the guest (writes are dropped at power-off).
overlays=()
read -r -a wanted_overlays <<<"${UBLK_VM_OVERLAY:-}"
for d in "${wanted_overlays[@]}"; do
  d=$(cd "$d" && pwd -P) || { echo "[vm] error: UBLK_VM_OVERLAY: no directory $d" >&2; exit 2; }
  overlays+=("$d")
done
{
  echo "out_dir=$(q "$out_dir")"
  echo "overlays=$(q "${overlays[*]}")"
  echo "tty=$host_tty"
  if [[ ${UBLK_VM_DMESG:-0} == 1 ]]; then echo "dmesg=1"; else echo "dmesg="; fi
} >"$ctl/vm.conf"

# KVM only where it really boots a guest: some machines have a /dev/kvm whose guests die
# at once ("KVM internal error"), so a short probe decides, once per host boot.
kvm_works() {
  [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
  local probe key status=0
  probe="$(dirname "$kdir")/kvm-probe"
  key="$(uname -r) $(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)"
  if [[ -f $probe && $(head -n1 "$probe") == "$key" ]]; then
    [[ $(tail -n1 "$probe") == ok ]]
    return
  fi
  timeout -k 2 10 qemu-system-x86_64 -M q35 -accel kvm -cpu max -m 512M -nographic \
    -no-reboot -nic none "${firmware[@]}" -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=0 rdinit=/bin/poweroff -- -f" \
    </dev/null >/dev/null 2>&1 || status=$?
  if ((status == 0)); then
    printf '%s\nok\n' "$key" >"$probe"
  else
    printf '%s\nbroken\n' "$key" >"$probe"
    echo "[vm] /dev/kvm does not boot a guest here; using tcg" >&2
  fi
  return "$status"
}

# qboot (from qemu-system-data) boots at once and prints nothing; SeaBIOS would clear
# the terminal.
firmware=()
if [[ -f /usr/share/qemu/qboot.rom ]]; then firmware=(-bios qboot.rom); fi

case ${UBLK_VM_ACCEL:-} in
  kvm) accel=(-accel kvm) ;;
  tcg) accel=(-accel tcg) ;;
  '') if kvm_works; then accel=(-accel kvm); else accel=(-accel tcg); fi ;;
  *) echo "[vm] error: UBLK_VM_ACCEL must be kvm or tcg" >&2; exit 2 ;;
esac

virtfs() { printf 'local,path=%s,mount_tag=%s,security_model=none%s' "${1//,/,,}" "$2" "${3:-}"; }
qemu=(qemu-system-x86_64 -M q35 "${accel[@]}" -cpu max -smp "${UBLK_VM_CPUS:-2}"
  -m "${UBLK_VM_MEM:-4G}" -nographic -no-reboot -nic none "${firmware[@]}"
  -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.gz"
  -append "console=ttyS0 panic=-1 quiet loglevel=3 ${UBLK_VM_APPEND:-}"
  -virtfs "$(virtfs / hostroot ,readonly=on,multidevs=remap)"
  -virtfs "$(virtfs "$ctl" ctl)")
if [[ -n $out_dir ]]; then qemu+=(-virtfs "$(virtfs "$out_dir" out)"); fi

# Stops qemu: asks, then kills.
stop_qemu() {
  kill "$qemu_pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$qemu_pid" 2>/dev/null || true
}

# One boot, run in the background; sets timed_out, boot_hung and qemu_status.
boot() {
  echo "[vm] booting $abi (${accel[1]}), timeout ${timeout_s}s" >&2
  start=$SECONDS
  # stdin is not the terminal: qemu leaves it alone and Ctrl-C stops qemu.
  "${qemu[@]}" </dev/null &
  qemu_pid=$!
  sleep "$timeout_s" &
  sleep_pid=$!
  # Ends with 0 once the guest started the command, 1 if it has not within the boot timeout.
  (
    for _ in $(seq "$boot_timeout_s"); do
      [[ -e $ctl/started ]] && exit 0
      sleep 1
    done
    exit 1
  ) &
  watch_pid=$!

  timed_out=
  boot_hung=
  while :; do
    done_pid=
    watch_status=0
    wait -n -p done_pid "$qemu_pid" "$sleep_pid" ${watch_pid:+"$watch_pid"} || watch_status=$?
    if [[ $done_pid == "$watch_pid" ]]; then
      watch_pid=
      if ((watch_status != 0)); then
        boot_hung=1
        stop_qemu
        break
      fi
      continue
    fi
    if [[ $done_pid == "$sleep_pid" ]]; then
      sleep_pid=
      timed_out=1
      stop_qemu
    fi
    break
  done
  if [[ -n $watch_pid ]]; then
    kill "$watch_pid" 2>/dev/null || true
    watch_pid=
  fi
  qemu_status=0
  wait "$qemu_pid" || qemu_status=$?
  qemu_pid=
  if [[ -n $sleep_pid ]]; then
    kill "$sleep_pid" 2>/dev/null || true
    sleep_pid=
  fi
}

# Under TCG a guest kernel has been seen to oops in early boot, before any
# of the command ran, and to hang there; such a boot is tried once more.
for attempt in 1 2; do
  rm -f "$ctl/started" "$ctl/rc"
  boot
  if [[ -n $timed_out || -s $ctl/rc || -e $ctl/started || $attempt == 2 ]]; then break; fi
  if [[ -n $boot_hung ]]; then
    echo "[vm] the guest had not started the command after ${boot_timeout_s}s; booting again" >&2
  else
    echo "[vm] the guest died while booting (qemu status $qemu_status); booting again" >&2
  fi
done
if [[ -n $boot_hung && ! -e $ctl/started ]]; then
  echo "[vm] error: the guest did not start the command within ${boot_timeout_s}s, twice" >&2
  exit 125
fi

if [[ -n $timed_out ]]; then
  echo "[vm] error: timed out after ${timeout_s}s (UBLK_VM_TIMEOUT); killed qemu" >&2
  exit 124
fi
if [[ ! -s $ctl/rc ]]; then
  echo "[vm] error: the VM stopped after $((SECONDS - start))s without an exit code" \
    "(kernel panic or crash?); qemu exit status $qemu_status" >&2
  exit 125
fi
rc=$(<"$ctl/rc")
exit "$rc"
