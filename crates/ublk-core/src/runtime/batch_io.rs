//! The batch transport (`UBLK_F_BATCH_IO`): the queue fetches IOs from the
//! kernel many tags per command, and commits their results many per
//! command, instead of one command per IO. libublk's `UblkBatchQueue` does
//! the commands; this module lets the queue's per-tag tasks wait for their
//! tag's next IO and hand in results, which go to the kernel together once
//! per turn of the queue loop.
//!
//! The IO buffers stay the queue's `IoBuffers`, which JavaScript may still
//! hold after the queue ended: libublk is given aliases of them, and its
//! batch queue is never dropped (dropping it would free them). What that
//! leaks per queue start is its fetch-buffer bookkeeping, a few KiB.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::task::{Poll, Waker};

use libublk::io::{
    UblkBatchBuffers, UblkBatchCompletion, UblkBatchConfig, UblkBatchQueue, UblkQueue,
};
use libublk::UblkError;

use super::io::IoBuffers;
use crate::error::{Error, Result};

/// A queue's batch transport.
pub(crate) struct BatchIo<'q, 'd> {
    queue: RefCell<ManuallyDrop<UblkBatchQueue<'q, 'd>>>,
    /// Per tag: an IO arrived that its task has not taken yet.
    arrived: Vec<Cell<bool>>,
    wakers: Vec<Cell<Option<Waker>>>,
    /// Results not yet handed to the kernel.
    pending: RefCell<Vec<UblkBatchCompletion>>,
    /// The kernel sends no more IO (the fetch commands ended), or a commit
    /// failed: tasks waiting for an IO end.
    down: Cell<bool>,
    deferred: RefCell<Vec<io_uring::cqueue::Entry>>,
}

/// How libublk marks its batch commands' user_data (io_batch.rs): the
/// target bit, and this magic at bit 40. Our own operations never carry it.
const BATCH_MAGIC: u64 = 0x424b;
const BATCH_MAGIC_SHIFT: u32 = 40;

impl<'q, 'd> BatchIo<'q, 'd> {
    /// Prepares every tag with its buffer and queues the fetch commands
    /// (submitted with the queue's first poll). On failure libublk has
    /// told the device the queue failed, and has freed the buffers'
    /// memory: `buffers` no longer owns it.
    pub fn start(queue: &'q UblkQueue<'d>, buffers: &Arc<IoBuffers>) -> Result<BatchIo<'q, 'd>> {
        let qid = queue.get_qid();
        let depth = buffers.depth() as usize;
        // SAFETY: the aliases are handed to the batch queue, which is never
        // dropped on success (`ManuallyDrop`, see the module comment); on
        // failure `new` drops them, freeing the memory, and `disown` makes
        // `buffers` forget it instead of freeing it again. Nothing has
        // used the memory yet: the queue has not started.
        let aliases = unsafe { buffers.aliases() };
        match UblkBatchQueue::new(
            queue,
            UblkBatchBuffers::IoBufs(aliases),
            UblkBatchConfig::new(),
        ) {
            Ok(batch) => Ok(BatchIo {
                queue: RefCell::new(ManuallyDrop::new(batch)),
                arrived: (0..depth).map(|_| Cell::new(false)).collect(),
                wakers: (0..depth).map(|_| Cell::new(None)).collect(),
                pending: RefCell::new(Vec::with_capacity(depth)),
                down: Cell::new(false),
                deferred: RefCell::default(),
            }),
            Err(e) => {
                buffers.disown();
                Err(Error::from_ublk(
                    format!("start batch IO on queue {qid}"),
                    e,
                ))
            }
        }
    }

    /// Waits for the tag's next IO; `QueueIsDown` once none will come.
    pub async fn next(&self, tag: u16) -> std::result::Result<(), UblkError> {
        let i = tag as usize;
        std::future::poll_fn(|cx| {
            if self.arrived[i].replace(false) {
                Poll::Ready(Ok(()))
            } else if self.down.get() {
                Poll::Ready(Err(UblkError::QueueIsDown))
            } else {
                self.wakers[i].set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Hands in the result of the tag's IO; it reaches the kernel with the
    /// next [`BatchIo::flush`].
    pub fn commit(&self, tag: u16, result: i32) {
        self.pending
            .borrow_mut()
            .push(UblkBatchCompletion::new(tag, result));
    }

    /// Keeps a completion of the transport's for [`BatchIo::take_deferred`]
    /// (it is reaped while the ring is borrowed, and handling it submits
    /// commands); false for any other completion.
    pub fn defer(&self, cqe: &io_uring::cqueue::Entry) -> bool {
        let user_data = cqe.user_data();
        let ours = user_data & libublk::UblkUringData::Target as u64 != 0
            && (user_data >> BATCH_MAGIC_SHIFT) & 0xffff == BATCH_MAGIC;
        if ours {
            self.deferred.borrow_mut().push(cqe.clone());
        }
        ours
    }

    /// Handles the completions [`BatchIo::defer`] kept; `arrived` is told
    /// of every tag an IO came for, before its task wakes.
    pub fn take_deferred(&self, mut arrived: impl FnMut(u16)) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        for cqe in &deferred {
            self.on_cqe(cqe, &mut arrived);
        }
    }

    fn on_cqe(&self, cqe: &io_uring::cqueue::Entry, arrived: &mut impl FnMut(u16)) {
        let mut queue = self.queue.borrow_mut();
        let handled = queue.handle_cqe(cqe, |_, tags| {
            for &tag in tags {
                arrived(tag);
                if let Some(cell) = self.arrived.get(tag as usize) {
                    cell.set(true);
                    if let Some(waker) = self.wakers[tag as usize].take() {
                        waker.wake();
                    }
                }
            }
            Ok(())
        });
        match handled {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "queue {}: a completion that looked like batch IO's was not",
                queue.queue().get_qid()
            ),
            Err(e) => log::error!("queue {}: batch IO: {e}", queue.queue().get_qid()),
        }
        if queue.all_fetches_stopped() {
            drop(queue);
            self.go_down();
        }
    }

    /// Hands the results gathered so far to the kernel, in as few
    /// commands as the commit slots allow; what finds no slot waits for
    /// the next call.
    pub fn flush(&self) {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            return;
        }
        let mut queue = self.queue.borrow_mut();
        match queue.try_submit_completions(&pending) {
            Ok(true) => pending.clear(),
            Ok(false) => {}
            Err(e) => {
                // The kernel fails these IOs when the device goes.
                if !queue.queue().is_stopping() {
                    log::error!(
                        "queue {}: committing {} results failed: {e}",
                        queue.queue().get_qid(),
                        pending.len()
                    );
                }
                pending.clear();
                drop(queue);
                self.go_down();
            }
        }
    }

    fn go_down(&self) {
        if self.down.replace(true) {
            return;
        }
        for waker in &self.wakers {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }

    /// Starts giving the fetch buffers back once the queue is down; true
    /// when the kernel holds none of the transport's memory any more.
    pub fn shut_down(&self) -> bool {
        let mut queue = self.queue.borrow_mut();
        if let Err(e) = queue.try_begin_shutdown() {
            log::warn!("queue {}: batch IO shutdown: {e}", queue.queue().get_qid());
        }
        queue.is_shutdown_complete()
    }
}
