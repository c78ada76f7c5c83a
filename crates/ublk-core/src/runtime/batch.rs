//! Write batches: the data-changing IOs one reap of a queue's ring
//! produced, and their coordination. Before any of a batch's writes,
//! discards and write-zeroes reaches the target, the target's prologue
//! ([`crate::Target::before_writes`]) runs once for all of them; once the
//! last of them has been handled, the epilogue runs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::io::{Io, IoDesc, IoOp};
use super::Target;

/// A data-changing IO of a batch, as the batch hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteExtent {
    pub tag: u16,
    pub op: IoOp,
    pub offset: u64,
    pub len: u32,
}

/// The writes one reap of a queue's ring produced.
pub struct WriteBatch {
    qid: u16,
    seq: u64,
    extents: Vec<WriteExtent>,
    /// The prologue's outcome (an errno on failure), once it ran.
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
    pub(crate) async fn serve<T: Target>(&self, target: &T, queue: &T::Queue, io: Io<'_>) -> i32 {
        let prologue = self
            .prologue
            .get_or_init(|| async {
                target
                    .before_writes(queue, self)
                    .await
                    .map_err(|e| e.errno())
            })
            .await;
        match prologue {
            Ok(()) => target.handle_io(queue, io).await,
            Err(errno) => -errno,
        }
    }

    /// Counts one write as handled; true for the last one, whose epilogue
    /// is then due.
    pub(crate) fn finish_one(&self) -> bool {
        let left = self.unfinished.get().saturating_sub(1);
        self.unfinished.set(left);
        left == 0
    }
}

/// The write batches of one queue: writes reaped but not yet sealed into
/// a batch, each tag's batch until its task takes it, and batches whose
/// epilogue is due.
pub(crate) struct Batches {
    qid: u16,
    reaped: RefCell<Vec<(u16, IoDesc)>>,
    sealed: Cell<u64>,
    of_tag: RefCell<Vec<Option<Rc<WriteBatch>>>>,
    finished: RefCell<Vec<Rc<WriteBatch>>>,
}

impl Batches {
    pub fn new(qid: u16, depth: u16) -> Batches {
        Batches {
            qid,
            reaped: RefCell::default(),
            sealed: Cell::new(0),
            of_tag: RefCell::new(vec![None; depth as usize]),
            finished: RefCell::default(),
        }
    }

    /// Records a new IO from the driver, if it changes data.
    pub fn note(&self, tag: u16, desc: IoDesc) {
        if desc.op.modifies() {
            self.reaped.borrow_mut().push((tag, desc));
        }
    }

    /// Makes one batch of the writes noted since the last call; runs
    /// before their tasks do.
    pub fn seal(&self) {
        let mut reaped = self.reaped.borrow_mut();
        if reaped.is_empty() {
            return;
        }
        let extents = reaped
            .drain(..)
            .map(|(tag, desc)| WriteExtent {
                tag,
                op: desc.op,
                offset: desc.offset,
                len: desc.len,
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

    /// The batch of the IO `tag` just received, if it is a write.
    pub fn take(&self, tag: u16) -> Option<Rc<WriteBatch>> {
        self.of_tag.borrow_mut().get_mut(tag as usize)?.take()
    }

    /// Records that one write of `batch` was handled.
    pub fn finish(&self, batch: Rc<WriteBatch>) {
        if batch.finish_one() {
            self.finished.borrow_mut().push(batch);
        }
    }

    /// Batches whose epilogue is due.
    pub fn take_finished(&self) -> Vec<Rc<WriteBatch>> {
        std::mem::take(&mut *self.finished.borrow_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, Result};
    use crate::runtime::io::{IoBuffers, Lends};
    use crate::runtime::{Capabilities, QueueContext};
    use smol::LocalExecutor;
    use std::sync::Mutex;

    /// Records the order in which the hooks and the handlers run; writes
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

    impl Target for Recorder {
        type Queue = ();

        fn kind(&self) -> &str {
            "recorder"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }

        fn open_queue(&self, _queue: &QueueContext) -> Result<()> {
            Ok(())
        }

        async fn handle_io(&self, _queue: &(), mut io: Io<'_>) -> i32 {
            self.push(format!("start {}", io.tag));
            futures_lite::future::yield_now().await;
            let fill = io.tag as u8;
            io.data().unwrap().fill(fill);
            self.push(format!("end {}", io.tag));
            io.done()
        }

        async fn before_writes(&self, _queue: &(), batch: &WriteBatch) -> Result<()> {
            self.push(format!("before {}", batch.extents().len()));
            futures_lite::future::yield_now().await;
            if self.fail_prologue {
                return Err(Error::new(libc::ENOSPC, "journal full"));
            }
            self.push("marked".into());
            Ok(())
        }

        async fn after_writes(&self, _queue: &(), batch: &WriteBatch) {
            self.push(format!("after {}", batch.extents().len()));
        }
    }

    /// Runs a batch of `n` 4 KiB writes as concurrent tasks, the way a
    /// queue does; returns each write's result.
    fn run_batch(target: &Recorder, n: u16) -> Vec<i32> {
        let batches = Batches::new(0, n);
        for tag in 0..n {
            batches.note(tag, write(tag as u64 * 4096));
        }
        batches.seal();
        let buffers = IoBuffers::new(n, 4096);
        let lends: Vec<_> = (0..n).map(|_| std::rc::Rc::new(Lends::default())).collect();
        let results = RefCell::new(vec![0; n as usize]);
        let exe = LocalExecutor::new();
        let tasks: Vec<_> = (0..n)
            .map(|tag| {
                let (batches, results, buffers, lends) = (&batches, &results, &buffers, &lends);
                exe.spawn(async move {
                    let batch = batches.take(tag).unwrap();
                    let io = Io::new(
                        0,
                        tag,
                        write(tag as u64 * 4096),
                        buffers,
                        &lends[tag as usize],
                    );
                    results.borrow_mut()[tag as usize] = batch.serve(target, &(), io).await;
                    batches.finish(batch);
                    for done in batches.take_finished() {
                        target.after_writes(&(), &done).await;
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

    fn write(offset: u64) -> IoDesc {
        IoDesc {
            op: IoOp::Write,
            flags: 0,
            offset,
            len: 4096,
        }
    }

    #[test]
    fn one_reap_makes_one_batch_of_its_writes_only() {
        let batches = Batches::new(3, 8);
        batches.note(0, write(0));
        batches.note(
            1,
            IoDesc {
                op: IoOp::Read,
                ..write(0)
            },
        );
        batches.note(
            2,
            IoDesc {
                op: IoOp::Discard,
                ..write(8192)
            },
        );
        batches.seal();
        batches.note(5, write(4096));
        batches.seal();
        let first = batches.take(0).unwrap();
        assert!(batches.take(1).is_none(), "reads are not batched");
        assert!(Rc::ptr_eq(&first, &batches.take(2).unwrap()));
        assert_eq!((first.qid(), first.seq(), first.extents().len()), (3, 0, 2));
        let second = batches.take(5).unwrap();
        assert_eq!((second.seq(), second.extents()[0].offset), (1, 4096));
        batches.finish(first.clone());
        assert!(batches.take_finished().is_empty());
        batches.finish(first);
        assert_eq!(
            batches.take_finished().len(),
            1,
            "the epilogue is due after the last write"
        );
    }
}
