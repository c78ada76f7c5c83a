//! Backend operations: SQEs on the calling queue thread's ring that a task
//! awaits.
//!
//! An operation owns everything its SQE points at (the file, the buffer or
//! the part of an IO's buffer it lends, a timespec) until the kernel has
//! completed it. An operation dropped before that hands what it owns to
//! the queue thread, which lets go of it when the completion arrives, or
//! never, if the queue has to end first: memory the kernel may still write
//! is leaked, not freed.
//!
//! Every constructor checks its numbers (ranges against the buffer, file
//! offsets, flags, fallocate modes) before anything becomes a pointer in an
//! SQE; a refused operation is an [`Error`] with its errno.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use libublk::uring_async::UblkUringOpFuture;
use libublk::UblkUringData;

use super::io::{Io, IoOp, Lend};
use crate::error::{Error, Result};
use crate::files::BackingFile;
use crate::staging::StagingBuffer;

/// The `fallocate(2)` modes a backend may ask for: allocate, preallocate,
/// punch a hole, zero a range. Anything else (collapse, insert, unshare)
/// changes a file's layout and is refused.
pub mod falloc {
    pub const KEEP_SIZE: i32 = 0x01;
    pub const PUNCH_HOLE: i32 = 0x02;
    pub const ZERO_RANGE: i32 = 0x10;
    /// Every accepted mode.
    pub const MODES: [i32; 5] = [
        0,
        KEEP_SIZE,
        PUNCH_HOLE | KEEP_SIZE,
        ZERO_RANGE,
        ZERO_RANGE | KEEP_SIZE,
    ];
}

/// Where the kernel runs a backend write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Issue {
    /// In the queue thread's own `io_uring_enter`, and on an io_uring
    /// worker only if it would block there (io_uring's default).
    #[default]
    Inline,
    /// Straight on an io_uring worker thread (`IOSQE_ASYNC`): the copies
    /// of a mirrored write then run side by side on other cores instead
    /// of one after another on the queue thread. Worth it where a write
    /// costs CPU in its submitter (a RAM disk, the page cache, emulated
    /// hardware); a hop between threads per write where it does not.
    Worker,
}

/// Flags a read or write may carry: a durable write.
const RW_FLAGS: i32 = libc::RWF_DSYNC | libc::RWF_SYNC;

thread_local! {
    static STATE: RefCell<OpsState> = RefCell::new(OpsState::default());
}

#[derive(Default)]
struct OpsState {
    /// SQEs submitted from this thread whose completion has not arrived.
    in_flight: usize,
    /// What dropped operations still lend to the kernel, by user_data.
    orphans: HashMap<u64, Keep>,
}

/// What an SQE points at, kept until its completion.
// Held, never read: letting go of them at the right time is the point.
#[allow(dead_code)]
#[derive(Default)]
pub(crate) struct Keep {
    pub file: Option<Arc<BackingFile>>,
    pub staging: Option<Arc<StagingBuffer>>,
    pub lend: Option<Lend>,
    pub memory: Option<Box<[u8]>>,
    pub timespec: Option<Box<types::Timespec>>,
    /// Whatever else must outlive the SQE (the owner of an fd, say).
    pub other: Option<Arc<dyn Any + Send + Sync>>,
}

/// A submitted SQE; resolves with its completion's result (bytes, or a
/// negative errno).
#[must_use = "an operation does its work when awaited"]
pub struct Op {
    fut: UblkUringOpFuture,
    /// `Some` until the completion was seen.
    keep: Option<Keep>,
}

impl Op {
    /// Submits `sqe` on this thread's queue ring.
    ///
    /// # Safety
    /// Every address in `sqe` must stay valid, and be touched by nothing
    /// else, until the kernel completes it: either point into memory that
    /// `keep` owns, or guarantee it yourself for as long as the returned
    /// `Op` is not complete, including after it is dropped.
    pub(crate) unsafe fn submit(sqe: squeue::Entry, keep: Keep) -> Result<Op> {
        let fut = UblkUringOpFuture::new(UblkUringData::Target as u64);
        let sqe = sqe.user_data(fut.user_data);
        let pushed = libublk::io::with_task_io_ring_mut(|ring| {
            for _ in 0..8 {
                // SAFETY: the caller vouches for the SQE's addresses.
                if unsafe { ring.submission().push(&sqe) }.is_ok() {
                    return true;
                }
                // A full submission queue: hand it to the kernel and retry.
                let _ = ring.submit();
            }
            false
        });
        if !pushed {
            // Nothing was submitted: the slab entry would never complete.
            let _ = reclaim(fut.user_data);
            return Err(Error::new(libc::EAGAIN, "the queue's ring is full"));
        }
        STATE.with(|s| s.borrow_mut().in_flight += 1);
        Ok(Op {
            fut,
            keep: Some(keep),
        })
    }

    /// The SQE's user_data, to cancel it.
    pub fn user_data(&self) -> u64 {
        self.fut.user_data
    }
}

impl Future for Op {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let this = &mut *self;
        match Pin::new(&mut this.fut).poll(cx) {
            Poll::Ready(result) => {
                this.keep = None;
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(keep) = self.keep.take() else {
            return;
        };
        // Completed but never polled: the kernel is done with it.
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.fut).poll(&mut cx).is_ready() {
            return;
        }
        let user_data = self.fut.user_data;
        let parked = STATE.try_with(|s| s.borrow_mut().orphans.insert(user_data, keep));
        if let Err(_thread_ending) = parked {
            // No queue left to wait for the completion: never free.
            std::mem::forget(parked);
        }
    }
}

/// Polls a completed op's slab entry once, which removes it.
fn reclaim(user_data: u64) -> Poll<i32> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(&mut UblkUringOpFuture { user_data }).poll(&mut cx)
}

/// Whether a CQE is an operation's (rather than an IO command's).
pub(crate) fn is_op(user_data: u64) -> bool {
    user_data & UblkUringData::Target as u64 != 0
}

/// Accounts an operation's completion, after its task was woken: what a
/// dropped operation kept is released now.
pub(crate) fn completed(user_data: u64) {
    let orphan = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.orphans.is_empty() {
            None
        } else {
            s.orphans.remove(&user_data)
        }
    });
    if let Some(keep) = orphan {
        let _ = reclaim(user_data);
        drop(keep);
    }
}

/// Operations of this thread the kernel has not completed yet.
pub(crate) fn in_flight() -> usize {
    STATE.with(|s| s.borrow().in_flight)
}

/// The queue ends while the kernel still holds operations: what they use
/// is never freed.
pub(crate) fn leak_in_flight() {
    let orphans = STATE.with(|s| std::mem::take(&mut s.borrow_mut().orphans));
    std::mem::forget(orphans);
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::invalid(what.to_string())
}

/// `file_offset + len` must stay a valid file position.
fn check_file_range(file_offset: u64, len: u64) -> Result<()> {
    match file_offset.checked_add(len) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(invalid(format!(
            "file offset {file_offset} + {len} bytes is past the largest file position"
        ))),
    }
}

fn check_rw_flags(rw_flags: i32) -> Result<()> {
    if rw_flags & !RW_FLAGS != 0 {
        return Err(invalid(format!(
            "read/write flags {rw_flags:#x}: only RWF_DSYNC and RWF_SYNC are accepted"
        )));
    }
    Ok(())
}

fn check_writable(file: &BackingFile) -> Result<()> {
    if file.read_only {
        return Err(Error::new(libc::EROFS, "the file was opened read-only"));
    }
    Ok(())
}

/// Where a read or write moves data: memory and its owner.
struct Memory {
    /// An address, or for a registered buffer the offset into it.
    ptr: *mut u8,
    len: u32,
    /// The index of the registered buffer (a zero-copy IO's pages) that
    /// `ptr` is an offset into.
    registered: Option<u16>,
    keep: Keep,
}

fn transfer(
    file: &Arc<BackingFile>,
    file_offset: u64,
    memory: Memory,
    write: bool,
    rw_flags: i32,
    issue: Issue,
) -> Result<Op> {
    check_file_range(file_offset, memory.len as u64)?;
    check_rw_flags(rw_flags)?;
    if write {
        check_writable(file)?;
    }
    let fd = types::Fd(file.raw_fd());
    let (ptr, len) = (memory.ptr, memory.len);
    let sqe = match (memory.registered, write) {
        (None, true) => opcode::Write::new(fd, ptr, len)
            .offset(file_offset)
            .rw_flags(rw_flags)
            .build(),
        (None, false) => opcode::Read::new(fd, ptr, len)
            .offset(file_offset)
            .rw_flags(rw_flags)
            .build(),
        (Some(index), true) => opcode::WriteFixed::new(fd, ptr, len, index)
            .offset(file_offset)
            .rw_flags(rw_flags)
            .build(),
        (Some(index), false) => opcode::ReadFixed::new(fd, ptr, len, index)
            .offset(file_offset)
            .rw_flags(rw_flags)
            .build(),
    };
    let sqe = match issue {
        Issue::Inline => sqe,
        Issue::Worker => sqe.flags(squeue::Flags::ASYNC),
    };
    let keep = Keep {
        file: Some(file.clone()),
        ..memory.keep
    };
    // SAFETY: the range lies inside memory that `keep` owns (checked by
    // every caller), or inside a registered IO buffer that stays
    // registered while `keep` lends it (the IO is not committed before),
    // and the file stays open through `keep`.
    unsafe { Op::submit(sqe, keep) }
}

/// The kernel registers a zero-copy read's pages to be filled and a
/// write's to be written out, and refuses the other direction.
pub(crate) fn check_zero_copy_direction(op: IoOp, fill: bool) -> Result<()> {
    if fill != (op == IoOp::Read) {
        return Err(invalid(format!(
            "zero copy: a {}'s data can only be {}",
            if fill { "write" } else { "read" },
            if fill { "written out" } else { "filled" }
        )));
    }
    Ok(())
}

impl Io<'_> {
    /// The part `[buf_offset, buf_offset + len)` of this IO's data, lent to
    /// one operation that fills it (`fill`) or writes it out.
    fn lend(&self, buf_offset: u32, len: u32, fill: bool) -> Result<Memory> {
        let in_io = buf_offset
            .checked_add(len)
            .is_some_and(|end| end <= self.len);
        if len == 0 || !in_io || !self.op.carries_data() {
            return Err(invalid(format!(
                "bytes {buf_offset}..+{len} are not inside this IO's {} bytes of data",
                if self.op.carries_data() { self.len } else { 0 }
            )));
        }
        let keep = Keep {
            lend: Some(Lend::new(self.lends)),
            ..Keep::default()
        };
        if self.buffers.is_registered() {
            check_zero_copy_direction(self.op, fill)?;
            // Zero copy: the kernel holds the IO's pages at index `tag` of
            // the ring's buffer table, addressed from 0.
            return Ok(Memory {
                ptr: buf_offset as usize as *mut u8,
                len,
                registered: Some(self.tag),
                keep,
            });
        }
        let (base, _) = self
            .buffers
            .buffer(self.tag)
            .ok_or_else(|| invalid("IO tag outside its queue"))?;
        Ok(Memory {
            // SAFETY: buf_offset + len <= self.len <= the buffer's length.
            ptr: unsafe { base.add(buf_offset as usize) },
            len,
            registered: None,
            keep,
        })
    }

    /// Reads `len` bytes of `file` at `file_offset` into this IO's data at
    /// `buf_offset`. The IO completes only after the read did.
    pub fn read_into(
        &self,
        file: &Arc<BackingFile>,
        file_offset: u64,
        buf_offset: u32,
        len: u32,
    ) -> Result<Op> {
        transfer(
            file,
            file_offset,
            self.lend(buf_offset, len, true)?,
            false,
            0,
            Issue::Inline,
        )
    }

    /// Writes `len` bytes of this IO's data from `buf_offset` to `file` at
    /// `file_offset`; `rw_flags` may ask for `RWF_DSYNC` or `RWF_SYNC`.
    pub fn write_from(
        &self,
        file: &Arc<BackingFile>,
        file_offset: u64,
        buf_offset: u32,
        len: u32,
        rw_flags: i32,
    ) -> Result<Op> {
        self.write_issued(file, file_offset, buf_offset, len, rw_flags, Issue::Inline)
    }

    /// [`Io::write_from`], run where `issue` says.
    pub fn write_issued(
        &self,
        file: &Arc<BackingFile>,
        file_offset: u64,
        buf_offset: u32,
        len: u32,
        rw_flags: i32,
        issue: Issue,
    ) -> Result<Op> {
        transfer(
            file,
            file_offset,
            self.lend(buf_offset, len, false)?,
            true,
            rw_flags,
            issue,
        )
    }
}

fn staged(buffer: &Arc<StagingBuffer>, buf_offset: u32, len: u32) -> Result<Memory> {
    let ptr = buffer.range(buf_offset, len).ok_or_else(|| {
        invalid(format!(
            "bytes {buf_offset}..+{len} are not inside the staging buffer's {} bytes",
            buffer.len()
        ))
    })?;
    Ok(Memory {
        ptr,
        len,
        registered: None,
        keep: Keep {
            staging: Some(buffer.clone()),
            ..Keep::default()
        },
    })
}

/// Reads `file` at `file_offset` into `[buf_offset, buf_offset + len)` of
/// a staging buffer.
pub fn read_staged(
    file: &Arc<BackingFile>,
    file_offset: u64,
    buffer: &Arc<StagingBuffer>,
    buf_offset: u32,
    len: u32,
) -> Result<Op> {
    transfer(
        file,
        file_offset,
        staged(buffer, buf_offset, len)?,
        false,
        0,
        Issue::Inline,
    )
}

/// Writes `[buf_offset, buf_offset + len)` of a staging buffer to `file`
/// at `file_offset`.
pub fn write_staged(
    file: &Arc<BackingFile>,
    file_offset: u64,
    buffer: &Arc<StagingBuffer>,
    buf_offset: u32,
    len: u32,
    rw_flags: i32,
) -> Result<Op> {
    transfer(
        file,
        file_offset,
        staged(buffer, buf_offset, len)?,
        true,
        rw_flags,
        Issue::Inline,
    )
}

/// Writes `bytes`, which the operation owns until it is done, to `file`
/// at `file_offset`.
pub fn write_owned(
    file: &Arc<BackingFile>,
    file_offset: u64,
    bytes: Box<[u8]>,
    rw_flags: i32,
) -> Result<Op> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("a write of 4 GiB or more"))?;
    if len == 0 {
        return Err(invalid("an empty write"));
    }
    let ptr = bytes.as_ptr() as *mut u8;
    let keep = Keep {
        memory: Some(bytes),
        ..Keep::default()
    };
    let memory = Memory {
        ptr,
        len,
        registered: None,
        keep,
    };
    transfer(file, file_offset, memory, true, rw_flags, Issue::Inline)
}

/// `fsync(2)`, or `fdatasync(2)` with `data_only`.
pub fn fsync(file: &Arc<BackingFile>, data_only: bool) -> Result<Op> {
    let mut sqe = opcode::Fsync::new(types::Fd(file.raw_fd()));
    if data_only {
        sqe = sqe.flags(types::FsyncFlags::DATASYNC);
    }
    let keep = Keep {
        file: Some(file.clone()),
        ..Keep::default()
    };
    // SAFETY: the SQE holds no address; the file stays open through `keep`.
    unsafe { Op::submit(sqe.build(), keep) }
}

/// `fallocate(2)` with one of [`falloc::MODES`].
pub fn fallocate(file: &Arc<BackingFile>, mode: i32, offset: u64, len: u64) -> Result<Op> {
    if !falloc::MODES.contains(&mode) {
        return Err(invalid(format!(
            "fallocate mode {mode:#x}: only allocate, keep size, punch hole and zero range are accepted"
        )));
    }
    if len == 0 {
        return Err(invalid("fallocate of 0 bytes"));
    }
    check_file_range(offset, len)?;
    check_writable(file)?;
    let sqe = opcode::Fallocate::new(types::Fd(file.raw_fd()), len)
        .offset(offset)
        .mode(mode)
        .build();
    let keep = Keep {
        file: Some(file.clone()),
        ..Keep::default()
    };
    // SAFETY: the SQE holds no address; the file stays open through `keep`.
    unsafe { Op::submit(sqe, keep) }
}

/// Longest wait [`timeout`] takes.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// An io_uring timeout: completes with `-ETIME` after `delay`, without
/// holding the queue thread.
pub fn timeout(delay: Duration) -> Result<Op> {
    if delay > MAX_SLEEP {
        return Err(invalid(format!(
            "a wait of {delay:?} is longer than {MAX_SLEEP:?}"
        )));
    }
    let ts = Box::new(types::Timespec::from(delay));
    let sqe = opcode::Timeout::new(&*ts as *const types::Timespec).build();
    let keep = Keep {
        timespec: Some(ts),
        ..Keep::default()
    };
    // SAFETY: the timespec is owned by `keep`.
    unsafe { Op::submit(sqe, keep) }
}

/// Waits `delay` on the ring (see [`timeout`]).
pub async fn sleep(delay: Duration) -> Result<()> {
    match timeout(delay)?.await {
        r if r == -libc::ETIME || r >= 0 => Ok(()),
        r => Err(Error::new(-r, "wait on the queue's ring")),
    }
}

/// Reads the 8-byte counter of an eventfd that `owner` keeps open.
pub(crate) fn read_eventfd(fd: RawFd, owner: Arc<dyn Any + Send + Sync>) -> Result<Op> {
    let mut memory: Box<[u8]> = Box::new([0u8; 8]);
    let sqe = opcode::Read::new(types::Fd(fd), memory.as_mut_ptr(), 8).build();
    let keep = Keep {
        memory: Some(memory),
        other: Some(owner),
        ..Keep::default()
    };
    // SAFETY: the 8 bytes are owned by `keep`; `owner` keeps the fd open.
    unsafe { Op::submit(sqe, keep) }
}

/// Asks the kernel to cancel the operation with `user_data`.
pub(crate) fn cancel(user_data: u64) -> Result<Op> {
    let sqe = opcode::AsyncCancel::new(user_data).build();
    // SAFETY: the SQE holds no address.
    unsafe { Op::submit(sqe, Keep::default()) }
}

/// Submits a raw SQE on the calling queue thread's ring and resolves with
/// its completion's result.
///
/// # Safety
/// Every address the SQE holds must stay valid, and be used by nothing
/// else, until the kernel completes it, even if the returned operation is
/// dropped before that: prefer the checked constructors of this module,
/// which own what their SQEs point at.
pub unsafe fn submit(sqe: squeue::Entry) -> Result<Op> {
    // SAFETY: forwarded to the caller.
    unsafe { Op::submit(sqe, Keep::default()) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::files::tests::scratch_file;
    use crate::runtime::io::{IoBuffers, IoDesc, Lends};
    use std::rc::Rc;

    /// Gives this test thread a queue ring, as a queue thread has.
    pub(crate) fn with_ring() {
        libublk::io::ublk_init_task_ring(|cell| {
            if cell.get().is_none() {
                let ring = io_uring::IoUring::new(64).map_err(libublk::UblkError::IOError)?;
                let _ = cell.set(RefCell::new(ring));
            }
            Ok(())
        })
        .unwrap();
    }

    /// Waits for one completion and dispatches it as a queue thread does.
    pub(crate) fn reap_one() {
        let cqe = libublk::io::with_task_io_ring_mut(|ring| {
            ring.submit_and_wait(1).unwrap();
            ring.completion().next().unwrap()
        });
        libublk::uring_async::ublk_wake_task(cqe.user_data(), &cqe);
        completed(cqe.user_data());
    }

    fn run<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            reap_one();
        }
    }

    /// An IO of `len` bytes at offset 0.
    fn io_desc(op: IoOp, len: u32) -> IoDesc {
        IoDesc {
            op,
            flags: 0,
            offset: 0,
            len,
        }
    }

    /// A file opened as a backend opens it.
    fn open(scratch: &tempfile::NamedTempFile, read_only: bool) -> Arc<BackingFile> {
        Arc::new(BackingFile::open(scratch.path().to_str().unwrap(), false, read_only).unwrap())
    }

    #[test]
    fn ops_move_data_and_checks_refuse_bad_numbers() {
        with_ring();
        let scratch = scratch_file(8192);
        let file = open(&scratch, false);
        let staging = Arc::new(StagingBuffer::new(4096).unwrap());
        // SAFETY: 4096 bytes were allocated; no operation is in flight.
        unsafe { std::slice::from_raw_parts_mut(staging.as_mut_ptr(), 4096) }.fill(7);
        assert_eq!(
            run(write_staged(&file, 4096, &staging, 0, 4096, libc::RWF_DSYNC).unwrap()),
            4096
        );
        let buffers = IoBuffers::new(1, 8192);
        let lends = Rc::new(Lends::default());
        let desc = io_desc(IoOp::Read, 8192);
        let mut io = Io::new(0, 0, desc, &buffers, &lends);
        assert_eq!(run(io.read_into(&file, 0, 0, 8192).unwrap()), 8192);
        let data = io.data().unwrap();
        assert!(data[..4096].iter().all(|b| *b == 0) && data[4096..].iter().all(|b| *b == 7));

        let code = |r: Result<Op>| r.err().map(|e| e.code());
        assert_eq!(
            code(io.read_into(&file, 0, 4096, 8192)),
            Some("EINVAL"),
            "past the IO"
        );
        assert_eq!(code(io.read_into(&file, 0, 0, 0)), Some("EINVAL"), "empty");
        assert_eq!(
            code(io.read_into(&file, u64::MAX - 10, 0, 512)),
            Some("EINVAL"),
            "offset"
        );
        assert_eq!(
            code(io.write_from(&file, 0, 0, 512, 0x10)),
            Some("EINVAL"),
            "flags"
        );
        assert_eq!(
            code(read_staged(&file, 0, &staging, 4000, 512)),
            Some("EINVAL")
        );
        for bad in [0x4, 0x8, 0x20, 0x40, 0x02, -1] {
            assert_eq!(
                code(fallocate(&file, bad, 0, 4096)),
                Some("EINVAL"),
                "mode {bad:#x}"
            );
        }
        assert_eq!(
            code(fallocate(&file, falloc::ZERO_RANGE, 0, 0)),
            Some("EINVAL")
        );
        let read_only = open(&scratch, true);
        assert_eq!(
            run(fsync(&read_only, true).unwrap()),
            0,
            "a read-only file can be synced"
        );
        assert_eq!(code(io.write_from(&read_only, 0, 0, 512, 0)), Some("EROFS"));
        assert_eq!(code(fallocate(&read_only, 0, 0, 512)), Some("EROFS"));
        assert_eq!(code(timeout(Duration::from_secs(61))), Some("EINVAL"));
        assert_eq!(in_flight(), 0);
    }

    #[test]
    fn a_write_issued_on_a_worker_lands_like_an_inline_one() {
        with_ring();
        let scratch = scratch_file(8192);
        let file = open(&scratch, false);
        let buffers = IoBuffers::new(1, 4096);
        let lends = Rc::new(Lends::default());
        let desc = io_desc(IoOp::Write, 4096);
        let mut io = Io::new(0, 0, desc, &buffers, &lends);
        io.data().unwrap().fill(0x5a);
        for (at, issue) in [(0, Issue::Inline), (4096, Issue::Worker)] {
            let write = io.write_issued(&file, at, 0, 4096, 0, issue).unwrap();
            assert_eq!(run(write), 4096, "{issue:?}");
        }
        let written = std::fs::read(scratch.path()).unwrap();
        assert!(written.iter().all(|b| *b == 0x5a));
        assert_eq!(
            io.write_issued(&file, 0, 0, 512, 0x10, Issue::Worker)
                .err()
                .map(|e| e.code()),
            Some("EINVAL"),
            "checked before it is issued anywhere"
        );
        assert_eq!(in_flight(), 0);
    }

    #[test]
    fn a_dropped_op_keeps_what_it_lent_until_its_completion() {
        with_ring();
        let buffers = IoBuffers::new(1, 4096);
        let lends = Rc::new(Lends::default());
        let desc = io_desc(IoOp::Write, 4096);
        let mut io = Io::new(0, 0, desc, &buffers, &lends);
        let scratch = scratch_file(4096);
        let file = open(&scratch, false);
        let write = io.write_from(&file, 0, 0, 4096, 0).unwrap();
        let sleeping = timeout(Duration::from_millis(20)).unwrap();
        drop(write);
        drop(sleeping);
        assert!(io.data().is_none(), "the kernel may still read the buffer");
        while in_flight() > 0 {
            reap_one();
        }
        assert!(io.data().is_some(), "given back with the completion");
        assert!(STATE.with(|s| s.borrow().orphans.is_empty()));
    }

    #[test]
    fn zero_copy_data_moves_only_the_way_the_kernel_registered_it() {
        let buffers = IoBuffers::registered(1, 4096);
        let lends = Rc::new(Lends::default());
        let scratch = scratch_file(4096);
        let file = open(&scratch, false);
        for (op, refused) in [(IoOp::Read, "a read's"), (IoOp::Write, "a write's")] {
            let io = Io::new(0, 0, io_desc(op, 4096), &buffers, &lends);
            let wrong_way = if op == IoOp::Read {
                io.write_from(&file, 0, 0, 4096, 0)
            } else {
                io.read_into(&file, 0, 0, 4096)
            };
            let err = wrong_way
                .err()
                .expect("refused before anything is submitted");
            assert_eq!(err.code(), "EINVAL");
            assert!(err.to_string().contains(refused), "{err}");
            assert!(!lends.in_use(), "nothing stays lent");
            // The right way lends the registered buffer by its index.
            let memory = io.lend(512, 1024, op == IoOp::Read).unwrap();
            assert_eq!(
                (memory.registered, memory.ptr as usize, memory.len),
                (Some(0), 512, 1024)
            );
        }
    }
}
