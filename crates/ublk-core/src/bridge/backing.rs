//! Backing files a bridged target reads and writes through its queues'
//! rings. The application names them by index, never by raw fd, so it can
//! only reach files it opened through this table.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct BackingFile {
    file: File,
    pub size: u64,
    /// Opened with O_DIRECT.
    pub direct: bool,
    pub read_only: bool,
    pub block_device: bool,
}

impl BackingFile {
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[derive(Default)]
pub struct BackingFiles {
    files: RwLock<Vec<Option<Arc<BackingFile>>>>,
}

impl BackingFiles {
    /// Opens `path` for the device's backend IO; with `direct`, tries
    /// O_DIRECT first and falls back to buffered IO where the file system
    /// refuses it. Returns the file's index.
    pub fn open(
        &self,
        path: &str,
        direct: bool,
        read_only: bool,
    ) -> Result<(u32, Arc<BackingFile>)> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match direct {
            true => match open(libc::O_DIRECT) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
                Err(e) => return Err(Error::from(e).context(format!("open {path}"))),
            },
            false => (
                open(0).map_err(|e| Error::from(e).context(format!("open {path}")))?,
                false,
            ),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::from(e).context(format!("stat {path}")))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            block_device_size(&file).map_err(|e| e.context(format!("size of {path}")))?
        } else {
            meta.len()
        };
        let backing = Arc::new(BackingFile {
            file,
            size,
            direct,
            read_only,
            block_device,
        });
        let mut files = self.files.write().unwrap();
        files.push(Some(backing.clone()));
        Ok(((files.len() - 1) as u32, backing))
    }

    pub fn get(&self, index: u32) -> Option<Arc<BackingFile>> {
        self.files.read().unwrap().get(index as usize)?.clone()
    }

    /// Closes every file once the device is stopped (an operation still in
    /// flight holds its own reference and closes the file when done).
    /// Indexes stay taken, so an old index never reaches a new file.
    pub fn close_all(&self) {
        for f in self.files.write().unwrap().iter_mut() {
            f.take();
        }
    }
}

fn block_device_size(file: &File) -> Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer given.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_regular_files_and_reports_size() {
        let dir = std::env::temp_dir().join(format!("ublk-core-backing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.img");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let files = BackingFiles::default();
        let (idx, f) = files.open(path.to_str().unwrap(), true, false).unwrap();
        assert_eq!(idx, 0);
        assert_eq!(f.size, 8192);
        assert!(!f.block_device);
        assert!(files.get(0).is_some() && files.get(1).is_none());
        files.close_all();
        assert!(files.get(0).is_none(), "closed files are gone");
        let (idx, _) = files.open(path.to_str().unwrap(), false, false).unwrap();
        assert_eq!(idx, 1, "a new file never takes a closed file's index");
        let err = files.open("/nonexistent/x", false, false).unwrap_err();
        assert_eq!(err.code(), "ENOENT");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
