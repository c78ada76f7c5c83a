//! One queue thread: its executor, one task per tag, the reap loop, and
//! the drain that makes sure nothing the kernel still uses is freed.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{squeue, types};
use libublk::io::UblkQueue;
use libublk::uring_async::{
    ublk_reap_events_with_handler, ublk_reap_io_events_with_update_queue, ublk_wake_task,
};
use libublk::{sys, BufDesc, UblkError};
use smol::LocalExecutor;

use super::batch::Batches;
use super::eventfd::EventFd;
use super::io::{Io, IoBuffers, IoDesc, Lends};
use super::{ops, QueueArgs, QueueContext, Spawner, Target};
use crate::error::{Error, Result};
use crate::stats::QueueCounters;

/// Largest errno the kernel uses; a result below its negative is no errno.
const MAX_ERRNO: i32 = 4095;
/// How long the ring sleeps without any event before it counts as idle.
const IDLE: Duration = Duration::from_secs(20);
/// How long a queue that went down waits for its backend operations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A way to make a queue thread end before its device ever started (a
/// failed start), when the kernel will not abort its fetch commands.
pub(crate) struct QueueControl {
    eventfd: EventFd,
    abort: AtomicBool,
    /// This process is stopping the device: the queue ending is expected.
    stopping: AtomicBool,
    /// The queue's fetch commands have reached the kernel (or the queue
    /// thread has ended).
    fetched: AtomicBool,
    /// A hand-over is quiescing the device: the kernel may abort fetch
    /// commands while IOs are still being served.
    quiescing: AtomicBool,
    /// The kernel quiesced the device (`QUIESCE_DEV` returned): the queue
    /// leaves once every IO it holds is committed.
    quiesced: AtomicBool,
}

impl QueueControl {
    pub fn new() -> Result<Arc<QueueControl>> {
        Ok(Arc::new(QueueControl {
            eventfd: EventFd::new()?,
            abort: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
            quiescing: AtomicBool::new(false),
            quiesced: AtomicBool::new(false),
        }))
    }

    /// A hand-over is about to quiesce the device. From here on an aborted
    /// fetch command ends only its own tag: libublk would take it for the
    /// whole queue going down and drop the commits of the IOs still being
    /// served, which then would never be answered.
    pub fn quiescing(&self) {
        self.quiescing.store(true, Ordering::SeqCst);
    }

    fn is_quiescing(&self) -> bool {
        self.quiescing.load(Ordering::SeqCst)
    }

    /// The kernel has quiesced the device: it aborted the fetch commands
    /// it held and sends no new IO. The queue answers what it still
    /// serves, then leaves without waiting for the fetch commands those
    /// commits queued, which the kernel completes only when the ring goes.
    pub fn quiesced(&self) {
        self.quiesced.store(true, Ordering::SeqCst);
        self.eventfd.wake();
    }

    fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::SeqCst)
    }

    /// Makes the queue thread leave at once, whatever its IOs are doing.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.eventfd.wake();
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// This process is about to stop the device.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the queue's fetch commands have reached the kernel, or the
    /// queue has ended: only then can stopping the device abort them.
    pub fn fetched(&self) -> bool {
        self.fetched.load(Ordering::SeqCst)
    }
}

/// What every task of one queue shares.
struct QueueRun<'a, T: Target> {
    queue: &'a UblkQueue<'a>,
    target: &'a T,
    state: &'a T::Queue,
    buffers: &'a Arc<IoBuffers>,
    lends: Vec<Rc<Lends>>,
    batches: Batches,
    io_delay: Option<Duration>,
    stats: &'a QueueCounters,
    /// When each tag's IO arrived: the reap that brought it.
    arrivals: Vec<Cell<Instant>>,
    /// Per tag: its IO is committed and the tag waits for the next one.
    committed: Vec<Cell<bool>>,
}

pub(crate) fn serve<T: Target>(target: &T, args: QueueArgs<'_>) -> Result<()> {
    let QueueArgs {
        qid,
        dev,
        buffers,
        control,
        io_delay,
        stats,
    } = args;
    // Device start waits until every queue has fetched; a queue that fails
    // before that must still report in, or start would wait forever.
    let report_failure = |e: Error| {
        dev.notify_buffer_registration_complete(true);
        e
    };
    let queue = UblkQueue::new(qid, dev)
        .map_err(|e| report_failure(Error::from_ublk(format!("create queue {qid}"), e)))?;
    let spawner = Spawner::default();
    let ctx = QueueContext {
        qid,
        depth: buffers.depth(),
        buffers: buffers.clone(),
        spawner: spawner.clone(),
    };
    let state = target.open_queue(&ctx).map_err(report_failure)?;
    let control_read =
        ops::read_eventfd(control.eventfd.raw_fd(), control.clone()).map_err(report_failure)?;

    let run = QueueRun {
        queue: &queue,
        target,
        state: &state,
        buffers,
        lends: (0..buffers.depth()).map(|_| Rc::default()).collect(),
        batches: Batches::new(qid, buffers.depth()),
        io_delay,
        stats: stats.queue(qid),
        arrivals: (0..buffers.depth())
            .map(|_| Cell::new(Instant::now()))
            .collect(),
        committed: (0..buffers.depth()).map(|_| Cell::new(false)).collect(),
    };
    // One clock read per reap: the arrival time of every IO it brings.
    let reaped_at = Cell::new(Instant::now());
    let exe = LocalExecutor::new();
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| exe.spawn(io_task(&run, tag)))
        .collect();
    let tick = || {
        run.batches.seal();
        loop {
            while exe.try_tick() {}
            let finished = run.batches.take_finished();
            let spawned = spawner.take();
            if finished.is_empty() && spawned.is_empty() {
                break;
            }
            for batch in finished {
                let run = &run;
                exe.spawn(async move { run.target.after_writes(run.state, &batch).await })
                    .detach();
            }
            for task in spawned {
                exe.spawn(task).detach();
            }
        }
        target.after_reap(&state);
    };
    let on_cqe = |cqe: &io_uring::cqueue::Entry| {
        let user_data = cqe.user_data();
        if ops::is_op(user_data) {
            ublk_wake_task(user_data, cqe);
            ops::completed(user_data);
            return;
        }
        if cqe.result() == sys::UBLK_IO_RES_OK as i32 {
            let tag = (user_data & 0xffff) as u16;
            run.batches.note(tag, IoDesc::decode(queue.get_iod(tag)));
            if let Some(arrival) = run.arrivals.get(tag as usize) {
                arrival.set(reaped_at.get());
            }
        }
        ublk_wake_task(user_data, cqe);
    };
    let aborted = Cell::new(false);
    // Quiesced, a tag is done once its task ended (its fetch command was
    // aborted) or it committed its IO: the fetch command that commit
    // queued arrived after the kernel's abort, and stays until the ring
    // goes. No IO is left to this process then.
    let quiesce_done = || {
        control.is_quiesced()
            && tasks
                .iter()
                .zip(&run.committed)
                .all(|(t, committed)| t.is_finished() || committed.get())
    };
    let poll = || async {
        if !control.fetched() {
            // The first turn queued every tag's fetch command: hand them to
            // the kernel before anything waits, and say so (a failed start
            // needs the kernel to hold them before it can abort them).
            let _ = libublk::io::with_task_io_ring_mut(|ring| ring.submit());
            control.fetched.store(true, Ordering::SeqCst);
        }
        if control.aborted() {
            aborted.set(true);
            return Err(UblkError::QueueIsDown);
        }
        if quiesce_done() {
            return Err(UblkError::QueueIsDown);
        }
        let idle = types::Timespec::from(IDLE);
        libublk::uring_poll_io_fn::<squeue::Entry>(&queue, Some(idle), 1)
    };
    let reap = |timed_out| {
        reaped_at.set(Instant::now());
        if control.is_quiescing() {
            // Reaped without libublk's queue state (see `quiescing`).
            return libublk::io::with_task_io_ring_mut(|ring| {
                ublk_reap_events_with_handler(ring, on_cqe)
            });
        }
        ublk_reap_io_events_with_update_queue(&queue, timed_out, None, on_cqe)
    };
    let done = || aborted.get() || tasks.iter().all(|t| t.is_finished()) || quiesce_done();
    let outcome = smol::block_on(exe.run(libublk::run_uring_tasks(poll, reap, tick, done)));
    if control.is_quiescing() {
        // The last commits must reach the kernel before the ring goes.
        let _ = libublk::io::with_task_io_ring_mut(|ring| ring.submit());
    }

    if !aborted.get() && !control.stopping.load(Ordering::SeqCst) && !control.is_quiescing() {
        log::warn!(
            "queue {qid} stopped serving: the kernel stopped the device without this process (deleted by another one?)"
        );
    }
    // Down: let the background tasks' operations end, and wait for every
    // operation the kernel still holds before anything is freed.
    target.close_queue(&state);
    let control_cancel = ops::cancel(control_read.user_data());
    drop(control_read);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while ops::in_flight() > 0 && Instant::now() < deadline {
        let ts = types::Timespec::from(Duration::from_millis(100));
        let _ = libublk::io::with_task_io_ring_mut(|ring| {
            ring.submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
        });
        let _ = ublk_reap_io_events_with_update_queue(&queue, false, None, on_cqe);
        tick();
    }
    drop(control_cancel);
    if ops::in_flight() > 0 {
        log::error!(
            "queue {qid}: {} backend operations did not finish within {DRAIN_TIMEOUT:?}; their memory is leaked",
            ops::in_flight()
        );
        // The kernel may still write into what these tasks own.
        ops::leak_in_flight();
        std::mem::forget(buffers.clone());
        std::mem::forget(tasks);
        std::mem::forget(exe);
        std::mem::forget(run);
        std::mem::forget(state);
    }
    if aborted.get() {
        return Err(Error::new(
            libc::ECANCELED,
            format!("queue {qid} was aborted"),
        ));
    }
    outcome.map_err(|e| Error::from_ublk(format!("serve queue {qid}"), e))
}

/// The life of one tag: fetch an IO, serve it, commit its result and
/// fetch the next, until the queue goes down.
async fn io_task<T: Target>(run: &QueueRun<'_, T>, tag: u16) {
    let q = run.queue;
    let io_buf = run.buffers.io_buf(tag);
    // Zero copy: the kernel registers the IO's pages at index `tag` of the
    // ring's buffer table when the IO arrives, and unregisters them when
    // it is committed. No fallback: the table has a free slot per tag.
    let auto_reg = sys::ublk_auto_buf_reg {
        index: tag,
        ..Default::default()
    };
    let buf = || match io_buf {
        Some(b) => BufDesc::Slice(b.as_slice()),
        None => BufDesc::AutoReg(auto_reg),
    };
    if let Err(e) = q.submit_io_prep_cmd(tag, buf(), 0, io_buf).await {
        return log_task_end(q.get_qid(), tag, e);
    }
    let mut rng = DelayRng::new(q.get_qid(), tag);
    loop {
        let desc = IoDesc::decode(q.get_iod(tag));
        let result = serve_io(run, tag, desc, &mut rng).await;
        // Operations a handler dropped may still use the buffer.
        run.lends[tag as usize].returned().await;
        let result = checked_result(result, desc);
        let arrival = run.arrivals[tag as usize].get();
        run.stats
            .record(desc.op, desc.len, result, arrival.elapsed());
        let committed = &run.committed[tag as usize];
        committed.set(true);
        let next = q.submit_io_commit_cmd(tag, buf(), result).await;
        committed.set(false);
        if let Err(e) = next {
            return log_task_end(q.get_qid(), tag, e);
        }
    }
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

fn log_task_end(qid: u16, tag: u16, e: UblkError) {
    if !matches!(e, UblkError::QueueIsDown) {
        log::error!("queue {qid} tag {tag}: {e}");
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
