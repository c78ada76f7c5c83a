//! Rust targets written as async functions, with the batch hook.
//!
//! Each IO runs as a task on its queue's thread; backend IO is an SQE on
//! the queue's own ring that the task awaits ([`submit`]). Writes are
//! coordinated per batch, a batch being what one reap of the ring
//! produced: before any of a batch's writes, discards and write-zeroes
//! reaches [`AsyncTarget::handle_io`], [`AsyncTarget::before_writes`] runs
//! once with all of them (write-ahead metadata: mark every extent, then
//! make the marks durable once); once the last of them has been handled,
//! [`AsyncTarget::after_writes`] runs, concurrently with later IO.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{ublk_reap_io_events_with_update_queue, ublk_wake_task};
use libublk::{sys, BufDesc, UblkError, UblkUringData};
use smol::LocalExecutor;

use crate::error::{Error, Result};
use crate::target::{DeviceParams, Target};

/// What the kernel asks of an IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    /// An operation this crate does not name (zoned, write-same, ...).
    Other(u32),
}

impl IoOp {
    pub fn from_raw(op: u32) -> IoOp {
        match op {
            sys::UBLK_IO_OP_READ => IoOp::Read,
            sys::UBLK_IO_OP_WRITE => IoOp::Write,
            sys::UBLK_IO_OP_FLUSH => IoOp::Flush,
            sys::UBLK_IO_OP_DISCARD => IoOp::Discard,
            sys::UBLK_IO_OP_WRITE_ZEROES => IoOp::WriteZeroes,
            other => IoOp::Other(other),
        }
    }

    /// Whether the op changes data, and so takes part in the batch hook.
    pub fn modifies(self) -> bool {
        matches!(self, IoOp::Write | IoOp::Discard | IoOp::WriteZeroes)
    }
}

/// `UBLK_IO_F_FUA`, in `op_flags`.
const IO_F_FUA: u32 = 1 << 13;

/// One IO as the kernel sent it, with its data buffer.
pub struct Io<'a> {
    pub qid: u16,
    pub tag: u16,
    pub op: IoOp,
    /// Byte offset on the device.
    pub offset: u64,
    /// Bytes to transfer.
    pub len: u32,
    /// Forced unit access: the write must be durable when it completes.
    pub fua: bool,
    buf: &'a mut [u8],
}

impl<'a> Io<'a> {
    /// An IO over `buf`; `len` is clamped to the buffer, so a target can
    /// never be handed more memory than the IO owns.
    pub fn new(qid: u16, tag: u16, op: IoOp, offset: u64, len: u32, buf: &'a mut [u8]) -> Io<'a> {
        let len = len.min(u32::try_from(buf.len()).unwrap_or(u32::MAX));
        Io {
            qid,
            tag,
            op,
            offset,
            len,
            fua: false,
            buf,
        }
    }

    /// The IO's data: what a write brings, where a read's answer goes.
    pub fn data(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len as usize]
    }

    /// The bytes a successful read or write reports.
    pub fn done(&self) -> i32 {
        match self.op {
            IoOp::Read | IoOp::Write => self.len as i32,
            _ => 0,
        }
    }
}

/// A data-changing IO of a batch, as the batch hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteExtent {
    pub tag: u16,
    pub op: IoOp,
    pub offset: u64,
    pub len: u32,
}

/// A block device implementation whose IOs are async tasks.
///
/// Handlers run on the queue's thread, so they may hold `Rc`s and
/// `RefCell`s across awaits; shared state between queues still needs to
/// be `Sync`, as the target itself is shared by all queue threads.
// Futures stay on the thread that made them (a LocalExecutor), so the
// missing `Send` bound the lint warns about is intended.
#[allow(async_fn_in_trait)]
pub trait AsyncTarget: Send + Sync + 'static {
    /// Short kind name, recorded in the device's info.
    fn kind(&self) -> &str;

    /// `UBLK_F_*` flags this target needs from the driver.
    fn ctrl_flags(&self) -> u64 {
        0
    }

    /// Adjusts parameters (read-only, discard, cache attributes) before start.
    fn configure(&self, _params: &mut DeviceParams) -> Result<()> {
        Ok(())
    }

    /// Ring entries per queue of `depth` IOs: one command per IO plus
    /// room for the backend SQEs in flight.
    fn ring_depth(&self, depth: u16) -> u16 {
        depth.saturating_mul(2)
    }

    /// Serves one IO; returns the bytes done, or a negative errno.
    async fn handle_io(&self, io: Io<'_>) -> i32;

    /// Batch prologue: runs once per batch, before any of its writes
    /// reaches [`handle_io`](Self::handle_io). An error fails every one of
    /// them with its errno, and they never reach `handle_io`.
    async fn before_writes(&self, _batch: &WriteBatch) -> Result<()> {
        Ok(())
    }

    /// Batch epilogue: runs once every write of the batch has been
    /// handled, whatever the outcome (also after a failed prologue).
    async fn after_writes(&self, _batch: &WriteBatch) {}
}

/// Submits `sqe` on the calling queue thread's ring and waits for it;
/// returns the completion's result (a negative errno on failure).
///
/// Whatever the SQE points at must stay valid until this returns.
pub async fn submit(sqe: squeue::Entry) -> i32 {
    match libublk::uring_async::ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
        Ok(res) => res,
        Err(_) => -libc::EIO,
    }
}

/// Waits `delay` on the ring (an io_uring timeout, so the queue thread
/// stays free to serve other IOs meanwhile).
pub async fn sleep(delay: Duration) {
    let ts = types::Timespec::from(delay);
    // The timeout ending is the expected outcome (-ETIME), not a failure.
    let _ = submit(opcode::Timeout::new(&ts).build()).await;
}

/// Serving options that do not belong to a target.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncOptions {
    /// Delays each IO by a random time up to this before it is handled,
    /// to provoke interleavings in tests and benchmarks.
    pub io_delay: Option<Duration>,
}

/// Serves `target` with one executor per queue thread; the result is what
/// [`crate::Device::create`] takes.
pub fn serve_async<T: AsyncTarget>(target: T, options: AsyncOptions) -> Arc<dyn Target> {
    Arc::new(AsyncRuntime {
        target: Arc::new(target),
        options,
    })
}

struct AsyncRuntime<T> {
    target: Arc<T>,
    options: AsyncOptions,
}

impl<T: AsyncTarget> Target for AsyncRuntime<T> {
    fn kind(&self) -> &str {
        self.target.kind()
    }

    fn ctrl_flags(&self) -> u64 {
        self.target.ctrl_flags()
    }

    fn configure(&self, params: &mut DeviceParams) -> Result<()> {
        self.target.configure(params)
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        self.target.ring_depth(depth)
    }

    fn serve_queue(&self, qid: u16, dev: &UblkDev) -> Result<()> {
        let queue = match UblkQueue::new(qid, dev) {
            Ok(q) => q,
            Err(e) => {
                // Let start fail at once instead of waiting for this queue.
                dev.notify_buffer_registration_complete(true);
                return Err(Error::from_ublk(format!("create queue {qid}"), e));
            }
        };
        let batches = Batches::new(qid, dev.dev_info.queue_depth);
        let exe = LocalExecutor::new();
        let tasks: Vec<_> = queue
            .tags()
            .map(|tag| {
                exe.spawn(io_task(
                    &queue,
                    tag,
                    self.target.clone(),
                    &batches,
                    self.options.io_delay,
                ))
            })
            .collect();

        let outcome = smol::block_on(exe.run(async {
            let poll = || async {
                let idle = types::Timespec::new().sec(20);
                libublk::uring_poll_io_fn::<squeue::Entry>(&queue, Some(idle), 1)
            };
            let reap = |timed_out| {
                ublk_reap_io_events_with_update_queue(&queue, timed_out, None, |cqe| {
                    batches.note_completion(&queue, cqe.user_data(), cqe.result());
                    ublk_wake_task(cqe.user_data(), cqe);
                })
            };
            let run = || {
                batches.seal(&queue);
                loop {
                    while exe.try_tick() {}
                    let finished = batches.take_finished();
                    if finished.is_empty() {
                        break;
                    }
                    for batch in finished {
                        let target = self.target.clone();
                        exe.spawn(async move { target.after_writes(&batch).await })
                            .detach();
                    }
                }
            };
            let done = || tasks.iter().all(|t| t.is_finished());
            libublk::run_uring_tasks(poll, reap, run, done).await
        }));
        outcome.map_err(|e| Error::from_ublk(format!("serve queue {qid}"), e))
    }
}

/// The life of one tag: fetch an IO, serve it, commit its result and
/// fetch the next, until the queue goes down.
async fn io_task<T: AsyncTarget>(
    q: &UblkQueue<'_>,
    tag: u16,
    target: Arc<T>,
    batches: &Batches,
    io_delay: Option<Duration>,
) {
    let mut buf = libublk::helpers::IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    let prep = q
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await;
    if let Err(e) = prep {
        log_task_end(q.get_qid(), tag, e);
        return;
    }
    let mut rng = DelayRng::new(q.get_qid(), tag);
    loop {
        let res = {
            let iod = q.get_iod(tag);
            let mut io = Io::new(
                q.get_qid(),
                tag,
                IoOp::from_raw(iod.op_flags & 0xff),
                iod.start_sector << 9,
                iod.nr_sectors << 9,
                buf.as_mut_slice(),
            );
            io.fua = iod.op_flags & IO_F_FUA != 0;
            let batch = batches.take(tag);
            if let Some(max) = io_delay {
                sleep(rng.up_to(max)).await;
            }
            match batch {
                Some(batch) => {
                    let res = batch.serve(&*target, io).await;
                    if batch.finish_one() {
                        batches.finished.borrow_mut().push(batch);
                    }
                    res
                }
                None => target.handle_io(io).await,
            }
        };
        let commit = q
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await;
        if let Err(e) = commit {
            log_task_end(q.get_qid(), tag, e);
            return;
        }
    }
}

fn log_task_end(qid: u16, tag: u16, e: UblkError) {
    if !matches!(e, UblkError::QueueIsDown) {
        log::error!("queue {qid} tag {tag}: {e}");
    }
}

/// The write batches of one queue: writes reaped but not yet sealed into
/// a batch, each tag's batch until its task takes it, and batches whose
/// epilogue is due.
struct Batches {
    reaped: RefCell<Vec<u16>>,
    qid: u16,
    sealed: Cell<u64>,
    of_tag: RefCell<Vec<Option<Rc<WriteBatch>>>>,
    finished: RefCell<Vec<Rc<WriteBatch>>>,
}

impl Batches {
    fn new(qid: u16, depth: u16) -> Batches {
        Batches {
            reaped: RefCell::new(Vec::new()),
            qid,
            sealed: Cell::new(0),
            of_tag: RefCell::new(vec![None; depth as usize]),
            finished: RefCell::new(Vec::new()),
        }
    }

    /// Records a new data-changing IO from the driver.
    fn note_completion(&self, q: &UblkQueue, user_data: u64, result: i32) {
        let from_driver = user_data & UblkUringData::Target as u64 == 0;
        if !from_driver || result != sys::UBLK_IO_RES_OK as i32 {
            return;
        }
        let tag = (user_data & 0xffff) as u16;
        if IoOp::from_raw(q.get_iod(tag).op_flags & 0xff).modifies() {
            self.reaped.borrow_mut().push(tag);
        }
    }

    /// Makes one batch of the writes reaped since the last call; runs
    /// before their tasks do.
    fn seal(&self, q: &UblkQueue) {
        let mut reaped = self.reaped.borrow_mut();
        if reaped.is_empty() {
            return;
        }
        let extents = reaped
            .drain(..)
            .map(|tag| {
                let iod = q.get_iod(tag);
                WriteExtent {
                    tag,
                    op: IoOp::from_raw(iod.op_flags & 0xff),
                    offset: iod.start_sector << 9,
                    len: iod.nr_sectors << 9,
                }
            })
            .collect();
        let seq = self.sealed.get();
        self.sealed.set(seq + 1);
        let batch = Rc::new(WriteBatch::new(self.qid, seq, extents));
        let mut of_tag = self.of_tag.borrow_mut();
        for extent in &batch.extents {
            if let Some(slot) = of_tag.get_mut(extent.tag as usize) {
                *slot = Some(batch.clone());
            }
        }
    }

    fn take(&self, tag: u16) -> Option<Rc<WriteBatch>> {
        self.of_tag.borrow_mut().get_mut(tag as usize)?.take()
    }

    fn take_finished(&self) -> Vec<Rc<WriteBatch>> {
        std::mem::take(&mut *self.finished.borrow_mut())
    }
}

/// The writes one reap of a queue's ring produced, and their
/// coordination: the prologue runs once, shared by every write of the
/// batch; the last write to finish says the epilogue is due.
pub struct WriteBatch {
    qid: u16,
    seq: u64,
    extents: Vec<WriteExtent>,
    prologue: async_lock::OnceCell<std::result::Result<(), i32>>,
    unfinished: Cell<usize>,
}

impl WriteBatch {
    pub fn new(qid: u16, seq: u64, extents: Vec<WriteExtent>) -> WriteBatch {
        let unfinished = Cell::new(extents.len());
        WriteBatch {
            qid,
            seq,
            extents,
            prologue: async_lock::OnceCell::new(),
            unfinished,
        }
    }

    /// The queue whose ring produced the batch.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The batch's number on its queue, counting from 0.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn extents(&self) -> &[WriteExtent] {
        &self.extents
    }

    /// Serves one of the batch's writes: waits for the prologue (running
    /// it if no other write has started it), then hands the write over.
    pub async fn serve<T: AsyncTarget>(&self, target: &T, io: Io<'_>) -> i32 {
        let prologue = self
            .prologue
            .get_or_init(|| async { target.before_writes(self).await.map_err(|e| e.errno()) })
            .await;
        match prologue {
            Ok(()) => target.handle_io(io).await,
            Err(errno) => -errno,
        }
    }

    /// Counts one write as handled; true for the last one, whose caller
    /// then owes the batch its epilogue.
    pub fn finish_one(&self) -> bool {
        let left = self.unfinished.get().saturating_sub(1);
        self.unfinished.set(left);
        left == 0
    }
}

/// A small xorshift: delays only need to differ, not to be unpredictable.
struct DelayRng(u64);

impl DelayRng {
    fn new(qid: u16, tag: u16) -> DelayRng {
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
    use std::sync::Mutex;

    /// Records the order in which the hook and the handlers run; writes
    /// yield in the middle so that they interleave.
    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<String>>,
        fail_prologue: bool,
    }

    impl Recorder {
        fn push(&self, event: String) {
            self.events.lock().unwrap().push(event);
        }
    }

    impl AsyncTarget for Recorder {
        fn kind(&self) -> &str {
            "recorder"
        }

        async fn handle_io(&self, mut io: Io<'_>) -> i32 {
            self.push(format!("start {}", io.tag));
            futures_lite::future::yield_now().await;
            let fill = io.tag as u8;
            io.data().fill(fill);
            self.push(format!("end {}", io.tag));
            io.done()
        }

        async fn before_writes(&self, batch: &WriteBatch) -> Result<()> {
            self.push(format!("before {}", batch.extents().len()));
            futures_lite::future::yield_now().await;
            if self.fail_prologue {
                return Err(Error::new(libc::ENOSPC, "journal full"));
            }
            self.push("marked".into());
            Ok(())
        }

        async fn after_writes(&self, batch: &WriteBatch) {
            self.push(format!("after {}", batch.extents().len()));
        }
    }

    /// Runs a batch of `n` 4 KiB writes as concurrent tasks, the way a
    /// queue does; returns each write's result.
    fn run_batch(target: &Recorder, n: u16) -> Vec<i32> {
        let extents: Vec<_> = (0..n)
            .map(|tag| WriteExtent {
                tag,
                op: IoOp::Write,
                offset: tag as u64 * 4096,
                len: 4096,
            })
            .collect();
        let batch = WriteBatch::new(0, 0, extents);
        let results = RefCell::new(vec![0; n as usize]);
        let exe = LocalExecutor::new();
        let tasks: Vec<_> = (0..n)
            .map(|tag| {
                let (batch, results) = (&batch, &results);
                exe.spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let io = Io::new(0, tag, IoOp::Write, tag as u64 * 4096, 4096, &mut buf);
                    let res = batch.serve(target, io).await;
                    results.borrow_mut()[tag as usize] = res;
                    if batch.finish_one() {
                        target.after_writes(batch).await;
                    }
                })
            })
            .collect();
        smol::block_on(exe.run(async {
            for t in tasks {
                t.await;
            }
        }));
        drop(exe);
        results.into_inner()
    }

    #[test]
    fn prologue_runs_once_before_any_write_and_epilogue_after_all() {
        let target = Recorder::default();
        let results = run_batch(&target, 4);
        assert_eq!(results, vec![4096; 4]);
        let events = target.events.into_inner().unwrap();
        assert_eq!(events.iter().filter(|e| e.starts_with("before")).count(), 1);
        assert_eq!(events[0], "before 4");
        assert_eq!(events[1], "marked");
        // The writes interleave: every one starts before the first ends.
        let first_end = events.iter().position(|e| e.starts_with("end")).unwrap();
        assert_eq!(
            events[..first_end]
                .iter()
                .filter(|e| e.starts_with("start"))
                .count(),
            4
        );
        assert_eq!(events.last().unwrap(), "after 4");
        assert_eq!(events.len(), 2 + 4 * 2 + 1);
    }

    #[test]
    fn failed_prologue_fails_every_write_and_still_runs_the_epilogue() {
        let target = Recorder {
            fail_prologue: true,
            ..Default::default()
        };
        let results = run_batch(&target, 3);
        assert_eq!(results, vec![-libc::ENOSPC; 3]);
        let events = target.events.into_inner().unwrap();
        assert_eq!(events, vec!["before 3", "after 3"]);
    }

    #[test]
    fn io_data_is_clamped_to_its_buffer() {
        let mut buf = vec![0u8; 512];
        let mut io = Io::new(0, 0, IoOp::Read, 0, 1 << 20, &mut buf);
        assert_eq!(io.len, 512);
        assert_eq!(io.data().len(), 512);
        assert_eq!(io.done(), 512);
    }

    #[test]
    fn delays_stay_within_the_bound() {
        let mut rng = DelayRng::new(1, 7);
        let max = Duration::from_micros(300);
        assert!((0..1000).all(|_| rng.up_to(max) <= max));
        assert_eq!(rng.up_to(Duration::ZERO), Duration::ZERO);
    }
}
