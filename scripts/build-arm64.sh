#!/usr/bin/env bash
# Builds the aarch64 glibc addon (ublk.linux-arm64-gnu.node) on this x86_64
# machine, from package registries only. The rustup toolchain here has no
# standard library for aarch64, but Debian has one: its rustc-web compiler
# (an x86_64 rustc) ships its standard library as libstd-rust-web-dev for
# every architecture (Multi-Arch: same). Those packages, and the LLVM the
# compiler links, are fetched with `apt-get download` into a private apt
# state and unpacked under ~/.cache (nothing is installed, the machine's
# apt configuration is not changed), and cargo runs that rustc; zig links,
# as for the x86_64 build, for the glibc floor of scripts/native-target.sh.
#
# Not part of `npm test` (a first build takes about 5 minutes on 2 cores,
# and nothing here can run an arm64 Node); the hosted workflow
# (.github/workflows/release.yml) builds the published arm64 packages.
#   UBLK_DEBIAN_RUST_CACHE   where the unpacked compiler goes
#                            (default ~/.cache/ublk-debian-rust)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/native-target.sh
# cargo-zigbuild comes from PyPI (scripts/ensure-deps.sh): pip's scripts directory.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
bash scripts/ensure-deps.sh

cache=${UBLK_DEBIAN_RUST_CACHE:-$HOME/.cache/ublk-debian-rust}
apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
# The machine's own apt sources, with lists of its own that also hold arm64.
apt_opts=(-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root
  -o APT::Architectures::=amd64 -o APT::Architectures::=arm64)
log() { echo "[build-arm64] $*" >&2; }

if [[ -z $(find "$apt_dir/lists" -maxdepth 1 -name '*Packages*' -mtime -7 2>/dev/null) ]]; then
  log "apt-get update (private lists, amd64 and arm64)"
  apt-get "${apt_opts[@]}" update -qq
fi
version=$(apt-cache "${apt_opts[@]}" policy rustc-web:amd64 | sed -n 's/^ *Candidate: //p')
[[ -n $version && $version != "(none)" ]] || { log "Debian has no rustc-web here"; exit 1; }
root=$cache/$version
if [[ ! -x $root/usr/bin/rustc ]]; then
  # libstd-rust-web-dev depends on libstd-rust-web-<x.y>, which depends on libllvm<N>.
  std_lib=$(apt-cache "${apt_opts[@]}" show "libstd-rust-web-dev:amd64=$version" |
    sed -n 's/^Depends:.*\(libstd-rust-web-[0-9.]*\) .*/\1/p' | head -n1)
  llvm=$(apt-cache "${apt_opts[@]}" show "$std_lib:amd64=$version" |
    sed -n 's/^Depends:.*\(libllvm[0-9]*\).*/\1/p' | head -n1)
  log "downloading rustc-web $version, its standard library for amd64 and arm64, and $llvm"
  rm -rf "$apt_dir/debs" && mkdir -p "$apt_dir/debs"
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download -qq \
    "rustc-web:amd64=$version" "$std_lib:amd64=$version" \
    "libstd-rust-web-dev:amd64=$version" "libstd-rust-web-dev:arm64=$version" "$llvm:amd64")
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  for deb in "$apt_dir"/debs/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
  mv "$root.tmp" "$root"
fi
rustc_wrapper=$root/rustc
cat >"$rustc_wrapper" <<EOF
#!/bin/sh
LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu exec $root/usr/bin/rustc "\$@"
EOF
chmod +x "$rustc_wrapper"
"$rustc_wrapper" --print target-libdir --target aarch64-unknown-linux-gnu | grep -q . ||
  { log "rustc-web $version has no aarch64 standard library in $root"; exit 1; }
log "$("$rustc_wrapper" --version), building aarch64-unknown-linux-gnu.$GLIBC_FLOOR"

# Its own target directory: another compiler's artifacts must not mix with
# the x86_64 build's. The generated index.js and index.d.ts go there too.
out=target/arm64-gnu-out
mkdir -p "$out"
RUSTC=$rustc_wrapper CARGO_TARGET_DIR=target/arm64-gnu \
  npx napi build --platform --release --cross-compile --target "aarch64-unknown-linux-gnu.$GLIBC_FLOOR" \
  --manifest-path crates/ublk-node/Cargo.toml \
  --package-json-path package.json \
  --output-dir "$out"
cp "$out/ublk.linux-arm64-gnu.node" .
bash scripts/check-glibc.sh ublk.linux-arm64-gnu.node
file ublk.linux-arm64-gnu.node
