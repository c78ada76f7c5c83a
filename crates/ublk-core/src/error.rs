//! One error type for the whole crate: an errno plus a sentence for people.
//!
//! Storage users reason in errnos (`EINVAL`, `ENODEV`, `EACCES`...), and the
//! TypeScript layer exposes them as `err.code`, so every failure carries one.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Error {
            errno: errno.abs(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }

    /// The positive errno value, e.g. 22 for `EINVAL`.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The errno's symbolic name, e.g. `"EINVAL"`.
    pub fn code(&self) -> &'static str {
        errno_name(self.errno)
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done when the error happened.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            errno: self.errno,
            message: format!("{what}: {}", self.message),
        }
    }

    /// Wraps a libublk error, naming the operation that failed.
    pub(crate) fn from_ublk(what: impl fmt::Display, err: libublk::UblkError) -> Self {
        let errno = match &err {
            libublk::UblkError::OtherError(e) | libublk::UblkError::UringIOError(e) => e.abs(),
            libublk::UblkError::IOError(e) => e.raw_os_error().unwrap_or(libc::EIO),
            libublk::UblkError::InvalidVal => libc::EINVAL,
            libublk::UblkError::UringTimeout => libc::ETIMEDOUT,
            libublk::UblkError::QueueIsDown => libc::ENODEV,
            _ => libc::EIO,
        };
        Error::new(errno, format!("{what}: {}", describe_errno(errno)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string())
    }
}

/// The C library's description of an errno, e.g. "No such device".
pub fn describe_errno(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno.abs())
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Symbolic names of the errnos a block device server meets.
pub fn errno_name(errno: i32) -> &'static str {
    match errno.abs() {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECANCELED => "ECANCELED",
        libc::EILSEQ => "EILSEQ",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ENOLINK => "ENOLINK",
        libc::EALREADY => "EALREADY",
        libc::EPIPE => "EPIPE",
        libc::EPROTO => "EPROTO",
        _ => "EUNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_positive_and_named() {
        let e = Error::new(-libc::ENODEV, "no device 7");
        assert_eq!(e.errno(), libc::ENODEV);
        assert_eq!(e.code(), "ENODEV");
        assert_eq!(e.to_string(), "no device 7 (ENODEV)");
    }

    #[test]
    fn ublk_errors_keep_their_errno() {
        let e = Error::from_ublk("add device", libublk::UblkError::OtherError(-libc::EEXIST));
        assert_eq!(e.code(), "EEXIST");
        assert_eq!(e.message(), "add device: File exists");
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = Error::from_ublk("open", libublk::UblkError::IOError(io));
        assert_eq!(e.code(), "EACCES");
    }

    #[test]
    fn context_prefixes_message() {
        let e = Error::invalid("bad").context("device 3");
        assert_eq!(e.message(), "device 3: bad");
        assert_eq!(e.code(), "EINVAL");
    }
}
