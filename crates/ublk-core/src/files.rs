//! Backing files a target reads and writes through its queues' rings, and
//! the per-device table that names them by handle.
//!
//! Handles come from one process-wide counter shared with staging buffers
//! ([`crate::staging`]), so a handle is never reused and never valid in two
//! tables: another device's file, a staging buffer passed as a file, or a
//! made-up number are all simply absent from a device's table (EBADF).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

/// The next handle, for files and staging buffers alike. 0 is never given.
static NEXT_HANDLE: AtomicU32 = AtomicU32::new(1);

pub(crate) fn new_handle() -> Result<u32> {
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    if handle == 0 || handle == u32::MAX {
        // After four billion opens: refuse rather than reuse.
        return Err(Error::new(libc::EMFILE, "no handles left in this process"));
    }
    Ok(handle)
}

/// An open backing file or block device.
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    /// As it was opened.
    pub path: String,
    /// Bytes; for a block device, its capacity.
    pub size: u64,
    /// Opened with O_DIRECT.
    pub direct: bool,
    pub read_only: bool,
    pub block_device: bool,
}

impl BackingFile {
    /// Opens `path`; with `direct`, tries O_DIRECT first and falls back to
    /// buffered IO where the file system refuses it.
    pub fn open(path: &str, direct: bool, read_only: bool) -> Result<BackingFile> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(flags)
                .open(path)
        };
        let opened = match direct {
            true => match open(libc::O_DIRECT) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0).map(|f| (f, false)),
                other => other.map(|f| (f, true)),
            },
            false => open(0).map(|f| (f, false)),
        };
        let (file, direct) = opened.map_err(|e| Error::from(e).context(format!("open {path}")))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from(e).context(format!("stat {path}")))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            block_device_size(&file).map_err(|e| e.context(format!("size of {path}")))?
        } else {
            meta.len()
        };
        Ok(BackingFile {
            file,
            path: path.to_owned(),
            size,
            direct,
            read_only,
            block_device,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn block_device_size(file: &File) -> Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer given, which
    // points at a live u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(size)
}

/// Things of one device named by handle: its backing files or its staging
/// buffers.
pub struct HandleTable<T> {
    entries: RwLock<HashMap<u32, Arc<T>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            entries: RwLock::default(),
            closed: Default::default(),
        }
    }
}

impl<T> HandleTable<T> {
    /// Adds `item` under a new handle. Refused (EBADF) once the table was
    /// closed: a device that stopped takes nothing new.
    pub fn insert(&self, item: T) -> Result<(u32, Arc<T>)> {
        let item = Arc::new(item);
        let mut entries = self.entries.write().unwrap();
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::new(libc::EBADF, "the device was stopped"));
        }
        let handle = new_handle()?;
        entries.insert(handle, item.clone());
        Ok((handle, item))
    }

    /// The item with this handle, if it belongs to this table.
    pub fn get(&self, handle: u32) -> Option<Arc<T>> {
        self.entries.read().unwrap().get(&handle).cloned()
    }

    /// Drops the table's reference; operations in flight and views still
    /// held keep the item until they are done.
    pub fn remove(&self, handle: u32) -> bool {
        self.entries.write().unwrap().remove(&handle).is_some()
    }

    /// Drops every item and refuses new ones.
    pub fn close(&self) {
        let mut entries = self.entries.write().unwrap();
        self.closed.store(true, Ordering::Relaxed);
        entries.clear();
    }
}

/// The backing files of one device.
pub type BackingFiles = HandleTable<BackingFile>;

impl BackingFiles {
    /// Opens `path` (see [`BackingFile::open`]) into this table.
    pub fn open(
        &self,
        path: &str,
        direct: bool,
        read_only: bool,
    ) -> Result<(u32, Arc<BackingFile>)> {
        self.insert(BackingFile::open(path, direct, read_only)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file of `len` zero bytes under a name no other test or process uses.
    pub(crate) fn scratch_file(len: usize) -> tempfile::NamedTempFile {
        let file = tempfile::Builder::new()
            .prefix("ublk-core-")
            .tempfile()
            .unwrap();
        file.as_file().set_len(len as u64).unwrap();
        file
    }

    #[test]
    fn opens_regular_files_and_reports_size() {
        let scratch = scratch_file(8192);
        let path = scratch.path().to_str().unwrap();
        let files = BackingFiles::default();
        let (handle, f) = files.open(path, true, false).unwrap();
        assert_eq!(f.size, 8192);
        assert!(!f.block_device);
        assert!(files.get(handle).is_some());
        assert!(files.get(handle + 1).is_none());
        let (second, _) = files.open(path, false, true).unwrap();
        assert_ne!(second, handle, "every open gets its own handle");
        let err = files.open("/nonexistent/x", false, false).unwrap_err();
        assert_eq!(err.code(), "ENOENT");
    }

    #[test]
    fn handles_belong_to_one_table_and_die_with_it() {
        let scratch = scratch_file(4096);
        let path = scratch.path().to_str().unwrap();
        let (a, b) = (BackingFiles::default(), BackingFiles::default());
        let (in_a, _) = a.open(path, false, true).unwrap();
        let (in_b, _) = b.open(path, false, true).unwrap();
        assert!(a.get(in_b).is_none(), "another device's file is not ours");
        assert!(b.get(in_a).is_none());
        assert!(a.remove(in_a));
        assert!(!a.remove(in_a), "removed once");
        b.close();
        assert!(b.get(in_b).is_none(), "closed tables are empty");
        assert_eq!(b.open(path, false, true).unwrap_err().code(), "EBADF");
    }
}
