//! What a tag's task does with an IO it got, whatever brought it (one
//! command per IO, or the batch transport): waits the random delay it was
//! given, serves it through the target, its write batch's hooks included,
//! and turns the target's answer into a result the kernel may be told.

use std::time::Duration;

use super::io::{Io, IoDesc};
use super::queue::QueueRun;
use super::{ops, Target};

/// Largest errno the kernel uses; a result below its negative is no errno.
const MAX_ERRNO: i32 = 4095;

/// Serves the tag's IO and returns its checked result, once no backend
/// operation uses its buffer any more; records it in the queue's counters.
pub(crate) async fn answer_io<T: Target>(
    run: &QueueRun<'_, T>,
    tag: u16,
    desc: IoDesc,
    rng: &mut DelayRng,
) -> i32 {
    let result = serve_io(run, tag, desc, rng).await;
    // Operations a handler dropped may still use the buffer.
    run.lends[tag as usize].returned().await;
    let result = checked_result(result, desc);
    let arrival = run.arrivals[tag as usize].get();
    run.stats
        .record(desc.op, desc.len, result, arrival.elapsed());
    result
}

async fn serve_io<T: Target>(
    run: &QueueRun<'_, T>,
    tag: u16,
    desc: IoDesc,
    rng: &mut DelayRng,
) -> i32 {
    let mut io = Io::new(
        run.queue.get_qid(),
        tag,
        desc,
        run.buffers,
        &run.lends[tag as usize],
    );
    let batch = run.batches.take(tag);
    if let Some(max) = run.io_delay {
        let _ = ops::sleep(rng.up_to(max)).await;
    }
    let Some(batch) = batch else {
        return run.target.handle_io(run.state, io).await;
    };
    io.batch = Some(batch.seq());
    let result = batch.serve(run.target, run.state, io).await;
    run.batches.finish(batch);
    result
}

/// What a target returned, as the kernel may be told: bytes within the
/// IO's length, or an errno; anything else is an I/O error.
fn checked_result(result: i32, desc: IoDesc) -> i32 {
    let max = if desc.op.carries_data() {
        desc.len as i64
    } else {
        0
    };
    if result < -MAX_ERRNO || result as i64 > max {
        -libc::EIO
    } else {
        result
    }
}

/// A small xorshift: delays only need to differ, not to be unpredictable.
pub(crate) struct DelayRng(u64);

impl DelayRng {
    pub(crate) fn new(qid: u16, tag: u16) -> DelayRng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        DelayRng(seed ^ ((qid as u64) << 32 | tag as u64) | 1)
    }

    fn up_to(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(if max_ns == 0 {
            0
        } else {
            self.0 % (max_ns + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::IoOp;

    #[test]
    fn delays_stay_within_the_bound() {
        let mut rng = DelayRng::new(1, 7);
        let max = Duration::from_micros(300);
        assert!((0..1000).all(|_| rng.up_to(max) <= max));
        assert_eq!(rng.up_to(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn results_are_bytes_of_the_io_or_errnos() {
        let read = IoDesc {
            op: IoOp::Read,
            flags: 0,
            offset: 0,
            len: 4096,
        };
        assert_eq!(checked_result(4096, read), 4096);
        assert_eq!(checked_result(512, read), 512);
        assert_eq!(checked_result(8192, read), -libc::EIO);
        assert_eq!(checked_result(-libc::ENOSPC, read), -libc::ENOSPC);
        assert_eq!(checked_result(-5000, read), -libc::EIO);
        let flush = IoDesc {
            op: IoOp::Flush,
            len: 0,
            ..read
        };
        assert_eq!(checked_result(0, flush), 0);
        assert_eq!(checked_result(4096, flush), -libc::EIO);
    }
}
