#!/usr/bin/env bash
# Prepares everything the test VM needs (see README.md beside this file):
#   1. the Debian packages for QEMU, busybox and the tools (installed only if missing),
#   2. a Debian kernel that has ublk (trixie-backports by default, trixie's 6.12 as a
#      fallback or on request), fetched with a private apt state,
#   3. an initramfs: static busybox, the modules the tests need, scripts/vm/guest-init.sh.
# Everything is cached outside the repo in ${UBLK_VM_CACHE:-$HOME/.cache/ublk-vm}/<kernel>/.
# Progress goes to stderr, prefixed [vm-setup]; the last line on stdout is the cache dir
# of the kernel to boot (vmlinuz, initrd.gz, kernel-version).
#
# Environment:
#   UBLK_VM_KERNEL        backports (default) | trixie | an exact Debian kernel ABI name
#                         such as 7.2.12+deb13-amd64
#   UBLK_VM_CACHE         cache root (default $HOME/.cache/ublk-vm)
#   UBLK_VM_REFRESH       1: look for a newer kernel now, whatever the age of the last look
#   UBLK_VM_REFRESH_DAYS  look for a newer kernel when the last look is older (default 7)
#   UBLK_VM_APT_ARCHIVE   Debian archive URI (default: the one the machine's apt sources use)
#   UBLK_VM_EXTRA_MODULES more modules for the initramfs, space separated (loaded if present)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest_init="$here/guest-init.sh"

log() { printf '[vm-setup] %s\n' "$*" >&2; }
die() { printf '[vm-setup] error: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------------------
# Modules. Required ones must exist (as a .ko or built in); wanted ones are skipped with
# a warning when the kernel has neither. Their dependencies come from each .ko's modinfo.
required_modules=(9p 9pnet_virtio ublk_drv)
wanted_modules=(overlay configfs null_blk loop md-mod raid1 dm-mod dm-flakey dm-delay ext4 nbd)
read -r -a extra_modules <<<"${UBLK_VM_EXTRA_MODULES:-}"
# Parameters given to insmod. null_blk creates no device by itself: tests make their own
# through configfs (/sys/kernel/config/nullb) or by reloading it with other parameters.
declare -A module_params=([null_blk]="nr_devices=0")

host_packages=(qemu-system-x86 busybox-static cpio fio xz-utils e2fsprogs libclang-dev
  util-linux dmsetup mdadm debian-archive-keyring nbdkit nbd-client iproute2 curl)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

flavour=${UBLK_VM_KERNEL:-backports}
cache_root=${UBLK_VM_CACHE:-${HOME:-/root}/.cache/ublk-vm}
refresh_days=${UBLK_VM_REFRESH_DAYS:-7}

# --------------------------------------------------------------------------------------
install_host_packages() {
  local missing=() p status
  for p in "${host_packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run this as root once"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -q >&2
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2
}

# The Debian archive the machine's own apt sources use (not the security archive).
find_archive() {
  if [[ -n ${UBLK_VM_APT_ARCHIVE:-} ]]; then
    printf '%s\n' "${UBLK_VM_APT_ARCHIVE%/}"
    return
  fi
  local f key rest u uris=()
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    while read -r key rest; do
      if [[ ${key,,} == uris: ]]; then
        for u in $rest; do uris+=("$u"); done
      fi
    done <"$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    while read -r u; do uris+=("$u"); done < <(
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 }')
  done
  for u in "${uris[@]}"; do
    case $u in
      *security*|cdrom:*|file:*) continue ;;
    esac
    printf '%s\n' "${u%/}"
    return
  done
  return 1
}

apt_dir="$cache_root/apt"
apt_opts=()
setup_private_apt() {
  local archive
  archive=$(find_archive) || die "no Debian archive URI in /etc/apt/sources*; set UBLK_VM_APT_ARCHIVE"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  printf 'deb [signed-by=%s] %s %s main\n' \
    "$keyring" "$archive" trixie "$keyring" "$archive" trixie-backports >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o Dir::State::status=/dev/null -o Acquire::Languages=none
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false)
  [[ $(id -u) != 0 ]] || apt_opts+=(-o APT::Sandbox::User=root)
}
p_apt_get() { apt-get "${apt_opts[@]}" "$@"; }
p_apt_cache() { apt-cache "${apt_opts[@]}" "$@"; }

apt_updated=
private_apt_update() {
  [[ -z $apt_updated ]] || return 0
  setup_private_apt
  log "reading the trixie and trixie-backports package lists (private apt state)"
  # A suite that fails (e.g. no backports on this mirror) leaves the other one usable.
  p_apt_get -q update >/dev/null 2>"$apt_dir/update.log" ||
    log "apt-get update reported errors (see $apt_dir/update.log); going on with what it got"
  apt_updated=1
}

# Prints the kernel ABI name (e.g. 7.3.4+deb13-amd64) that suite $1's linux-image-amd64
# points to.
resolve_suite() {
  local suite=$1 ver img
  ver=$(p_apt_cache madison linux-image-amd64 2>/dev/null |
    awk -F'|' -v s="$suite" '!found { split($3, w, " "); if (w[2] == s "/main") { gsub(/ /, "", $2); print $2; found = 1 } }')
  if [[ -n $ver ]]; then
    img=$(p_apt_cache show "linux-image-amd64=$ver" 2>/dev/null |
      sed -n 's/^Depends: //p' | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*' | head -n1 || true)
    if [[ -n $img ]]; then
      printf '%s\n' "${img#linux-image-}"
      return
    fi
  fi
  if [[ $suite == trixie ]]; then
    # No meta package: the newest 6.12 image there is.
    img=$(p_apt_cache pkgnames linux-image-6.12. 2>/dev/null |
      grep -E '^linux-image-6\.12\.[0-9]+\+deb13-amd64$' | sort -V | tail -n1 || true)
    [[ -n $img ]] && { printf '%s\n' "${img#linux-image-}"; return; }
  fi
  return 1
}

# Downloads and unpacks kernel ABI $1 into $cache_root/$1.
fetch_kernel() {
  local abi=$1 img="linux-image-$1" deps p pkgs=() tmp root mods vmlinuz config
  private_apt_update
  deps=$(p_apt_cache show --no-all-versions "$img" 2>/dev/null | sed -n 's/^Depends: //p') ||
    true
  [[ -n $deps ]] || { log "no package $img"; return 1; }
  # Newer kernels split the image into binary (vmlinuz), modules and base (modules.builtin,
  # config); older ones have everything in linux-image-<abi>.
  local dep_names=() d
  IFS=',|' read -r -a dep_names <<<"$deps"
  for p in "linux-binary-$abi" "linux-modules-$abi" "linux-base-$abi"; do
    for d in "${dep_names[@]}"; do
      d=${d# }
      if [[ ${d%% *} == "$p" ]]; then pkgs+=("$p"); break; fi
    done
  done
  ((${#pkgs[@]})) || pkgs=("$img")
  mkdir -p "$cache_root"
  tmp=$(mktemp -d "$cache_root/.fetch.XXXXXX")
  log "downloading ${pkgs[*]}"
  if ! (cd "$tmp" && p_apt_get -q download "${pkgs[@]}" >/dev/null 2>"$tmp/download.log"); then
    cat "$tmp/download.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  root="$tmp/root"
  for p in "$tmp"/*.deb; do
    log "unpacking $(basename "$p")"
    dpkg-deb -x "$p" "$root"
  done
  mods=
  for p in "$root/usr/lib/modules/$abi" "$root/lib/modules/$abi"; do
    [[ -d $p ]] && { mods=$p; break; }
  done
  vmlinuz=
  for p in "$root/boot/vmlinuz-$abi" "$mods/vmlinuz"; do
    [[ -f $p ]] && { vmlinuz=$p; break; }
  done
  config=
  for p in "$root/boot/config-$abi" "$mods/config"; do
    [[ -f $p ]] && { config=$p; break; }
  done
  if [[ -z $mods || -z $vmlinuz ]]; then
    log "no vmlinuz or modules in ${pkgs[*]}"
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$tmp/out"
  mv "$vmlinuz" "$tmp/out/vmlinuz"
  [[ -z $config ]] || mv "$config" "$tmp/out/config"
  mv "$mods" "$tmp/out/modules"
  printf '%s\n' "${pkgs[@]}" >"$tmp/out/packages"
  printf '%s\n' "$abi" >"$tmp/out/kernel-version"
  rm -rf "${cache_root:?}/$abi"
  mv "$tmp/out" "$cache_root/$abi"
  rm -rf "$tmp"
}

# Makes sure kernel ABI $1 is in the cache.
ensure_kernel() {
  [[ -s $cache_root/$1/kernel-version && -f $cache_root/$1/vmlinuz ]] || fetch_kernel "$1"
}

# Sets $abi for the requested flavour, fetching when needed.
choose_kernel() {
  local suite pointer
  case $flavour in
    backports) suite=trixie-backports ;;
    trixie) suite=trixie ;;
    [0-9]*)
      abi=$flavour
      ensure_kernel "$abi" || die "cannot get kernel $abi"
      return ;;
    *) die "UBLK_VM_KERNEL must be backports, trixie or a kernel ABI name, not '$flavour'" ;;
  esac
  pointer="$cache_root/current-$flavour"
  if [[ ${UBLK_VM_REFRESH:-0} != 1 && -s $pointer ]] &&
    [[ -z $(find "$pointer" -mtime "+$refresh_days" 2>/dev/null) ]]; then
    abi=$(<"$pointer")
    if [[ -s $cache_root/$abi/kernel-version ]]; then return; fi
  fi
  private_apt_update
  if abi=$(resolve_suite "$suite") && ensure_kernel "$abi"; then
    printf '%s\n' "$abi" >"$pointer"
    return
  fi
  # Offline or the archive changed: the kernel used last time still does.
  if [[ -s $pointer ]]; then
    abi=$(<"$pointer")
    if [[ -s $cache_root/$abi/kernel-version ]]; then
      log "cannot resolve $suite now; using the cached $abi"
      touch "$pointer"
      return
    fi
  fi
  if [[ $suite == trixie-backports ]]; then
    log "no kernel from trixie-backports; falling back to trixie's"
    if abi=$(resolve_suite trixie) && ensure_kernel "$abi"; then
      printf '%s\n' "$abi" >"$pointer"
      return
    fi
  fi
  die "cannot get a kernel from $suite"
}

# --------------------------------------------------------------------------------------
# initramfs
declare -A ko_path=() builtin=() visited=()
load_order=()

norm() { printf '%s' "${1//-/_}"; }

index_modules() {
  local mods=$1 f name
  while IFS= read -r -d '' f; do
    name=${f##*/}
    name=${name%%.ko*}
    ko_path[$(norm "$name")]=$f
  done < <(find "$mods/kernel" -name '*.ko*' -print0)
  if [[ -f $mods/modules.builtin ]]; then
    while IFS= read -r f; do
      name=${f##*/}
      builtin[$(norm "${name%.ko}")]=1
    done <"$mods/modules.builtin"
  fi
}

ko_cat() {
  case $1 in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko) cat "$1" ;;
    *) die "unknown module format: $1" ;;
  esac
}

# The modules a .ko needs, from its .modinfo: the names in depends= (hard dependencies),
# then "soft:NAME" for each name in softdep= (read to the end: no SIGPIPE under pipefail).
ko_needs() {
  ko_cat "$1" | tr '\0' '\n' | LC_ALL=C awk '
    !dep && /^depends=/ { dep = 1; sub(/^depends=/, ""); n = split($0, d, ","); for (i = 1; i <= n; i++) print d[i] }
    /^softdep=/ { sub(/^softdep=/, ""); n = split($0, w, " "); for (i = 1; i <= n; i++) if (w[i] !~ /:$/) print "soft:" w[i] }'
}

# Adds module $1 and (first) what it needs to load_order. $2: required|wanted|dep|soft.
add_module() {
  local name need
  name=$(norm "$1")
  # A soft dependency may name an alias: crypto-crc32c is crc32c_generic (or crc32c).
  if [[ $2 == soft && -z ${ko_path[$name]:-} && $name == crypto_* ]]; then
    name=${name#crypto_}
    [[ -n ${ko_path[$name]:-} ]] || name=${name}_generic
  fi
  [[ -z ${visited[$name]:-} ]] || return 0
  visited[$name]=1
  if [[ -z ${ko_path[$name]:-} ]]; then
    [[ -n ${builtin[$name]:-} ]] && return 0
    case $2 in
      soft) return 0 ;;
      wanted) log "warning: kernel has no module $1; skipping it"; return 0 ;;
      *) die "kernel $abi has no module $1 (neither a .ko nor built in)" ;;
    esac
  fi
  while read -r need; do
    case $need in
      soft:*) add_module "${need#soft:}" soft ;;
      ?*) add_module "$need" dep ;;
    esac
  done < <(ko_needs "${ko_path[$name]}")
  load_order+=("$name")
}

build_initrd() {
  local kdir=$1 stage m f applet
  index_modules "$kdir/modules"
  for m in "${required_modules[@]}"; do add_module "$m" required; done
  for m in "${wanted_modules[@]}" "${extra_modules[@]}"; do add_module "$m" wanted; done

  stage=$(mktemp -d "$kdir/.initrd.XXXXXX")
  mkdir -p "$stage"/{bin,dev,proc,sys,host,rw,lib/modules}
  cp /bin/busybox "$stage/bin/busybox"
  for applet in $("$stage/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
  done
  # The kernel opens /dev/console for init before anything mounts devtmpfs.
  if [[ $(id -u) == 0 ]]; then mknod -m 600 "$stage/dev/console" c 5 1; fi
  install -m 755 "$guest_init" "$stage/init"
  : >"$stage/lib/modules/load.list"
  for m in "${load_order[@]}"; do
    f=${ko_path[$m]}
    ko_cat "$f" >"$stage/lib/modules/$m.ko"
    printf '%s %s\n' "$m.ko" "${module_params[$m]:-}" >>"$stage/lib/modules/load.list"
  done
  log "initramfs modules: ${load_order[*]}"
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet -R 0:0 | gzip -1) >"$kdir/.initrd.gz.tmp"
  mv "$kdir/.initrd.gz.tmp" "$kdir/initrd.gz"
  rm -rf "$stage"
}

# --------------------------------------------------------------------------------------
main() {
  [[ -f $guest_init ]] || die "missing $guest_init"
  install_host_packages
  mkdir -p "$cache_root"
  # One setup at a time per cache (parallel runs share it).
  exec {lock_fd}>"$cache_root/.lock"
  flock "$lock_fd"

  abi=
  choose_kernel
  local kdir="$cache_root/$abi" stamp
  # The initramfs depends on this script, the guest init and the module choice.
  stamp=$( { cat "${BASH_SOURCE[0]}" "$guest_init"; printf '%s\n' "${extra_modules[*]}"; } |
    sha256sum | cut -d' ' -f1)
  if [[ ! -f $kdir/initrd.gz || $(cat "$kdir/initrd.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "building the initramfs for $abi"
    build_initrd "$kdir"
    printf '%s\n' "$stamp" >"$kdir/initrd.stamp"
  fi
  log "kernel $abi ready in $kdir"
  printf '%s\n' "$kdir"
}

main "$@"
