# Sourced by the build, the glibc check and the CI workflow: the glibc the
# x86_64 (and aarch64) gnu binaries are built for. Anything from glibc
# GLIBC_FLOOR on runs them (2.17: CentOS/RHEL 7, Debian 8, Ubuntu 14.04).
# `napi build --cross-compile` hands the suffixed triple to cargo-zigbuild,
# which links against zig's stubs of that glibc version.
GLIBC_FLOOR=2.17
NATIVE_TARGET="x86_64-unknown-linux-gnu.$GLIBC_FLOOR"
