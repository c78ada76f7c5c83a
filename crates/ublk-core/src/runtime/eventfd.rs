//! An eventfd that another thread writes to wake a queue thread, whose
//! ring has a read of it in flight.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::RwLock;

use crate::error::{Error, Result};

/// Closed by [`EventFd::close`] as soon as nobody waits on it any more,
/// rather than when its last owner goes (which a garbage collector may
/// put off indefinitely). The lock keeps a wake from writing to an fd
/// number closed and reused meanwhile.
pub struct EventFd(RwLock<Option<OwnedFd>>);

impl EventFd {
    pub fn new() -> Result<EventFd> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::from(std::io::Error::last_os_error()).context("eventfd"));
        }
        // SAFETY: fd was just created and is owned by nobody else.
        Ok(EventFd(RwLock::new(Some(unsafe {
            OwnedFd::from_raw_fd(fd)
        }))))
    }

    /// Makes the counter non-zero: a pending read completes. A no-op once
    /// closed.
    pub fn wake(&self) {
        let fd = self.0.read().unwrap();
        let Some(fd) = fd.as_ref() else { return };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd, which the
        // read lock keeps open. A full counter (EAGAIN) already means "wake
        // up".
        unsafe {
            libc::write(
                fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// The fd, for a read to wait on; -1 once closed (such a read fails
    /// with EBADF).
    pub fn raw_fd(&self) -> RawFd {
        self.0
            .read()
            .unwrap()
            .as_ref()
            .map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Closes the fd, once no thread waits on it. A read already in
    /// flight keeps the file open in the kernel until it completes.
    pub fn close(&self) {
        self.0.write().unwrap().take();
    }
}
