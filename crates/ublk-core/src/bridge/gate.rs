//! Which parts of a device the queue threads may write without the
//! application: a write-intent target (a mirror with a bitmap, a journal)
//! must see the first write to a region, to record it before any data
//! moves, but not the writes after it while the record stands.
//!
//! The device is cut into chunks. The application opens a chunk once its
//! record for the chunk is durable; a gated write route then serves a
//! write on the queue thread when every chunk it touches is open, and
//! hands any other write to the application. Before it drops the record,
//! or to copy a chunk with no write under way (resync, repair), the
//! application closes the chunk, which holds off new routed writes, and
//! waits for the ones in flight. Each chunk is one atomic word, so a queue
//! thread enters a chunk and the application closes it without a lock,
//! and never both at once unseen.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The queue threads may write the chunk.
const OPEN: u32 = 1 << 31;
/// A routed write entered the chunk since the application last asked.
const TOUCHED: u32 = 1 << 30;
/// Routed writes in flight in the chunk.
const IN_FLIGHT: u32 = TOUCHED - 1;

/// Most chunks a gate keeps (64 MiB of state).
pub const MAX_GATE_CHUNKS: u64 = 1 << 24;

/// The chunks of a device the queue threads may write on their own.
pub struct WriteGate {
    chunk_bytes: u64,
    chunks: Box<[AtomicU32]>,
    /// Routed writes that failed on some file, ever.
    failures: AtomicU64,
}

impl WriteGate {
    /// A gate, every chunk closed, over `device_bytes` in chunks of
    /// `chunk_bytes` (a multiple of 512).
    pub fn new(device_bytes: u64, chunk_bytes: u64) -> Result<WriteGate> {
        if chunk_bytes == 0 || chunk_bytes % 512 != 0 {
            return Err(Error::invalid(format!(
                "a write gate's chunk must be a non-zero multiple of 512 bytes, got {chunk_bytes}"
            )));
        }
        let count = device_bytes.div_ceil(chunk_bytes);
        if count > MAX_GATE_CHUNKS {
            return Err(Error::invalid(format!(
                "a write gate of {chunk_bytes}-byte chunks over {device_bytes} bytes would keep {count} chunks, more than {MAX_GATE_CHUNKS}"
            )));
        }
        Ok(WriteGate {
            chunk_bytes,
            chunks: (0..count).map(|_| AtomicU32::new(0)).collect(),
            failures: AtomicU64::new(0),
        })
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// The chunks `[first, last]` a write at `offset` of `len` bytes
    /// touches, if all are in the gate.
    pub(crate) fn span(&self, offset: u64, len: u32) -> Option<(usize, usize)> {
        let end = offset.checked_add(u64::from(len.max(1)))?;
        let first = (offset / self.chunk_bytes) as usize;
        let last = ((end - 1) / self.chunk_bytes) as usize;
        (last < self.chunks.len()).then_some((first, last))
    }

    /// Counts a routed write into chunks `[first, last]` if every one is
    /// open; otherwise changes nothing and says no.
    pub(crate) fn enter(&self, first: usize, last: usize) -> bool {
        for c in first..=last {
            let entered = self.chunks[c].fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & OPEN != 0 && s & IN_FLIGHT < IN_FLIGHT).then_some((s + 1) | TOUCHED)
            });
            if entered.is_err() {
                self.leave(first, c);
                return false;
            }
        }
        true
    }

    /// Counts a routed write out of the chunks `[first, end)`.
    pub(crate) fn leave(&self, first: usize, end: usize) {
        for c in first..end {
            self.chunks[c].fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Routed writes that failed on some file so far; each reached the
    /// application too, unless the device was stopping.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn chunk(&self, chunk: u32) -> Result<&AtomicU32> {
        self.chunks.get(chunk as usize).ok_or_else(|| {
            Error::invalid(format!(
                "chunk {chunk} is outside the write gate's {} chunks",
                self.chunks.len()
            ))
        })
    }

    fn check_range(&self, first: u32, last: u32) -> Result<()> {
        self.chunk(last)?;
        if first > last {
            return Err(Error::invalid(format!(
                "chunk range {first}..={last} is empty"
            )));
        }
        Ok(())
    }

    /// Lets routed writes into chunks `[first, last]`.
    pub fn open(&self, first: u32, last: u32) -> Result<()> {
        self.check_range(first, last)?;
        for c in first..=last {
            self.chunks[c as usize].fetch_or(OPEN, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Holds routed writes off a chunk; returns how many are still in
    /// flight there (see [`WriteGate::in_flight`] to wait for them).
    pub fn close(&self, chunk: u32) -> Result<u32> {
        Ok(self.chunk(chunk)?.fetch_and(!OPEN, Ordering::AcqRel) & IN_FLIGHT)
    }

    /// Routed writes in flight in a chunk.
    pub fn in_flight(&self, chunk: u32) -> Result<u32> {
        Ok(self.chunk(chunk)?.load(Ordering::Acquire) & IN_FLIGHT)
    }

    /// Closes a chunk that is open, has no routed write in flight and had
    /// none since the last [`WriteGate::take_touched`]; says whether it
    /// did. A chunk already closed counts as closed.
    pub fn close_if_idle(&self, chunk: u32) -> Result<bool> {
        let state = self.chunk(chunk)?;
        Ok(state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s == OPEN || s == 0).then_some(0)
            })
            .is_ok())
    }

    /// The chunks routed writes entered since the last call, ascending;
    /// forgets them.
    pub fn take_touched(&self) -> Vec<u32> {
        let mut touched = Vec::new();
        for (c, state) in self.chunks.iter().enumerate() {
            if state.load(Ordering::Relaxed) & TOUCHED != 0 {
                state.fetch_and(!TOUCHED, Ordering::AcqRel);
                touched.push(c as u32);
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_enter_only_open_chunks_and_closing_counts_them() {
        let gate = WriteGate::new(10 << 20, 1 << 20).unwrap();
        assert_eq!(gate.chunk_count(), 10);
        assert_eq!(gate.span(0, 4096), Some((0, 0)));
        assert_eq!(gate.span((1 << 20) - 512, 1024), Some((0, 1)));
        assert_eq!(gate.span(10 << 20, 512), None, "past the end");
        assert!(!gate.enter(0, 1), "closed chunks refuse");
        gate.open(0, 0).unwrap();
        assert!(!gate.enter(0, 1), "one closed chunk refuses the write");
        assert_eq!(
            gate.in_flight(0).unwrap(),
            0,
            "a refused write leaves no count"
        );
        gate.open(1, 1).unwrap();
        assert!(gate.enter(0, 1));
        assert!(gate.enter(1, 1));
        assert_eq!(gate.close(1).unwrap(), 2);
        assert!(!gate.enter(1, 1), "closed");
        assert!(gate.enter(0, 0), "the other chunk stays open");
        gate.leave(0, 2);
        gate.leave(1, 2);
        gate.leave(0, 1);
        assert_eq!(gate.in_flight(1).unwrap(), 0);
        assert_eq!(gate.take_touched(), vec![0, 1]);
        assert_eq!(gate.take_touched(), Vec::<u32>::new());
    }

    #[test]
    fn only_an_idle_untouched_chunk_is_closed_by_close_if_idle() {
        let gate = WriteGate::new(4 << 20, 1 << 20).unwrap();
        gate.open(0, 3).unwrap();
        assert!(gate.enter(1, 1));
        assert!(gate.enter(2, 2));
        gate.leave(2, 3);
        assert!(!gate.close_if_idle(1).unwrap(), "a write in flight");
        assert!(
            !gate.close_if_idle(2).unwrap(),
            "touched since the last look"
        );
        assert!(gate.close_if_idle(3).unwrap());
        assert!(!gate.enter(3, 3), "closed");
        assert_eq!(gate.take_touched(), vec![1, 2]);
        assert!(gate.close_if_idle(2).unwrap(), "idle and seen");
        assert!(gate.close_if_idle(2).unwrap(), "already closed");
        gate.leave(1, 2);
        assert!(gate.close_if_idle(1).unwrap());
    }

    #[test]
    fn bad_chunks_and_sizes_are_refused() {
        assert_eq!(
            WriteGate::new(1 << 20, 1000).err().unwrap().code(),
            "EINVAL"
        );
        assert_eq!(WriteGate::new(1 << 40, 512).err().unwrap().code(), "EINVAL");
        let gate = WriteGate::new(1 << 20, 4096).unwrap();
        assert_eq!(gate.chunk_count(), 256);
        assert_eq!(gate.open(0, 256).unwrap_err().code(), "EINVAL");
        assert_eq!(gate.open(5, 4).unwrap_err().code(), "EINVAL");
        assert_eq!(gate.close(256).unwrap_err().code(), "EINVAL");
        assert_eq!(gate.in_flight(u32::MAX).unwrap_err().code(), "EINVAL");
    }
}
