#!/bin/sh
# shellcheck shell=dash
# /init of the test VM's initramfs (busybox sh, PID 1); setup.sh puts it there.
# Loads the modules, mounts the host's root over 9p at /host with writable scratch
# file systems on top, runs the command that scripts/vm/run.sh left in the control share
# inside `chroot /host`, writes its exit code back to the share and powers off.
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

H=/host
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot $H ||
  fail "cannot mount the host's root over 9p"

mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $H/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $H/dev/shm
mount -t configfs configfs $H/sys/kernel/config 2>/dev/null
mount -t debugfs debugfs $H/sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $H/run

# /tmp, /var/tmp and /root: the host's files, writable, with the writes kept in guest
# memory (overlayfs on tmpfs); plain tmpfs if overlayfs refuses.
mount -t tmpfs -o mode=755 scratch /rw
for d in tmp var/tmp root; do
  [ -d "$H/$d" ] || continue
  u=/rw/$(echo "$d" | tr / _)
  mkdir -p "$u.upper" "$u.work"
  chmod "$(stat -c %a "$H/$d")" "$u.upper"
  if ! mount -t overlay -o "lowerdir=$H/$d,upperdir=$u.upper,workdir=$u.work" overlay "$H/$d" 2>/dev/null; then
    mount -t tmpfs -o "mode=$(stat -c %a "$H/$d")" tmpfs "$H/$d"
  fi
done

C=$H/run/ublk-vm
mkdir -p $C
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ctl $C ||
  fail "cannot mount the control share"
[ -f $C/cmd.sh ] || fail "no command in the control share"

out_dir=
tty=
dmesg=
# shellcheck disable=SC1091 # written by run.sh: out_dir=..., tty=..., dmesg=...
. $C/vm.conf
if [ -n "$out_dir" ]; then
  mkdir -p "$H$out_dir" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out "$H$out_dir" ||
    fail "cannot mount the out share at $out_dir"
fi

if [ -c /dev/ublk-control ]; then u=present; else u=MISSING; fi
echo "[vm] guest kernel: $(uname -r), /dev/ublk-control: $u"

# stdout is the console (a tty) only when the host's stdout is a terminal too.
set -o pipefail
if [ -n "$tty" ]; then
  env -i /bin/chroot $H /bin/sh /run/ublk-vm/cmd.sh </dev/null
else
  env -i /bin/chroot $H /bin/sh /run/ublk-vm/cmd.sh </dev/null 2>&1 | cat
fi
rc=$?
if [ -n "$dmesg" ]; then
  echo "[vm] ---- dmesg ----"
  dmesg
fi
echo "$rc" >$C/rc
halt
