//! A device that stores nothing: reads return whatever the buffer holds,
//! writes are dropped. Measures the cost of the ublk path itself.

use crate::error::Result;
use crate::runtime::{Capabilities, Io, IoOp, QueueContext, Target};

#[derive(Debug, Default, Clone, Copy)]
pub struct NullTarget;

impl Target for NullTarget {
    type Queue = ();

    fn kind(&self) -> &str {
        "null"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            // Never touches the data: zero copy where the kernel has it.
            zero_copy: true,
            ..Capabilities::default()
        }
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        // Only the IO commands: the null target submits nothing of its own.
        depth
    }

    fn open_queue(&self, _queue: &QueueContext) -> Result<()> {
        Ok(())
    }

    async fn handle_io(&self, _queue: &(), io: Io<'_>) -> i32 {
        null_result(io.op, io.done())
    }
}

/// Every data op succeeds in full; unknown ops are refused.
fn null_result(op: IoOp, success: i32) -> i32 {
    match op {
        IoOp::Other(_) => -libc::EOPNOTSUPP,
        _ => success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_per_op() {
        assert_eq!(null_result(IoOp::Read, 4096), 4096);
        assert_eq!(null_result(IoOp::Flush, 0), 0);
        assert_eq!(null_result(IoOp::Other(10), 0), -libc::EOPNOTSUPP);
    }
}
