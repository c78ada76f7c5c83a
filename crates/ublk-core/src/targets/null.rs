//! A device that stores nothing: reads return whatever the buffer holds,
//! writes are dropped. Measures the cost of the ublk path itself.

use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, UblkIORes};

use crate::error::Result;
use crate::target::{open_queue, Target};

#[derive(Debug, Default, Clone, Copy)]
pub struct NullTarget;

impl Target for NullTarget {
    fn kind(&self) -> &str {
        "null"
    }

    fn serve_queue(&self, qid: u16, dev: &UblkDev) -> Result<()> {
        let bufs = dev.alloc_queue_io_bufs();
        let queue = open_queue(qid, dev, &bufs)?;
        queue.wait_and_handle_io(|q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
            let iod = q.get_iod(tag);
            let res = null_result(iod.op_flags & 0xff, iod.nr_sectors);
            let buf = BufDesc::Slice(bufs[tag as usize].as_slice());
            // Completing can only fail on a buffer/flag mismatch, which this
            // target never creates.
            let _ = q.complete_io_cmd_unified(tag, buf, Ok(UblkIORes::Result(res)));
        });
        Ok(())
    }
}

/// Every data op succeeds in full; unknown ops are refused.
fn null_result(op: u32, nr_sectors: u32) -> i32 {
    match op {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => (nr_sectors << 9) as i32,
        sys::UBLK_IO_OP_FLUSH | sys::UBLK_IO_OP_DISCARD | sys::UBLK_IO_OP_WRITE_ZEROES => 0,
        _ => -libc::EOPNOTSUPP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_per_op() {
        assert_eq!(null_result(sys::UBLK_IO_OP_READ, 8), 4096);
        assert_eq!(null_result(sys::UBLK_IO_OP_WRITE, 1), 512);
        assert_eq!(null_result(sys::UBLK_IO_OP_FLUSH, 0), 0);
        assert_eq!(null_result(sys::UBLK_IO_OP_ZONE_OPEN, 0), -libc::EOPNOTSUPP);
    }
}
