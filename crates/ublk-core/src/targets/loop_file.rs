//! A device backed by a file or block device: each IO becomes one read,
//! write, fdatasync or fallocate on the queue's own io_uring, into or out
//! of the IO's buffer, and completes when that finishes.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::BackingFile;
use crate::runtime::ops::{self, falloc};
use crate::runtime::{Capabilities, DeviceParams, Io, IoOp, QueueContext, Target};

pub struct LoopTarget {
    file: Arc<BackingFile>,
}

impl LoopTarget {
    /// Opens `path` read-write, with O_DIRECT where the file system allows.
    pub fn open(path: &str, direct: bool) -> Result<LoopTarget> {
        Ok(LoopTarget {
            file: Arc::new(BackingFile::open(path, direct, false)?),
        })
    }
}

impl Target for LoopTarget {
    type Queue = ();

    fn kind(&self) -> &str {
        "loop"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: false,
            flush: true,
            fua: true,
            discard: true,
            write_zeroes: true,
            zero_copy: true,
        }
    }

    fn configure(&self, params: &mut DeviceParams) -> Result<()> {
        let size = params.basic.dev_sectors << 9;
        if size > self.file.size {
            return Err(Error::invalid(format!(
                "device size {size} is larger than the backing file ({} bytes)",
                self.file.size
            )));
        }
        Ok(())
    }

    fn open_queue(&self, _queue: &QueueContext) -> Result<()> {
        Ok(())
    }

    async fn handle_io(&self, _queue: &(), io: Io<'_>) -> i32 {
        let file = &self.file;
        let op = match io.op {
            IoOp::Read => io.read_into(file, io.offset, 0, io.len),
            IoOp::Write => {
                let flags = if io.fua { libc::RWF_DSYNC } else { 0 };
                io.write_from(file, io.offset, 0, io.len, flags)
            }
            IoOp::Flush => ops::fsync(file, true),
            IoOp::Discard => ops::fallocate(
                file,
                falloc::PUNCH_HOLE | falloc::KEEP_SIZE,
                io.offset,
                io.len as u64,
            ),
            IoOp::WriteZeroes => ops::fallocate(
                file,
                falloc::ZERO_RANGE | falloc::KEEP_SIZE,
                io.offset,
                io.len as u64,
            ),
            IoOp::Other(_) => return -libc::EOPNOTSUPP,
        };
        match op {
            Ok(op) => op.await,
            Err(e) => -e.errno(),
        }
    }
}
