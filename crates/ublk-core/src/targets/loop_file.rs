//! A device backed by a file or block device: each IO becomes one read,
//! write, fsync or fallocate on the queue's own io_uring, into or out of
//! the IO's buffer, and completes when that finishes.

use std::sync::Arc;

use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, UblkIORes};

use crate::bridge::{BackingFile, BackingFiles};
use crate::error::{Error, Result};
use crate::target::{open_queue, DeviceParams, Target};

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
/// `UBLK_IO_F_FUA`, in `op_flags`.
const IO_F_FUA: u32 = 1 << 13;

pub struct LoopTarget {
    file: Arc<BackingFile>,
}

impl LoopTarget {
    /// Opens `path` read-write, with O_DIRECT where the file system allows.
    pub fn open(path: &str, direct: bool) -> Result<LoopTarget> {
        let files = BackingFiles::default();
        let (_, file) = files.open(path, direct, false)?;
        Ok(LoopTarget { file })
    }
}

impl Target for LoopTarget {
    fn kind(&self) -> &str {
        "loop"
    }

    fn configure(&self, params: &mut DeviceParams) -> Result<()> {
        let size = params.basic.dev_sectors << 9;
        if size > self.file.size {
            return Err(Error::invalid(format!(
                "device size {size} is larger than the backing file ({} bytes)",
                self.file.size
            )));
        }
        params.basic.attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.discard = sys::ublk_param_discard {
            discard_granularity: 4096,
            max_discard_sectors: params.basic.max_sectors,
            max_write_zeroes_sectors: params.basic.max_sectors,
            max_discard_segments: 1,
            ..Default::default()
        };
        Ok(())
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        depth.saturating_mul(2)
    }

    fn serve_queue(&self, qid: u16, dev: &UblkDev) -> Result<()> {
        let bufs = dev.alloc_queue_io_bufs();
        let queue = open_queue(qid, dev, &bufs)?;
        let fd = types::Fd(self.file.raw_fd());
        queue.wait_and_handle_io(|q: &UblkQueue, tag: u16, io: &UblkIOCtx| {
            let buf = bufs[tag as usize].as_slice();
            if io.is_tgt_io() {
                let _ = q.complete_io_cmd_unified(
                    tag,
                    BufDesc::Slice(buf),
                    Ok(UblkIORes::Result(io.result())),
                );
                return;
            }
            let iod = q.get_iod(tag);
            let op = iod.op_flags & 0xff;
            let offset = iod.start_sector << 9;
            let len = iod.nr_sectors << 9;
            let ptr = buf.as_ptr() as *mut u8;
            let sqe = match op {
                sys::UBLK_IO_OP_READ => opcode::Read::new(fd, ptr, len).offset(offset).build(),
                sys::UBLK_IO_OP_WRITE => {
                    let rw_flags = if iod.op_flags & IO_F_FUA != 0 {
                        libc::RWF_DSYNC
                    } else {
                        0
                    };
                    opcode::Write::new(fd, ptr, len)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build()
                }
                sys::UBLK_IO_OP_FLUSH => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                sys::UBLK_IO_OP_DISCARD => opcode::Fallocate::new(fd, len as u64)
                    .offset(offset)
                    .mode(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                    .build(),
                sys::UBLK_IO_OP_WRITE_ZEROES => opcode::Fallocate::new(fd, len as u64)
                    .offset(offset)
                    .mode(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
                    .build(),
                _ => {
                    let _ = q.complete_io_cmd_unified(
                        tag,
                        BufDesc::Slice(buf),
                        Ok(UblkIORes::Result(-libc::EOPNOTSUPP)),
                    );
                    return;
                }
            };
            let sqe = sqe.user_data(UblkIOCtx::build_user_data(tag, op, 0, true));
            if q.ublk_submit_sqe_sync(sqe).is_err() {
                let _ = q.complete_io_cmd_unified(
                    tag,
                    BufDesc::Slice(buf),
                    Ok(UblkIORes::Result(-libc::EIO)),
                );
            }
        });
        Ok(())
    }
}
