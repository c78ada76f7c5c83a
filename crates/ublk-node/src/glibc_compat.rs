//! Functions the addon calls that glibc gained after the oldest glibc the
//! prebuilt binary supports (see `scripts/native-target.sh`).
//!
//! The addon is linked against glibc 2.17's symbols, so a function added
//! later stays an undefined symbol with no version, and a system whose
//! glibc lacks it fails when the function is first called ("symbol lookup
//! error"), long after the addon loaded. `scripts/check-glibc.sh` fails the
//! build on any such symbol; those the addon needs are defined here.
//!
//! The definitions are exported, and calls go through the dynamic linker,
//! which looks in the process's global scope first: where glibc has the
//! function, glibc's runs; where it has not, this one does. Each does what
//! glibc's does.

/// `gettid()` (glibc 2.30), which libublk calls on every queue thread.
#[no_mangle]
pub extern "C" fn gettid() -> libc::pid_t {
    // SAFETY: SYS_gettid takes no arguments, touches no memory and cannot
    // fail; its result is the caller's thread id, which fits a pid_t.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}
