//! Node.js bindings over `ublk-core`: argument checks and conversions only.
//! Errors reach JavaScript as `"<ERRNO>: <message>"`, which the TypeScript
//! layer turns into errors with an errno-style `code`.

// `clippy --all-targets` still checks a `cfg(test)` build, where
// napi-derive registers no exports and every exported item looks unused.
#![cfg_attr(test, allow(dead_code))]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod bridge;
mod control;
mod device;
mod errors;
mod gate;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc_compat;
mod handover;
mod host;
mod info;
mod log_forward;
mod recovery;
mod stats;
mod synthetic;
mod workers;
