//! One queue of a bridged device, on its thread: each IO's task hands the
//! IO to the application and serves what the application sends back for
//! it (its result, and backend requests on its buffer) until it is
//! answered; requests outside any IO run as tasks of their own.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::route::{ResolvedWrite, RouteCache};
use super::wire::{
    BackendKind, BackendRequest, Event, IoRequest, Refused, RequestTarget, RouteFailure,
};
use super::{Batch, BatchSink, DeviceShared, QueueShared};
use crate::error::{Error, Result};
use crate::runtime::ops::{self, Op};
use crate::runtime::{Io, IoOp, QueueContext, Spawner, WriteBatch};

/// What the application sent for one IO.
enum Message {
    Result(i32),
    Request(BackendRequest),
    Refused(Refused),
    /// The device is stopping, or the application is gone.
    Cancel,
}

/// One tag as the bridge sees it.
#[derive(Default)]
struct Slot {
    /// Changes with every IO the tag carries.
    seq: Cell<u32>,
    /// The application holds the tag's IO: its messages are taken.
    open: Cell<bool>,
    mailbox: RefCell<VecDeque<Message>>,
    waker: Cell<Option<Waker>>,
    /// The write the gated route took when the tag's batch was announced.
    routed: RefCell<Option<RoutedWrite>>,
}

impl Slot {
    fn push(&self, message: Message) {
        self.mailbox.borrow_mut().push_back(message);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A bridged device's queue, as its thread holds it.
pub struct BridgeQueue {
    qid: u16,
    shared: Arc<QueueShared>,
    device: Arc<DeviceShared>,
    spawner: Spawner,
    slots: Vec<Slot>,
    /// What the next hand-over carries.
    out: RefCell<Batch>,
    /// A hand-over is with the application and not yet taken in.
    outstanding: Cell<bool>,
    route: RefCell<RouteCache>,
    cancelled: Cell<bool>,
    /// The inbox read in flight, cancelled when the queue goes down.
    inbox_read: Cell<Option<u64>>,
    closing: Cell<bool>,
    /// Write batches the application was told of (not those the gated
    /// route took whole).
    announced: RefCell<HashSet<u64>>,
}

/// A write the write route took; a gated route's chunks count it in
/// flight until this is dropped.
pub(crate) struct RoutedWrite {
    route: Arc<ResolvedWrite>,
    span: Option<(usize, usize)>,
}

impl Drop for RoutedWrite {
    fn drop(&mut self) {
        if let (Some(gate), Some((first, last))) = (&self.route.gate, self.span) {
            gate.leave(first, last + 1);
        }
    }
}

/// What became of an IO a route could take.
enum Routed {
    Served(i32),
    Failed(RouteFailure),
    /// No route, or not this IO: the application serves it.
    Elsewhere,
}

impl BridgeQueue {
    pub(crate) fn start(
        ctx: &QueueContext,
        shared: Arc<QueueShared>,
        device: Arc<DeviceShared>,
    ) -> Result<Rc<BridgeQueue>> {
        let queue = Rc::new(BridgeQueue {
            qid: ctx.qid,
            shared,
            device,
            spawner: ctx.spawner(),
            slots: (0..ctx.depth).map(|_| Slot::default()).collect(),
            out: RefCell::new(Batch {
                qid: ctx.qid,
                ..Batch::default()
            }),
            outstanding: Cell::new(false),
            route: RefCell::default(),
            cancelled: Cell::new(false),
            inbox_read: Cell::new(None),
            closing: Cell::new(false),
            announced: RefCell::default(),
        });
        queue.spawner.spawn(read_inbox(queue.clone()));
        Ok(queue)
    }

    /// Serves one IO: from the read route if it can, otherwise by the
    /// application.
    pub(crate) async fn serve(&self, mut io: Io<'_>) -> i32 {
        let slot = &self.slots[io.tag as usize];
        let seq = slot.seq.get().wrapping_add(1);
        slot.seq.set(seq);
        let taken_with_batch = slot.routed.take();
        if self.device.stopping.load(Ordering::Relaxed)
            || self.shared.abandoned.load(Ordering::Relaxed)
        {
            return -libc::EIO;
        }
        let mut route_failure = None;
        // A routed write that failed keeps its chunks counted in flight
        // until the application has answered it.
        let mut held = None;
        let routed = match io.op {
            IoOp::Read if io.len > 0 => self.routed_read(&mut io).await,
            IoOp::Write if io.len > 0 => {
                // With batch hooks, the route took its writes when the
                // batch was announced: the application waits for the rest.
                let taken = match self.device.batch_hooks {
                    true => taken_with_batch,
                    false => self.take_write(io.offset, io.len),
                };
                match taken {
                    Some(write) => {
                        let routed = self.routed_write(&io, &write).await;
                        held = Some(write);
                        routed
                    }
                    None => Routed::Elsewhere,
                }
            }
            _ => Routed::Elsewhere,
        };
        match routed {
            Routed::Served(result) => return result,
            Routed::Failed(failure) => route_failure = Some(failure),
            Routed::Elsewhere => {}
        }
        slot.mailbox.borrow_mut().clear();
        slot.open.set(true);
        self.shared.held.fetch_add(1, Ordering::SeqCst);
        self.out.borrow_mut().ios.push(IoRequest {
            tag: io.tag,
            seq,
            op: io.op,
            flags: io.desc().flags,
            offset: io.offset,
            length: io.len,
            // A routed write that failed was not counted in its batch.
            batch: if held.is_some() { None } else { io.batch() },
            route_failure,
        });
        let result = Serving::new(self, &io, slot).await;
        slot.open.set(false);
        self.shared.held.fetch_sub(1, Ordering::SeqCst);
        drop(held);
        result
    }

    /// The write route's claim on a write at `offset` of `len` bytes, if it
    /// takes it: a gated route only when every chunk it touches is open.
    fn take_write(&self, offset: u64, len: u32) -> Option<RoutedWrite> {
        let mut cache = self.route.borrow_mut();
        let route = self.device.routes.load(&mut cache).write.clone()?;
        let span = match &route.gate {
            None => None,
            Some(gate) => {
                let (first, last) = gate.span(offset, len)?;
                if !gate.enter(first, last) {
                    return None;
                }
                Some((first, last))
            }
        };
        Some(RoutedWrite { route, span })
    }

    /// Takes the batch's writes the gated route takes, before any of them
    /// is served, and announces the batch to the application with the
    /// count of IOs it will get; a batch the route took whole is not
    /// announced at all.
    pub(crate) fn announce_batch(&self, batch: &WriteBatch) {
        let mut count = 0;
        for extent in batch.extents() {
            let routed = match extent.op {
                IoOp::Write if extent.len > 0 => self.take_write(extent.offset, extent.len),
                _ => None,
            };
            match (routed, self.slots.get(extent.tag as usize)) {
                (Some(write), Some(slot)) => *slot.routed.borrow_mut() = Some(write),
                _ => count += 1,
            }
        }
        if count > 0 {
            self.announced.borrow_mut().insert(batch.seq());
            self.tell(Event::BatchOpen {
                batch: batch.seq(),
                count,
            });
        }
    }

    /// Every IO of the batch is done: the application's epilogue runs, if
    /// it was told of the batch.
    pub(crate) fn finish_batch(&self, batch: &WriteBatch) {
        if self.announced.borrow_mut().remove(&batch.seq()) {
            self.tell(Event::BatchDone { batch: batch.seq() });
        }
    }

    /// Sends a read to the file the read route picks.
    async fn routed_read(&self, io: &mut Io<'_>) -> Routed {
        let (handle, read) = {
            let mut cache = self.route.borrow_mut();
            let Some(route) = &self.device.routes.load(&mut cache).read else {
                return Routed::Elsewhere;
            };
            let (handle, file) = route.pick(io.offset);
            let Some(file_offset) = route.file_offset.checked_add(io.offset) else {
                return Routed::Elsewhere;
            };
            match io.read_into(file, file_offset, 0, io.len) {
                Ok(read) => (*handle, read),
                Err(_) => return Routed::Elsewhere,
            }
        };
        self.device.routes.count_read();
        let result = read.await;
        if result < 0 {
            return Routed::Failed(RouteFailure {
                file: handle,
                error: result,
            });
        }
        // Past the end of the file: the rest reads as zeroes, where the
        // data is in user space; a zero-copy read that came up short fails.
        if (result as u32) < io.len {
            let Some(data) = io.data() else {
                return Routed::Failed(RouteFailure {
                    file: handle,
                    error: -libc::EIO,
                });
            };
            let read = (result as usize).min(data.len());
            data[read..].fill(0);
        }
        Routed::Served(io.len as i32)
    }

    /// Sends a write the route took to every file of the route.
    async fn routed_write(&self, io: &Io<'_>, write: &RoutedWrite) -> Routed {
        let failure = self.write_copies(io, &write.route).await;
        self.device.routes.count_write();
        match failure {
            None => Routed::Served(io.len as i32),
            Some(failure) => {
                if let Some(gate) = &write.route.gate {
                    gate.count_failure();
                }
                Routed::Failed(failure)
            }
        }
    }

    /// Writes the IO to each of the route's files at once; the first
    /// failure, once every copy is done.
    async fn write_copies(&self, io: &Io<'_>, route: &ResolvedWrite) -> Option<RouteFailure> {
        let Some(file_offset) = route.file_offset.checked_add(io.offset) else {
            return Some(RouteFailure {
                file: route.files[0].0,
                error: -libc::EINVAL,
            });
        };
        let rw_flags = if io.fua { libc::RWF_DSYNC } else { 0 };
        // Every copy is submitted before any is awaited: they run together.
        let copies: Vec<_> = route
            .files
            .iter()
            .map(|(handle, file)| {
                (
                    *handle,
                    io.write_issued(file, file_offset, 0, io.len, rw_flags, route.issue),
                )
            })
            .collect();
        let mut failure = None;
        for (handle, copy) in copies {
            let error = match copy {
                Ok(write) => match write.await {
                    result if result == io.len as i32 => continue,
                    result if result < 0 => result,
                    _ => -libc::EIO,
                },
                // Refused before it ran (a read-only file): failed there.
                Err(e) => -e.errno(),
            };
            failure.get_or_insert(RouteFailure {
                file: handle,
                error,
            });
        }
        failure
    }

    /// Tells the application something with the next hand-over.
    pub(crate) fn tell(&self, event: Event) {
        self.out.borrow_mut().events.push(event);
    }

    /// Reports a backend result, unless its request asked for none.
    fn answer(&self, id: u32, result: i32) {
        if id != 0 {
            self.out.borrow_mut().backend.push((id, result));
        }
    }

    /// Hands what has gathered to the application, unless it has not taken
    /// in the last hand-over yet.
    pub(crate) fn hand_over(&self) {
        if self.outstanding.get() {
            return;
        }
        let batch = {
            let mut out = self.out.borrow_mut();
            if out.is_empty() {
                return;
            }
            std::mem::replace(
                &mut *out,
                Batch {
                    qid: self.qid,
                    ..Batch::default()
                },
            )
        };
        match self.device.sink.deliver(batch) {
            Ok(()) => self.outstanding.set(true),
            Err(batch) => {
                // Nobody is listening any more: fail the IOs rather than hold them.
                for io in batch.ios {
                    if let Some(slot) = self.slot_of(io.tag, io.seq) {
                        slot.push(Message::Cancel);
                    }
                }
            }
        }
    }

    /// The queue is down: the inbox read ends.
    pub(crate) fn close(&self) {
        self.closing.set(true);
        if let Some(user_data) = self.inbox_read.take() {
            // Dropped at once: the runtime keeps it until it completes.
            let _ = ops::cancel(user_data);
        }
    }

    fn slot_of(&self, tag: u16, seq: u32) -> Option<&Slot> {
        self.slots
            .get(tag as usize)
            .filter(|s| s.open.get() && s.seq.get() == seq)
    }

    /// Takes in what the thread that hosts the queue posted while it
    /// polled it (no wake-up came through the ring for it).
    pub(crate) fn take_posted(self: &Rc<Self>) {
        if self.shared.inbox.take_posted_locally() {
            self.take_inbox();
        }
    }

    /// Takes in what the application posted.
    fn take_inbox(self: &Rc<Self>) {
        let pending = self.shared.inbox.take();
        if pending.batch_taken {
            self.outstanding.set(false);
        }
        for r in pending.results {
            if let Some(slot) = self.slot_of(r.tag, r.seq) {
                slot.push(Message::Result(r.result));
            }
        }
        for request in pending.requests {
            match request {
                Ok(req) => match req.target {
                    RequestTarget::Io { tag, seq } => match self.slot_of(tag, seq) {
                        Some(slot) => slot.push(Message::Request(req)),
                        // A request from an IO already answered must not
                        // reach the tag's next IO.
                        None => self.answer(req.id, -libc::ESTALE),
                    },
                    _ => self.run_alone(req),
                },
                Err(refused) => match refused.io.and_then(|(tag, seq)| self.slot_of(tag, seq)) {
                    Some(slot) => slot.push(Message::Refused(refused)),
                    None => self.answer(refused.id, -refused.error.errno()),
                },
            }
        }
        let stopping = self.device.stopping.load(Ordering::SeqCst)
            || self.shared.abandoned.load(Ordering::SeqCst);
        if stopping && !self.cancelled.get() {
            self.cancelled.set(true);
            // IOs not handed over yet are failed with the rest.
            self.out.borrow_mut().ios.clear();
            for slot in self.slots.iter().filter(|s| s.open.get()) {
                slot.push(Message::Cancel);
            }
        }
    }

    /// Runs a request that belongs to no IO as a task of its own.
    fn run_alone(self: &Rc<Self>, req: BackendRequest) {
        match self.prepare(&req, None) {
            Ok((op, done)) => {
                let queue = self.clone();
                self.spawner.spawn(async move {
                    let result = op.await;
                    queue.answer(req.id, done.result(result));
                });
            }
            Err(e) => self.answer(req.id, -e.errno()),
        }
    }

    /// Checks a request and submits it; `io` is the IO it belongs to.
    fn prepare(&self, req: &BackendRequest, io: Option<&Io<'_>>) -> Result<(Op, Done)> {
        if req.kind == BackendKind::Sleep {
            let op = ops::timeout(Duration::from_micros(req.length as u64))?;
            return Ok((op, Done::Sleep));
        }
        let file = self.device.files.get(req.file).ok_or_else(|| {
            Error::new(
                libc::EBADF,
                format!("no backing file {} in this device", req.file),
            )
        })?;
        let staging = |handle: u32| {
            self.device.staging.get(handle).ok_or_else(|| {
                Error::new(
                    libc::EBADF,
                    format!("no staging buffer {handle} in this device"),
                )
            })
        };
        let (off, buf_off, len) = (req.file_offset, req.buf_offset, req.length);
        // A zero-copy target gets the same refusals on the copy path as in
        // zero copy, so it behaves alike on every kernel.
        let direction = |io: &Io<'_>, fill: bool| {
            if self.device.zero_copy {
                ops::check_zero_copy_direction(io.op, fill)
            } else {
                Ok(())
            }
        };
        let op = match (req.kind, req.target, io) {
            (BackendKind::Read, RequestTarget::Io { .. }, Some(io)) => {
                direction(io, true)?;
                io.read_into(&file, off, buf_off, len)?
            }
            (BackendKind::Write, RequestTarget::Io { .. }, Some(io)) => {
                direction(io, false)?;
                io.write_from(&file, off, buf_off, len, req.rw_flags)?
            }
            (BackendKind::Read, RequestTarget::Staging(h), _) => {
                ops::read_staged(&file, off, &staging(h)?, buf_off, len)?
            }
            (BackendKind::Write, RequestTarget::Staging(h), _) => {
                ops::write_staged(&file, off, &staging(h)?, buf_off, len, req.rw_flags)?
            }
            (BackendKind::Fsync, ..) => ops::fsync(&file, false)?,
            (BackendKind::Fdatasync, ..) => ops::fsync(&file, true)?,
            (BackendKind::Fallocate(mode), ..) => ops::fallocate(&file, mode, off, len as u64)?,
            _ => return Err(Error::invalid("a read or write without a buffer")),
        };
        let done = match (req.completes_io, req.kind) {
            (true, kind) => Done::Completes {
                is_read: kind == BackendKind::Read,
                buf_offset: buf_off,
                length: len,
                report_failure: req.report_failure,
            },
            _ => Done::Plain,
        };
        Ok((op, done))
    }
}

/// What a finished request means.
#[derive(Clone, Copy)]
enum Done {
    /// Its result goes to the application.
    Plain,
    /// A timeout that ran its course is a sleep that succeeded.
    Sleep,
    /// It completes its IO.
    Completes {
        is_read: bool,
        buf_offset: u32,
        length: u32,
        report_failure: bool,
    },
}

impl Done {
    fn result(self, result: i32) -> i32 {
        match self {
            Done::Sleep if result == -libc::ETIME => 0,
            _ => result,
        }
    }
}

struct Running {
    op: Op,
    id: u32,
    done: Done,
}

/// An IO while the application holds it: its messages, and the backend
/// operations on its buffer, until it is answered and they are all done.
struct Serving<'q, 'b, 'io> {
    queue: &'q BridgeQueue,
    io: &'b Io<'io>,
    slot: &'q Slot,
    running: Vec<Running>,
    /// The application's answer.
    answer: Option<i32>,
    /// A completing request took the IO over: the application's answers
    /// count only if the IO is handed back.
    taken_over: bool,
    /// Completing requests still running.
    completing: u32,
    /// The first failure among them.
    completing_error: Option<i32>,
    /// A completing request that reports its outcome failed: the
    /// application answers.
    handed_back: bool,
    /// Outcomes of requests that report them, held until every completing
    /// request is done: the application gets all of an IO's in one
    /// hand-over (a mirrored write's copies), and then knows it is done.
    reports: Vec<(u32, i32)>,
    cancelled: bool,
}

impl<'q, 'b, 'io> Serving<'q, 'b, 'io> {
    fn new(queue: &'q BridgeQueue, io: &'b Io<'io>, slot: &'q Slot) -> Self {
        Serving {
            queue,
            io,
            slot,
            running: Vec::new(),
            answer: None,
            taken_over: false,
            completing: 0,
            completing_error: None,
            handed_back: false,
            reports: Vec::new(),
            cancelled: false,
        }
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Result(result) => {
                if !self.taken_over || self.handed_back {
                    self.answer.get_or_insert(result);
                }
            }
            Message::Request(req) => match self.queue.prepare(&req, Some(self.io)) {
                Ok((op, done)) => {
                    if let Done::Completes { .. } = done {
                        self.taken_over = true;
                        self.completing += 1;
                    }
                    self.running.push(Running {
                        op,
                        id: req.id,
                        done,
                    });
                }
                Err(e) => self.refuse(req.id, req.completes_io, req.report_failure, e.errno()),
            },
            Message::Refused(r) => {
                self.refuse(r.id, r.completes_io, r.report_failure, r.error.errno())
            }
            Message::Cancel => self.cancelled = true,
        }
    }

    /// A request that cannot run: its id gets the errno; one that was to
    /// complete the IO fails the IO with it, unless its failures go back to
    /// the application.
    fn refuse(&mut self, id: u32, completes_io: bool, report_failure: bool, errno: i32) {
        if !completes_io {
            self.queue.answer(id, -errno);
            return;
        }
        self.taken_over = true;
        if report_failure {
            self.handed_back = true;
            self.reports.push((id, -errno));
        } else {
            self.queue.answer(id, -errno);
            self.completing_error.get_or_insert(-errno);
        }
    }

    fn on_done(&mut self, run: Running, result: i32) {
        let Done::Completes {
            is_read,
            buf_offset,
            length,
            report_failure,
        } = run.done
        else {
            self.queue.answer(run.id, run.done.result(result));
            return;
        };
        self.completing -= 1;
        let ok = if is_read {
            result == length as i32
                || (result >= 0 && self.zero_fill(buf_offset + result as u32, buf_offset + length))
        } else {
            result == length as i32
        };
        let outcome = match (ok, result) {
            (true, _) => length as i32,
            (false, error) if error < 0 => error,
            (false, _) => -libc::EIO,
        };
        if report_failure {
            self.handed_back |= outcome < 0;
            self.reports.push((run.id, outcome));
        } else if outcome < 0 {
            self.completing_error.get_or_insert(outcome);
        }
    }

    /// Past the end of a file, a read's rest reads as zeroes; false where
    /// the IO's data is not in user space (zero copy), which fails it.
    fn zero_fill(&self, from: u32, to: u32) -> bool {
        let Some((base, _)) = self.io.buffers.buffer(self.io.tag) else {
            return false;
        };
        // SAFETY: [from, to) lies inside the IO's data, as checked when the
        // read was submitted, and the kernel is done with that read.
        unsafe { std::ptr::write_bytes(base.add(from as usize), 0, (to - from) as usize) };
        true
    }

    /// The IO's result, once known.
    fn result(&self) -> Option<i32> {
        if self.cancelled {
            return Some(-libc::EIO);
        }
        if !self.taken_over {
            return self.answer;
        }
        if self.completing > 0 {
            return None;
        }
        match (self.completing_error, self.handed_back) {
            (Some(error), _) => Some(error),
            (None, true) => self.answer,
            (None, false) => Some(self.io.len as i32),
        }
    }
}

impl Future for Serving<'_, '_, '_> {
    type Output = i32;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let this = self.get_mut();
        loop {
            let message = this.slot.mailbox.borrow_mut().pop_front();
            match message {
                Some(message) => this.on_message(message),
                None => break,
            }
        }
        // New operations are polled here for the first time, which
        // registers this task to be woken by their completion.
        let mut i = 0;
        while i < this.running.len() {
            match Pin::new(&mut this.running[i].op).poll(cx) {
                Poll::Ready(result) => {
                    let run = this.running.swap_remove(i);
                    this.on_done(run, result);
                }
                Poll::Pending => i += 1,
            }
        }
        if this.completing == 0 {
            for (id, outcome) in this.reports.drain(..) {
                this.queue.answer(id, outcome);
            }
        }
        if this.running.is_empty() {
            if let Some(result) = this.result() {
                return Poll::Ready(result);
            }
        }
        this.slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Takes in what the application posts, each time it wakes the queue.
async fn read_inbox(queue: Rc<BridgeQueue>) {
    while !queue.closing.get() {
        let owner = queue.shared.clone();
        let read = match ops::read_eventfd(queue.shared.inbox.eventfd(), owner) {
            Ok(read) => read,
            Err(e) => {
                log::error!("queue {}: cannot read the inbox: {e}", queue.qid);
                return;
            }
        };
        queue.inbox_read.set(Some(read.user_data()));
        let result = read.await;
        queue.inbox_read.set(None);
        if result == -libc::ECANCELED || queue.closing.get() {
            return;
        }
        queue.take_inbox();
    }
}
