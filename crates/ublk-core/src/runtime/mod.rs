//! The one queue runtime every target is served by.
//!
//! Each queue thread runs libublk's async executor over its own io_uring:
//! one task per tag fetches an IO, hands it to the target's
//! [`Target::handle_io`] and commits the result; backend IO is an
//! operation on the same ring that the task awaits ([`ops`]). Writes are
//! coordinated per batch ([`WriteBatch`]): the IOs one reap produced.
//! Rust targets implement [`Target`] directly; a target served by another
//! runtime (JavaScript) is an adapter of the same trait
//! ([`crate::bridge::BridgeTarget`]).

mod answer;
mod batch;
mod batch_io;
mod eventfd;
pub mod hosted;
mod io;
pub mod ops;
mod queue;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use libublk::io::UblkDev;
use libublk::sys;

use crate::error::Result;
use crate::options::DeviceOptions;
use crate::stats::StatsRegion;

pub use batch::{WriteBatch, WriteExtent};
pub(crate) use eventfd::EventFd;
pub use io::{io_flags, Io, IoBuffers, IoDesc, IoOp};
pub(crate) use queue::QueueControl;

/// Block-layer parameters a target may adjust before the device starts.
pub type DeviceParams = sys::ublk_params;

/// What a device advertises to the block layer; decides its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Refuses writes.
    pub read_only: bool,
    /// Has a volatile cache: the kernel sends FLUSH.
    pub flush: bool,
    /// Honours FUA on writes (the kernel then sends it instead of a flush).
    pub fua: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    /// Moves IO data only through backend operations on the IO
    /// ([`Io::read_into`], [`Io::write_from`]), never through
    /// [`Io::data`]: the device may then run zero copy, with the data
    /// staying in the kernel (see [`crate::DeviceOptions::zero_copy`]).
    pub zero_copy: bool,
}

/// A block device implementation, served with one thread, one io_uring
/// and one task per IO tag on each queue.
///
/// Handlers run on their queue's thread, so per-queue state
/// ([`Target::Queue`]) may hold `Rc`s and `RefCell`s across awaits; state
/// shared by the queues lives in the target itself, which every queue
/// thread shares.
// Futures stay on the thread that made them (a LocalExecutor), so the
// missing `Send` bound the lint warns about is intended.
#[allow(async_fn_in_trait)]
pub trait Target: Send + Sync + 'static {
    /// What one queue keeps for this target, made on its thread.
    type Queue: 'static;

    /// Short kind name ("null", "loop", ...), recorded in the device's info.
    fn kind(&self) -> &str;

    /// What the device advertises: read-only, cache, FUA, discard.
    fn capabilities(&self) -> Capabilities;

    /// `UBLK_F_*` flags this target needs from the driver.
    fn ctrl_flags(&self) -> u64 {
        0
    }

    /// Checks or adjusts the parameters once the capabilities are applied
    /// (a loop target checks its file is large enough, say).
    fn configure(&self, _params: &mut DeviceParams) -> Result<()> {
        Ok(())
    }

    /// Ring entries per queue of `depth` IOs: one command per IO plus room
    /// for the backend operations in flight.
    fn ring_depth(&self, depth: u16) -> u16 {
        depth.saturating_mul(2)
    }

    /// Sets up queue `queue.qid` on its thread, before its first IO.
    fn open_queue(&self, queue: &QueueContext) -> Result<Self::Queue>;

    /// Serves one IO; returns the bytes done, or a negative errno.
    async fn handle_io(&self, queue: &Self::Queue, io: Io<'_>) -> i32;

    /// Batch prologue: runs once per batch, before any of its writes
    /// reaches [`handle_io`](Self::handle_io). An error fails every one of
    /// them with its errno, and they never reach `handle_io`.
    async fn before_writes(&self, _queue: &Self::Queue, _batch: &WriteBatch) -> Result<()> {
        Ok(())
    }

    /// Batch epilogue: runs once every write of the batch has been
    /// handled, whatever the outcome (also after a failed prologue),
    /// concurrently with later IO.
    async fn after_writes(&self, _queue: &Self::Queue, _batch: &WriteBatch) {}

    /// Runs once per reap of the queue's ring, before its tasks run.
    fn before_tasks(&self, _queue: &Self::Queue) {}

    /// Runs once per reap of the queue's ring, after every task the reap
    /// woke has run as far as it could.
    fn after_reap(&self, _queue: &Self::Queue) {}

    /// The queue is going down and its IOs are all done: cancel what the
    /// queue's own background tasks wait for, so their operations end.
    fn close_queue(&self, _queue: &Self::Queue) {}

    /// A thread with an event loop of its own that serves queue `qid`
    /// instead of a queue thread (see [`hosted`]).
    fn queue_host(&self, _qid: u16) -> Option<Arc<dyn hosted::QueueHost>> {
        None
    }

    /// The device is about to stop: fail whatever IO is held outside the
    /// queue threads, so that stopping never waits for it.
    fn stopping(&self) {}

    /// The device stopped and every queue thread has ended: let go of
    /// files and handlers. Not called for a device that failed to start.
    fn stopped(&self) {}
}

/// A queue as its target sees it when the queue starts.
pub struct QueueContext {
    pub qid: u16,
    pub depth: u16,
    /// Served from a host's thread (see [`hosted`]), not a queue thread.
    pub hosted: bool,
    buffers: Arc<IoBuffers>,
    spawner: Spawner,
}

impl QueueContext {
    /// The queue's IO data buffers, one per tag.
    pub fn buffers(&self) -> &Arc<IoBuffers> {
        &self.buffers
    }

    /// Starts background tasks on the queue's executor.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }
}

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Runs futures as tasks on one queue's executor, from that queue's thread.
#[derive(Clone, Default)]
pub struct Spawner(Rc<RefCell<Vec<LocalFuture>>>);

impl Spawner {
    /// The task starts on the queue's next turn, and ends when its future
    /// does or when the queue goes down.
    pub fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.0.borrow_mut().push(Box::pin(task));
    }

    fn take(&self) -> Vec<LocalFuture> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

/// A target with its type erased, as a device holds it.
pub(crate) trait Serve: Send + Sync {
    fn kind(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    fn ctrl_flags(&self) -> u64;
    fn ring_depth(&self, depth: u16) -> u16;
    fn set_params(&self, params: &mut DeviceParams) -> Result<()>;
    fn serve_queue(&self, queue: QueueArgs<'_>) -> Result<()>;
    fn serve_queue_hosted<'a>(
        &'a self,
        queue: QueueArgs<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;
    fn queue_host(&self, qid: u16) -> Option<Arc<dyn hosted::QueueHost>>;
    fn stopping(&self);
    fn stopped(&self);
}

/// What a queue thread is given.
pub(crate) struct QueueArgs<'a> {
    pub qid: u16,
    pub dev: &'a UblkDev,
    pub buffers: &'a Arc<IoBuffers>,
    pub control: &'a Arc<QueueControl>,
    pub io_delay: Option<Duration>,
    /// The device's counters; this queue writes only its own block.
    pub stats: &'a Arc<StatsRegion>,
}

pub(crate) struct Served<T>(pub Arc<T>);

impl<T: Target> Serve for Served<T> {
    fn kind(&self) -> &str {
        self.0.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    fn ctrl_flags(&self) -> u64 {
        self.0.ctrl_flags()
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        self.0.ring_depth(depth)
    }

    fn set_params(&self, params: &mut DeviceParams) -> Result<()> {
        apply_capabilities(self.0.capabilities(), params);
        self.0.configure(params)
    }

    fn serve_queue(&self, queue: QueueArgs<'_>) -> Result<()> {
        queue::serve(&*self.0, queue)
    }

    fn serve_queue_hosted<'a>(
        &'a self,
        queue: QueueArgs<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>> {
        Box::pin(queue::serve_async(&*self.0, queue, true))
    }

    fn queue_host(&self, qid: u16) -> Option<Arc<dyn hosted::QueueHost>> {
        self.0.queue_host(qid)
    }

    fn stopping(&self) {
        self.0.stopping()
    }

    fn stopped(&self) {
        self.0.stopped()
    }
}

/// The basic parameters every device gets from its options.
pub(crate) fn basic_params(opts: &DeviceOptions) -> DeviceParams {
    let lbs_shift = opts.logical_block_size.trailing_zeros() as u8;
    // Physical blocks and IO hints stay at least a page: file systems and
    // the page cache then issue page-sized IO.
    let pbs_shift = lbs_shift.max(12);
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            logical_bs_shift: lbs_shift,
            physical_bs_shift: pbs_shift,
            io_opt_shift: pbs_shift,
            io_min_shift: pbs_shift,
            max_sectors: opts.max_io_bytes >> 9,
            dev_sectors: opts.size >> 9,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The one place capabilities become parameters.
pub(crate) fn apply_capabilities(caps: Capabilities, params: &mut DeviceParams) {
    let basic = &mut params.basic;
    basic.attrs = 0;
    if caps.read_only {
        basic.attrs |= sys::UBLK_ATTR_READ_ONLY;
    }
    if caps.flush {
        basic.attrs |= sys::UBLK_ATTR_VOLATILE_CACHE;
    }
    if caps.fua && !caps.read_only {
        basic.attrs |= sys::UBLK_ATTR_FUA;
    }
    if caps.discard || caps.write_zeroes {
        let lbs = 1u32 << basic.logical_bs_shift;
        let max_sectors = basic.max_sectors;
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.discard = sys::ublk_param_discard {
            discard_granularity: lbs.max(4096),
            max_discard_sectors: if caps.discard { max_sectors } else { 0 },
            max_write_zeroes_sectors: if caps.write_zeroes { max_sectors } else { 0 },
            max_discard_segments: 1,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_become_parameters() {
        let opts = DeviceOptions {
            size: 1 << 30,
            logical_block_size: 4096,
            ..Default::default()
        };
        let mut params = basic_params(&opts);
        assert_eq!(params.basic.dev_sectors, 1 << 21);
        assert_eq!(params.basic.logical_bs_shift, 12);
        apply_capabilities(Capabilities::default(), &mut params);
        assert_eq!(params.basic.attrs, 0, "no cache, no FUA, writable");
        assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        let all = Capabilities {
            read_only: false,
            flush: true,
            fua: true,
            discard: true,
            write_zeroes: false,
            zero_copy: true,
        };
        apply_capabilities(all, &mut params);
        assert_eq!(
            params.basic.attrs,
            sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA
        );
        assert_ne!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(params.discard.max_discard_sectors, params.basic.max_sectors);
        assert_eq!(params.discard.max_write_zeroes_sectors, 0);
        let read_only = Capabilities {
            read_only: true,
            fua: true,
            ..Capabilities::default()
        };
        apply_capabilities(read_only, &mut params);
        assert_eq!(params.basic.attrs, sys::UBLK_ATTR_READ_ONLY);
    }
}
