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

use super::answer::{answer_io, DelayRng};
use super::batch::Batches;
use super::batch_io::BatchIo;
use super::eventfd::EventFd;
use super::io::{IoBuffers, IoDesc, Lends};
use super::{ops, QueueArgs, QueueContext, Spawner, Target};
use crate::error::{Error, Result};
use crate::stats::QueueCounters;

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
pub(crate) struct QueueRun<'a, T: Target> {
    pub queue: &'a UblkQueue<'a>,
    pub target: &'a T,
    pub state: &'a T::Queue,
    pub buffers: &'a Arc<IoBuffers>,
    pub lends: Vec<Rc<Lends>>,
    pub batches: Batches,
    pub io_delay: Option<Duration>,
    pub stats: &'a QueueCounters,
    /// When each tag's IO arrived: the reap that brought it.
    pub arrivals: Vec<Cell<Instant>>,
    /// Per tag: its IO is committed and the tag waits for the next one.
    committed: Vec<Cell<bool>>,
    /// The batch transport, where the device has `UBLK_F_BATCH_IO`.
    batch_io: Option<BatchIo<'a, 'a>>,
}

/// Serves a queue on its own thread: sleeps in the ring between reaps.
pub(crate) fn serve<T: Target>(target: &T, args: QueueArgs<'_>) -> Result<()> {
    smol::block_on(serve_async(target, args, false))
}

/// Serves a queue; with `hosted`, the future never blocks: it waits for
/// the ring by returning pending, and the thread that hosts it polls it
/// again once the ring's fd is readable (see [`super::hosted`]).
pub(crate) async fn serve_async<T: Target>(
    target: &T,
    args: QueueArgs<'_>,
    hosted: bool,
) -> Result<()> {
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
    // (The batch transport reports in itself once set up.)
    let reported = Cell::new(false);
    let report_failure = |e: Error| {
        if !reported.get() {
            dev.notify_buffer_registration_complete(true);
        }
        e
    };
    let queue = UblkQueue::new(qid, dev)
        .map_err(|e| report_failure(Error::from_ublk(format!("create queue {qid}"), e)))?;
    // Before anything else reaches the ring: the batch transport's setup
    // waits for its own completions, and would set any other one aside.
    // A failed setup has reported the queue's failure itself.
    let batch_io = match dev.dev_info.flags & sys::UBLK_F_BATCH_IO as u64 {
        0 => None,
        _ => Some(BatchIo::start(&queue, buffers)?),
    };
    reported.set(batch_io.is_some());
    let spawner = Spawner::default();
    let ctx = QueueContext {
        qid,
        depth: buffers.depth(),
        hosted,
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
        batch_io,
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
        target.before_tasks(&state);
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
        if let Some(batch_io) = &run.batch_io {
            batch_io.flush();
        }
    };
    let arrived = |tag: u16| {
        run.batches.note(tag, IoDesc::decode(queue.get_iod(tag)));
        if let Some(arrival) = run.arrivals.get(tag as usize) {
            arrival.set(reaped_at.get());
        }
    };
    let on_cqe = |cqe: &io_uring::cqueue::Entry| {
        let user_data = cqe.user_data();
        if run.batch_io.as_ref().is_some_and(|b| b.defer(cqe)) {
            return;
        }
        if ops::is_op(user_data) {
            ublk_wake_task(user_data, cqe);
            ops::completed(user_data);
            return;
        }
        if cqe.result() == sys::UBLK_IO_RES_OK as i32 {
            arrived((user_data & 0xffff) as u16);
        }
        ublk_wake_task(user_data, cqe);
    };
    // The batch transport's completions, taken once the ring is free again:
    // handling them submits commands.
    let take_deferred = || {
        if let Some(batch_io) = &run.batch_io {
            batch_io.take_deferred(arrived);
        }
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
        if hosted {
            return super::hosted::ring_ready(&queue).await;
        }
        let idle = types::Timespec::from(IDLE);
        libublk::uring_poll_io_fn::<squeue::Entry>(&queue, Some(idle), 1)
    };
    let reap = |timed_out| {
        reaped_at.set(Instant::now());
        let reaped = if control.is_quiescing() {
            // Reaped without libublk's queue state (see `quiescing`).
            libublk::io::with_task_io_ring_mut(|ring| ublk_reap_events_with_handler(ring, on_cqe))
        } else {
            ublk_reap_io_events_with_update_queue(&queue, timed_out, None, on_cqe)
        };
        take_deferred();
        reaped
    };
    let done = || aborted.get() || tasks.iter().all(|t| t.is_finished()) || quiesce_done();
    let outcome = exe
        .run(libublk::run_uring_tasks(poll, reap, tick, done))
        .await;
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
    // A failed start never fetched: the batch transport has nothing to give back.
    let batch_io_busy = || !aborted.get() && run.batch_io.as_ref().is_some_and(|b| !b.shut_down());
    while (ops::in_flight() > 0 || batch_io_busy()) && Instant::now() < deadline {
        let ts = types::Timespec::from(Duration::from_millis(100));
        let _ = libublk::io::with_task_io_ring_mut(|ring| {
            ring.submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
        });
        let _ = ublk_reap_io_events_with_update_queue(&queue, false, None, on_cqe);
        take_deferred();
        tick();
    }
    drop(control_cancel);
    if batch_io_busy() {
        log::warn!("queue {qid}: the batch transport did not shut down within {DRAIN_TIMEOUT:?}");
    }
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
    if let Some(batch_io) = &run.batch_io {
        return batch_io_task(run, batch_io, tag).await;
    }
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
        let result = answer_io(run, tag, desc, &mut rng).await;
        let committed = &run.committed[tag as usize];
        committed.set(true);
        let next = q.submit_io_commit_cmd(tag, buf(), result).await;
        committed.set(false);
        if let Err(e) = next {
            return log_task_end(q.get_qid(), tag, e);
        }
    }
}

/// The life of one tag on the batch transport: wait for an IO, serve it,
/// hand its result in, until no IO will come.
async fn batch_io_task<T: Target>(run: &QueueRun<'_, T>, batch_io: &BatchIo<'_, '_>, tag: u16) {
    let mut rng = DelayRng::new(run.queue.get_qid(), tag);
    while batch_io.next(tag).await.is_ok() {
        let desc = IoDesc::decode(run.queue.get_iod(tag));
        let result = answer_io(run, tag, desc, &mut rng).await;
        batch_io.commit(tag, result);
    }
}

fn log_task_end(qid: u16, tag: u16, e: UblkError) {
    if !matches!(e, UblkError::QueueIsDown) {
        log::error!("queue {qid} tag {tag}: {e}");
    }
}
