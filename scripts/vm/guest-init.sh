#!/bin/sh
# shellcheck shell=dash
# /init of the test VM's initramfs (busybox sh, PID 1); setup.sh puts it there.
# Loads the modules, mounts the host's root read-only over 9p at /host with writable
# scratch file systems on top, runs the command that scripts/vm/run.sh left in the
# control share inside `chroot /host`, writes its exit code back there and powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

# The host's terminal (or log file) turns \n into \r\n where it needs to.
stty -onlcr 2>/dev/null

halt() {
  sync
  echo 0 >/proc/sys/kernel/printk # no "reboot: Power down"
  poweroff -f
  sleep 10
}
fail() {
  echo "[vm] error: $*"
  halt
}

while read -r ko params; do
  # shellcheck disable=SC2086 # params is a list of module parameters
  insmod "/lib/modules/$ko" $params || echo "[vm] warning: insmod $ko failed"
done </lib/modules/load.list

P9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /ctl
mount -t 9p -o $P9 ctl /ctl || fail "cannot mount the control share"
[ -f /ctl/cmd.sh ] || fail "no command in the control share"
out_dir=
tty=
dmesg=
overlays=
# shellcheck disable=SC1091 # written by run.sh
. /ctl/vm.conf

H=/host
mount -t 9p -o ro,$P9,cache=loose hostroot $H || fail "cannot mount the host's root over 9p"

# Writable layers over host directories; what is written stays in guest memory.
mount -t tmpfs -o mode=755 scratch /rw
n=0
overlay() {
  n=$((n + 1))
  mkdir -p "/rw/$n.upper" "/rw/$n.work"
  chmod "$(stat -c %a "$H$1/")" "/rw/$n.upper"
  mount -t overlay -o "lowerdir=$H$1/,upperdir=/rw/$n.upper,workdir=/rw/$n.work" overlay "$H$1/"
}
for d in $overlays; do
  [ "$d" = / ] && d=
  overlay "$d" || echo "[vm] warning: cannot make ${d:-/} writable"
done

mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $H/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $H/dev/shm
mount -t configfs configfs $H/sys/kernel/config 2>/dev/null
mount -t debugfs debugfs $H/sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $H/run

# /tmp, /var/tmp and /root: the host's files, writable; an empty tmpfs if overlayfs refuses.
for d in /tmp /var/tmp /root; do
  [ -d "$H$d" ] || continue
  if ! overlay $d 2>/dev/null; then
    mount -t tmpfs -o "mode=$(stat -c %a "$H$d")" tmpfs "$H$d"
  fi
done

mkdir -p $H/run/ublk-vm
mount --bind /ctl $H/run/ublk-vm
if [ -n "$out_dir" ]; then
  mkdir -p "$H$out_dir" 2>/dev/null
  mount -t 9p -o $P9 out "$H$out_dir" || fail "cannot mount the out share at $out_dir"
fi

if [ -c /dev/ublk-control ]; then u=present; else u=MISSING; fi
echo "[vm] guest kernel: $(uname -r), /dev/ublk-control: $u"
# Tells the host the boot got this far: a crash before here is worth a retry.
: >/ctl/started

run() {
  env -i /bin/chroot $H /bin/sh /run/ublk-vm/cmd.sh </dev/null
}
if [ -n "$tty" ]; then
  # The host's stdout is a terminal: so is the command's (the console).
  run
  rc=$?
else
  # Otherwise the command writes to a pipe. Processes it leaves behind may hold the
  # pipe open: cat gets 2 s to drain it after the command ends.
  mkfifo /rw/out
  cat /rw/out &
  cat_pid=$!
  run >/rw/out 2>&1
  rc=$?
  i=0
  while [ $i -lt 20 ]; do
    read -r _ _ state _ 2>/dev/null <"/proc/$cat_pid/stat" || break
    [ "$state" = Z ] && break
    sleep 0.1
    i=$((i + 1))
  done
  kill $cat_pid 2>/dev/null
  wait $cat_pid 2>/dev/null
fi
if [ -n "$dmesg" ]; then
  echo "[vm] ---- dmesg ----"
  dmesg
fi
echo "$rc" >/ctl/rc
halt
