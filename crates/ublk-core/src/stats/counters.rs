//! The counters one queue thread keeps: a fixed block of `u64`s per queue,
//! written only by that queue's thread and read by anyone, in this process
//! or (through a shared mapping) in another one.
//!
//! A single writer needs no read-modify-write instruction: each counter is
//! bumped with a relaxed load and a relaxed store (plain `mov`s), so
//! counting an IO costs a handful of stores to memory the queue already
//! owns. A reader's snapshot is "good enough": each counter is read
//! whole, but an IO being counted may show in one counter and not yet in
//! the next.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::runtime::IoOp;

/// Operations counted apart, in this order: read, write, flush, discard,
/// write-zeroes, and any other.
pub const OPS: usize = 6;
/// Their names, as reports and metrics label them.
pub const OP_NAMES: [&str; OPS] = ["read", "write", "flush", "discard", "write_zeroes", "other"];
/// Latency buckets: bucket `i` counts IOs that took less than `2^i` µs
/// (bucket 0: under 1 µs); the last one counts every IO slower than that.
pub const BUCKETS: usize = 32;
/// Errnos counted one by one (1..ERRNOS); slot 0 counts the larger ones.
pub const ERRNOS: usize = 134;

/// The slot of an operation in [`OP_NAMES`].
pub fn op_slot(op: IoOp) -> usize {
    match op {
        IoOp::Read => 0,
        IoOp::Write => 1,
        IoOp::Flush => 2,
        IoOp::Discard => 3,
        IoOp::WriteZeroes => 4,
        IoOp::Other(_) => 5,
    }
}

/// The bucket of a latency of `ns` nanoseconds: the bit length of its
/// whole microseconds.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    let us = ns / 1000;
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i` in seconds; `None` for the
/// last, unbounded one.
pub fn bucket_bound_secs(i: usize) -> Option<f64> {
    (i < BUCKETS - 1).then(|| (1u64 << i) as f64 * 1e-6)
}

/// One operation's counters. IOs completed are the sum of the buckets.
#[repr(C)]
pub(crate) struct OpCounters {
    buckets: [AtomicU64; BUCKETS],
    /// Bytes of the IOs that succeeded (a discard's or write-zeroes' range).
    bytes: AtomicU64,
    /// IOs that failed.
    errors: AtomicU64,
    /// Sum of the latencies, in nanoseconds.
    latency_ns: AtomicU64,
    _reserved: AtomicU64,
}

/// One queue's block. Aligned so that two queues never share a cache line.
/// All zeros is a valid, empty block (what a fresh mapping holds).
#[repr(C, align(128))]
pub(crate) struct QueueCounters {
    ops: [OpCounters; OPS],
    errnos: [AtomicU64; ERRNOS],
}

/// Adds `n` to a counter only this thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl QueueCounters {
    /// Counts one completed IO: `len` is the bytes the kernel asked for,
    /// `result` what the kernel is told (bytes done or a negative errno).
    /// Only the queue's own thread may call this.
    #[inline]
    pub(crate) fn record(&self, op: IoOp, len: u32, result: i32, latency: Duration) {
        let counters = &self.ops[op_slot(op)];
        let ns = latency.as_secs().saturating_mul(1_000_000_000) + latency.subsec_nanos() as u64;
        bump(&counters.buckets[bucket_of(ns)], 1);
        bump(&counters.latency_ns, ns);
        if result < 0 {
            bump(&counters.errors, 1);
            let errno = result.unsigned_abs() as usize;
            bump(&self.errnos[if errno < ERRNOS { errno } else { 0 }], 1);
        } else if op.carries_data() {
            bump(&counters.bytes, result as u64);
        } else {
            bump(&counters.bytes, len as u64);
        }
    }

    /// What the block holds now.
    pub(crate) fn snapshot(&self) -> QueueStats {
        let mut out = QueueStats::default();
        for (stats, counters) in out.ops.iter_mut().zip(&self.ops) {
            for (b, c) in stats.buckets.iter_mut().zip(&counters.buckets) {
                *b = c.load(Relaxed);
            }
            stats.ios = stats.buckets.iter().sum();
            stats.bytes = counters.bytes.load(Relaxed);
            stats.errors = counters.errors.load(Relaxed);
            stats.latency_ns = counters.latency_ns.load(Relaxed);
        }
        for (e, c) in out.errnos.iter_mut().zip(&self.errnos) {
            *e = c.load(Relaxed);
        }
        out
    }
}

/// One operation's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// IOs completed, failed ones included.
    pub ios: u64,
    /// Bytes of the IOs that succeeded.
    pub bytes: u64,
    /// IOs that failed.
    pub errors: u64,
    /// Sum of the latencies (arrival to commit), in nanoseconds.
    pub latency_ns: u64,
    /// Latency histogram (see [`BUCKETS`]).
    pub buckets: [u64; BUCKETS],
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats {
            ios: 0,
            bytes: 0,
            errors: 0,
            latency_ns: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl OpStats {
    fn add(&mut self, other: &OpStats) {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latency_ns += other.latency_ns;
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }
}

/// One queue's figures (or a device's, added up over its queues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// By operation, in the order of [`OP_NAMES`].
    pub ops: [OpStats; OPS],
    /// Failed IOs by errno (index 0: errnos of [`ERRNOS`] and above).
    pub errnos: [u64; ERRNOS],
}

impl Default for QueueStats {
    fn default() -> QueueStats {
        QueueStats {
            ops: [OpStats::default(); OPS],
            errnos: [0; ERRNOS],
        }
    }
}

impl QueueStats {
    /// One operation's figures.
    pub fn op(&self, op: IoOp) -> &OpStats {
        &self.ops[op_slot(op)]
    }

    pub fn ios(&self) -> u64 {
        self.ops.iter().map(|o| o.ios).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.ops.iter().map(|o| o.bytes).sum()
    }

    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }

    /// The errnos that failed IOs, with their counts (errno 0: any errno
    /// of [`ERRNOS`] and above).
    pub fn errors_by_errno(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.errnos
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(e, n)| (e as i32, *n))
    }

    pub(crate) fn add(&mut self, other: &QueueStats) {
        for (a, b) in self.ops.iter_mut().zip(&other.ops) {
            a.add(b);
        }
        for (a, b) in self.errnos.iter_mut().zip(&other.errnos) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<QueueCounters> {
        // SAFETY: every field is an AtomicU64, for which all zeros is a valid value.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn latencies_fall_in_log2_microsecond_buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(999), 0);
        assert_eq!(bucket_of(1_000), 1);
        assert_eq!(bucket_of(1_999), 1);
        assert_eq!(bucket_of(2_000), 2);
        assert_eq!(bucket_of(3_999), 2);
        assert_eq!(bucket_of(4_000), 3);
        assert_eq!(bucket_of(1_000_000), 10, "1 ms: 512 µs ≤ t < 1024 µs");
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for ns in [1u64, 700, 1_500, 90_000, 3_000_000, 5_000_000_000] {
            let b = bucket_of(ns);
            let secs = ns as f64 * 1e-9;
            assert!(
                secs < bucket_bound_secs(b).unwrap(),
                "{ns} ns under its bound"
            );
            if b > 0 {
                assert!(
                    secs >= bucket_bound_secs(b - 1).unwrap(),
                    "{ns} ns above the last"
                );
            }
        }
        assert_eq!(bucket_bound_secs(0), Some(1e-6));
        assert_eq!(bucket_bound_secs(BUCKETS - 1), None);
    }

    #[test]
    fn counts_ios_bytes_errors_and_latency_per_op() {
        let q = zeroed();
        for _ in 0..3 {
            q.record(IoOp::Write, 4096, 4096, Duration::from_micros(50));
        }
        q.record(IoOp::Read, 8192, 8192, Duration::from_nanos(300));
        q.record(IoOp::Read, 4096, -libc::EIO, Duration::from_millis(2));
        q.record(IoOp::Discard, 1 << 20, 0, Duration::from_micros(5));
        q.record(IoOp::Flush, 0, -libc::ENOSPC, Duration::from_micros(5));
        q.record(IoOp::Other(13), 512, -5000, Duration::ZERO);
        let s = q.snapshot();
        let write = s.op(IoOp::Write);
        assert_eq!((write.ios, write.bytes, write.errors), (3, 3 * 4096, 0));
        assert_eq!(write.latency_ns, 150_000);
        assert_eq!(write.buckets[bucket_of(50_000)], 3);
        let read = s.op(IoOp::Read);
        assert_eq!((read.ios, read.bytes, read.errors), (2, 8192, 1));
        assert_eq!((read.buckets[0], read.buckets[11]), (1, 1));
        assert_eq!(s.op(IoOp::Discard).bytes, 1 << 20, "a discard's range");
        assert_eq!(s.op(IoOp::Flush).errors, 1);
        assert_eq!(
            (s.ios(), s.errors(), s.bytes()),
            (8, 3, 3 * 4096 + 8192 + (1 << 20))
        );
        let errnos: Vec<_> = s.errors_by_errno().collect();
        assert_eq!(
            errnos,
            vec![(0, 1), (libc::EIO, 1), (libc::ENOSPC, 1)],
            "an errno beyond the table counts in slot 0"
        );
        let mut total = QueueStats::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.op(IoOp::Write).ios, 6);
        assert_eq!(total.errnos[libc::EIO as usize], 2);
    }

    #[test]
    fn queue_blocks_never_share_a_cache_line() {
        assert_eq!(std::mem::size_of::<QueueCounters>() % 128, 0);
        assert_eq!(std::mem::align_of::<QueueCounters>(), 128);
    }
}
