//! A memory mapping of a file or of anonymous memory, and the few file
//! calls the stats region needs.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};

/// A memory mapping, unmapped on drop.
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory, only ever accessed through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The first byte, page aligned.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn new(fd: Option<&OwnedFd>, len: usize, writable: bool) -> Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a new mapping at an address the kernel picks; `raw` is
        // an open fd of at least `len` bytes, or -1 for anonymous memory.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, raw, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("map device stats"));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it past its owner.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(super) fn os_error(what: impl std::fmt::Display) -> Error {
    Error::from(std::io::Error::last_os_error()).context(what)
}

pub(super) fn open(path: &Path, flags: i32, mode: libc::mode_t) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("a path with a NUL byte"))?;
    // SAFETY: a valid C string; the fd returned is ours alone.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(os_error(format!("open {}", path.display())));
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn fstat(fd: &OwnedFd) -> Result<libc::stat> {
    // SAFETY: all zeros is a valid `stat`, filled in by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an fd we own and a `stat` to write.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os_error("stat device stats"));
    }
    Ok(st)
}
