//! Drives a bridge with made-up IOs, the way a queue thread would but with
//! no kernel: measures the dispatch path alone (batch hand-over, the
//! application's answers, the eventfd wake-up).

use std::time::{Duration, Instant};

use super::wire::IoRequest;
use super::{Batch, BatchSink, QueueShared};
use crate::error::{Error, Result};
use crate::runtime::{IoBuffers, IoOp};

/// Keeps `depth` reads of 4 KiB in flight until `total` completed, handing
/// them over in batches of at most `batch_max` (1: one hand-over per IO).
pub fn run(
    shared: &QueueShared,
    sink: &dyn BatchSink,
    depth: u16,
    total: u64,
    batch_max: usize,
) -> Result<Duration> {
    let _ = shared.buffers.set(IoBuffers::new(depth, 4096));
    let batch_max = batch_max.max(1);
    let mut free: Vec<u16> = (0..depth).rev().collect();
    let mut seqs = vec![0u32; depth as usize];
    let (mut issued, mut completed) = (0u64, 0u64);
    let started = Instant::now();
    while completed < total {
        let mut batch = Batch::default();
        while issued < total {
            let Some(tag) = free.pop() else { break };
            seqs[tag as usize] = seqs[tag as usize].wrapping_add(1);
            batch.ios.push(IoRequest {
                tag,
                seq: seqs[tag as usize],
                op: IoOp::Read,
                flags: 0,
                offset: (issued % 1024) * 4096,
                length: 4096,
                batch: None,
                route_failure: None,
            });
            issued += 1;
            if batch.ios.len() == batch_max {
                sink.deliver(std::mem::take(&mut batch))
                    .map_err(|_| Error::new(libc::EPIPE, "the batch handler is gone"))?;
            }
        }
        if !batch.ios.is_empty() {
            sink.deliver(batch)
                .map_err(|_| Error::new(libc::EPIPE, "the batch handler is gone"))?;
        }
        wait_readable(shared.inbox.eventfd())?;
        for r in shared.inbox.take().results {
            if seqs.get(r.tag as usize) == Some(&r.seq) {
                free.push(r.tag);
                completed += 1;
            }
        }
    }
    Ok(started.elapsed())
}

fn wait_readable(fd: i32) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n == 0 {
        return Err(Error::new(
            libc::ETIMEDOUT,
            "no answer from the application in 10 s",
        ));
    }
    let mut counter = 0u64;
    // SAFETY: reads 8 bytes into a live u64 from our nonblocking eventfd.
    unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
    Ok(())
}
