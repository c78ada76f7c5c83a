//! The loop one queue thread runs for a bridged target.
//!
//! Each CQE is an IO command from the driver, the inbox's eventfd firing,
//! or a backend operation finishing. New IOs and finished backend
//! operations are collected and handed to the application once per reap.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkIORes};

use super::backing::BackingFile;
use super::route::{ResolvedRoute, RouteCache};
use super::staging::StagingBuffer;
use super::{
    BackendKind, BackendRequest, Batch, DeviceShared, FailedRead, IoRequest, IoResult, QueueShared,
};
use crate::error::Result;
use crate::target::open_queue;

const OP_WAKE: u32 = 1;
const OP_BACKEND: u32 = 2;
const OP_CANCEL: u32 = 3;
/// Largest errno the kernel uses; anything more negative is not an errno.
const MAX_ERRNO: i32 = 4095;

#[derive(Default, Clone, Copy)]
struct TagState {
    seq: u32,
    length: u32,
    with_app: bool,
    backend_inflight: u32,
    /// A result that waits for the tag's backend operations to finish,
    /// so the buffer is not reused while the kernel still writes into it.
    deferred: Option<i32>,
    /// Requests that complete this IO when the last of them finishes.
    completing: u32,
    /// The first failure among them.
    completing_error: Option<i32>,
    /// A completing read failed and was reported: the application has the
    /// IO back and answers it itself.
    handed_back: bool,
}

/// A checked backend request, with what must outlive its SQE.
struct Prepared {
    sqe: squeue::Entry,
    file: Option<Arc<BackingFile>>,
    /// A sleep's timespec, which the kernel reads until it completes.
    timeout: Option<Box<types::Timespec>>,
    /// The staging buffer the kernel reads or writes until it completes.
    staging: Option<Arc<StagingBuffer>>,
}

/// A request that completes its IO when done.
struct Completes {
    buf_offset: u32,
    length: u32,
    is_read: bool,
    report_failure: bool,
    /// Sent by the read route: if it fails, the IO goes to the application.
    routed: Option<RoutedRead>,
}

/// What the application needs of a routed read that failed.
struct RoutedRead {
    file: u32,
    offset: u64,
    flags: u32,
}

struct InflightBackend {
    id: u32,
    tag: Option<u16>,
    completes: Option<Completes>,
    /// A sleep's timespec, which the kernel reads until it completes.
    timeout: Option<Box<types::Timespec>>,
    /// Keeps the fd open until the kernel is done with it.
    _file: Option<Arc<BackingFile>>,
    /// Keeps the memory alive until the kernel is done with it.
    _staging: Option<Arc<StagingBuffer>>,
}

struct QueueState {
    qid: u16,
    shared: Arc<QueueShared>,
    device: DeviceShared,
    route: RouteCache,
    cancelled: bool,
    tags: Vec<TagState>,
    backend: Vec<Option<InflightBackend>>,
    free_slots: Vec<u32>,
    /// The eventfd read lands here; boxed so its address stays put.
    wake_buf: Box<u64>,
    wake_armed: bool,
    out: Batch,
    /// A batch is with the application and not yet taken in: new work
    /// waits in `out`, so hand-overs grow with load instead of multiplying.
    batch_outstanding: bool,
}

pub(crate) fn serve(
    qid: u16,
    dev: &UblkDev,
    shared: Arc<QueueShared>,
    device: DeviceShared,
) -> Result<()> {
    let queue = open_queue(qid, dev, &shared.buffers)?;
    let depth = shared.depth() as usize;
    let mut state = QueueState {
        qid,
        shared,
        device,
        route: RouteCache::default(),
        cancelled: false,
        tags: vec![TagState::default(); depth],
        backend: Vec::new(),
        free_slots: Vec::new(),
        wake_buf: Box::new(0),
        wake_armed: false,
        out: Batch {
            qid,
            ..Default::default()
        },
        batch_outstanding: false,
    };
    state.arm_wake(&queue);
    queue.wait_and_handle_io(|q, tag, ctx| state.on_cqe(q, tag, ctx));
    state.drain(&queue);
    Ok(())
}

/// libublk packs 16 bits of tag and, after its 32-bit shift, 8 bits of
/// target data into a target IO's user_data: room for 2^24 slots.
const MAX_SLOTS: usize = 1 << 24;

fn target_user_data(op: u32, slot: u32) -> u64 {
    UblkIOCtx::build_user_data((slot & 0xffff) as u16, op, (slot >> 16) & 0xff, true)
}

fn slot_of(user_data: u64) -> u32 {
    ((user_data & 0xffff) | (((user_data >> 24) & 0xff) << 16)) as u32
}

impl QueueState {
    fn on_cqe(&mut self, q: &UblkQueue, tag: u16, ctx: &UblkIOCtx) {
        if !ctx.is_tgt_io() {
            self.on_new_io(q, tag);
        } else {
            let user_data = ctx.user_data();
            match UblkIOCtx::user_data_to_op(user_data) {
                OP_WAKE => {
                    self.wake_armed = false;
                    self.on_wake(q);
                }
                OP_BACKEND => self.on_backend_done(q, slot_of(user_data), ctx.result()),
                _ => {}
            }
        }
        if ctx.is_last_cqe() {
            self.flush(q);
        }
    }

    fn on_new_io(&mut self, q: &UblkQueue, tag: u16) {
        let iod = q.get_iod(tag);
        let length = iod.nr_sectors << 9;
        if self.device.stopping.load(Ordering::Relaxed) {
            self.tags[tag as usize].length = length;
            self.complete(q, tag, -libc::EIO);
            return;
        }
        let st = &mut self.tags[tag as usize];
        st.seq = st.seq.wrapping_add(1);
        st.length = length;
        st.with_app = true;
        st.deferred = None;
        st.completing = 0;
        st.completing_error = None;
        st.handed_back = false;
        let (seq, op, flags, offset) = (
            st.seq,
            iod.op_flags & 0xff,
            iod.op_flags >> 8,
            iod.start_sector << 9,
        );
        if op == libublk::sys::UBLK_IO_OP_READ && length > 0 {
            if let Some(route) = self.device.routes.load(&mut self.route).cloned() {
                if self.route_read(q, tag, &route, offset, flags) {
                    return;
                }
            }
        }
        self.out.ios.push(IoRequest {
            tag,
            seq,
            op: op as u8,
            flags,
            offset,
            length,
            failed_read: None,
        });
    }

    /// Sends a new read straight to the file the route picks, completing
    /// the IO when it finishes; false if it cannot go (the application
    /// then gets it as usual).
    fn route_read(
        &mut self,
        q: &UblkQueue,
        tag: u16,
        route: &ResolvedRoute,
        offset: u64,
        flags: u32,
    ) -> bool {
        let length = self.tags[tag as usize].length;
        let (index, file) = route.pick(offset);
        let Some(file_offset) = route.file_offset.checked_add(offset) else {
            return false;
        };
        if length as usize > self.shared.buf_bytes {
            return false;
        }
        let Some(slot) = self.take_slot() else {
            return false;
        };
        // The whole IO, in the tag's own buffer: the driver sized both.
        let sqe = opcode::Read::new(
            types::Fd(file.raw_fd()),
            self.shared.buffers[tag as usize].as_mut_ptr(),
            length,
        )
        .offset(file_offset)
        .build();
        self.device.routes.count_served();
        let inflight = InflightBackend {
            id: 0,
            tag: Some(tag),
            completes: Some(Completes {
                buf_offset: 0,
                length,
                is_read: true,
                report_failure: true,
                routed: Some(RoutedRead {
                    file: *index,
                    offset,
                    flags,
                }),
            }),
            timeout: None,
            _file: Some(file.clone()),
            _staging: None,
        };
        self.launch(q, slot, sqe, inflight);
        true
    }

    /// Records a backend operation in `slot`, counts it against its IO's
    /// tag, and submits it; a submission that fails finishes it with EIO.
    fn launch(&mut self, q: &UblkQueue, slot: u32, sqe: squeue::Entry, op: InflightBackend) {
        if let Some(tag) = op.tag {
            let st = &mut self.tags[tag as usize];
            st.backend_inflight += 1;
            if op.completes.is_some() {
                st.completing += 1;
            }
        }
        self.backend[slot as usize] = Some(op);
        if let Err(e) = q.ublk_submit_sqe_sync(sqe.user_data(target_user_data(OP_BACKEND, slot))) {
            log::error!("queue {}: submit backend op: {e}", self.qid);
            self.on_backend_done(q, slot, -libc::EIO);
        }
    }

    /// A free backend slot, or none when all 2^24 are in use.
    fn take_slot(&mut self) -> Option<u32> {
        if let Some(slot) = self.free_slots.pop() {
            return Some(slot);
        }
        if self.backend.len() >= MAX_SLOTS {
            return None;
        }
        self.backend.push(None);
        Some((self.backend.len() - 1) as u32)
    }

    fn complete(&mut self, q: &UblkQueue, tag: u16, result: i32) {
        self.tags[tag as usize].with_app = false;
        let buf = BufDesc::Slice(self.shared.buffers[tag as usize].as_slice());
        // Fails only on a buffer/flag mismatch, which this loop never makes.
        let _ = q.complete_io_cmd_unified(tag, buf, Ok(UblkIORes::Result(result)));
    }

    fn on_wake(&mut self, q: &UblkQueue) {
        let pending = self.shared.inbox.take();
        if pending.batch_taken {
            self.batch_outstanding = false;
        }
        for r in pending.results {
            self.on_result(q, r);
        }
        for req in pending.requests {
            self.submit_backend(q, req);
        }
        if self.device.stopping.load(Ordering::SeqCst) && !self.cancelled {
            self.cancelled = true;
            // IOs not yet handed over are failed below with the rest.
            self.out.ios.clear();
            for tag in 0..self.tags.len() as u16 {
                let st = &mut self.tags[tag as usize];
                if !st.with_app {
                    continue;
                }
                if st.backend_inflight > 0 {
                    st.deferred = Some(-libc::EIO);
                } else {
                    self.complete(q, tag, -libc::EIO);
                }
            }
        }
        self.arm_wake(q);
    }

    fn on_result(&mut self, q: &UblkQueue, r: IoResult) {
        let Some(st) = self.tags.get_mut(r.tag as usize) else {
            return;
        };
        // A late or repeated answer for an IO that is already completed
        // (timed out, cancelled) must not complete the tag's next IO; an IO
        // handed to completing requests is theirs to complete.
        if !st.with_app || st.seq != r.seq || st.deferred.is_some() || st.completing > 0 {
            return;
        }
        let result = if r.result < -MAX_ERRNO || r.result > st.length as i32 {
            -libc::EIO
        } else {
            r.result
        };
        if st.backend_inflight > 0 {
            st.deferred = Some(result);
        } else {
            self.complete(q, r.tag, result);
        }
    }

    fn submit_backend(&mut self, q: &UblkQueue, req: BackendRequest) {
        let Prepared {
            sqe,
            file,
            timeout,
            staging,
        } = match self.prepare_backend(&req) {
            Ok(prepared) => prepared,
            Err(errno) => return self.refuse(q, &req, errno),
        };
        let uses_buffer =
            matches!(req.kind, BackendKind::Read | BackendKind::Write) && staging.is_none();
        let Some(slot) = self.take_slot() else {
            return self.refuse(q, &req, libc::EAGAIN);
        };
        let completes = (uses_buffer && req.completes_io).then_some(Completes {
            buf_offset: req.buf_offset,
            length: req.length,
            is_read: req.kind == BackendKind::Read,
            report_failure: req.report_failure,
            routed: None,
        });
        let op = InflightBackend {
            id: req.id,
            tag: uses_buffer.then_some(req.tag),
            completes,
            timeout,
            _file: file,
            _staging: staging,
        };
        self.launch(q, slot, sqe, op);
    }

    /// Answers a request that cannot run; one that was to complete its IO
    /// fails the IO, unless its failures go back to the application.
    fn refuse(&mut self, q: &UblkQueue, req: &BackendRequest, errno: i32) {
        self.answer(req.id, -errno);
        if req.completes_io && !req.report_failure {
            self.fail_completing(q, req.tag, req.seq, -errno);
        }
    }

    /// Checks a request against the file table and the IO's buffer; the
    /// application's numbers never become a pointer without passing here.
    fn prepare_backend(&self, req: &BackendRequest) -> std::result::Result<Prepared, i32> {
        if req.kind == BackendKind::Sleep {
            let ts = Box::new(
                types::Timespec::new()
                    .nsec(req.length % 1_000_000 * 1000)
                    .sec(req.length as u64 / 1_000_000),
            );
            return Ok(Prepared {
                sqe: opcode::Timeout::new(&*ts as *const types::Timespec).build(),
                file: None,
                timeout: Some(ts),
                staging: None,
            });
        }
        let file = self.device.files.get(req.file).ok_or(libc::EBADF)?;
        let fd = types::Fd(file.raw_fd());
        req.file_offset
            .checked_add(req.length as u64)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or(libc::EINVAL)?;
        let mut staging = None;
        let sqe = match req.kind {
            BackendKind::Read | BackendKind::Write => {
                let ptr = match req.staging {
                    Some(index) => {
                        if req.completes_io {
                            return Err(libc::EINVAL);
                        }
                        let buffer = self.device.staging.get(index).ok_or(libc::EBADF)?;
                        let ptr = buffer
                            .range(req.buf_offset, req.length)
                            .ok_or(libc::EINVAL)?;
                        // Held with the SQE, so the memory outlives the operation.
                        staging = Some(buffer);
                        ptr
                    }
                    None => self.io_buffer_range(req)?,
                };
                if req.rw_flags & !(libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
                    return Err(libc::EINVAL);
                }
                if req.kind == BackendKind::Read {
                    opcode::Read::new(fd, ptr, req.length)
                        .offset(req.file_offset)
                        .build()
                } else {
                    if file.read_only {
                        return Err(libc::EROFS);
                    }
                    opcode::Write::new(fd, ptr, req.length)
                        .offset(req.file_offset)
                        .rw_flags(req.rw_flags)
                        .build()
                }
            }
            BackendKind::Fsync => opcode::Fsync::new(fd).build(),
            BackendKind::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            BackendKind::Sleep => unreachable!("handled above"),
            BackendKind::Fallocate(mode) => {
                if file.read_only {
                    return Err(libc::EROFS);
                }
                if req.length == 0 {
                    return Err(libc::EINVAL);
                }
                opcode::Fallocate::new(fd, req.length as u64)
                    .offset(req.file_offset)
                    .mode(mode)
                    .build()
            }
        };
        Ok(Prepared {
            sqe,
            file: Some(file),
            timeout: None,
            staging,
        })
    }

    /// The part of an outstanding IO's buffer a request names.
    fn io_buffer_range(&self, req: &BackendRequest) -> std::result::Result<*mut u8, i32> {
        let st = self.tags.get(req.tag as usize).ok_or(libc::EINVAL)?;
        if !st.with_app || st.seq != req.seq || st.deferred.is_some() {
            return Err(libc::ESTALE);
        }
        // Within this IO's data, which is also within the tag's buffer.
        let in_buffer = (req.buf_offset as usize)
            .checked_add(req.length as usize)
            .is_some_and(|e| e <= st.length as usize && e <= self.shared.buf_bytes);
        if req.length == 0 || !in_buffer {
            return Err(libc::EINVAL);
        }
        // SAFETY: the range was checked to lie inside the tag's buffer,
        // which outlives the ring (held by `shared`).
        Ok(unsafe {
            self.shared.buffers[req.tag as usize]
                .as_mut_ptr()
                .add(req.buf_offset as usize)
        })
    }

    fn on_backend_done(&mut self, q: &UblkQueue, slot: u32, result: i32) {
        let Some(op) = self.backend.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(slot);
        // A timeout that ran its course is a sleep that succeeded.
        let result = if op.timeout.is_some() && result == -libc::ETIME {
            0
        } else {
            result
        };
        // A completing request speaks through its IO's completion; one
        // that reports failures speaks only when it failed.
        let failed = result < 0
            || op
                .completes
                .as_ref()
                .is_some_and(|c| !c.is_read && result != c.length as i32);
        if op
            .completes
            .as_ref()
            .map_or(true, |c| c.report_failure && failed)
        {
            self.answer(op.id, result);
        }
        let Some(tag) = op.tag else {
            return;
        };
        if let Some(c) = op.completes {
            self.on_completing_done(tag, &c, result);
        }
        let st = &mut self.tags[tag as usize];
        st.backend_inflight -= 1;
        if st.backend_inflight == 0 {
            if let Some(r) = st.deferred.take() {
                self.complete(q, tag, r);
            }
        }
    }

    /// Reports a backend result to the application, unless it asked for none.
    fn answer(&mut self, id: u32, result: i32) {
        if id != 0 {
            self.out.backend.push((id, result));
        }
    }

    /// A completing request was refused: the application already gave its
    /// answer away, so the IO fails here (now, or when the tag's other
    /// requests finish).
    fn fail_completing(&mut self, q: &UblkQueue, tag: u16, seq: u32, error: i32) {
        let Some(st) = self.tags.get_mut(tag as usize) else {
            return;
        };
        if !st.with_app || st.seq != seq || st.deferred.is_some() {
            return;
        }
        st.completing_error.get_or_insert(error);
        if st.completing > 0 {
            return;
        }
        let result = st.completing_error.take().unwrap_or(error);
        if st.backend_inflight > 0 {
            st.deferred = Some(result);
        } else {
            self.complete(q, tag, result);
        }
    }

    /// Accounts one finished request that completes its IO; the last one
    /// leaves the IO's result in `deferred`.
    fn on_completing_done(&mut self, tag: u16, c: &Completes, result: i32) {
        let ok = if c.is_read {
            if result >= 0 && (result as u32) < c.length {
                // Past the end of the file: the rest reads as zeroes. The
                // buffer is ours: JavaScript gave up its view on submission.
                let (base, _) = self.shared.buffer(tag).expect("tag checked at submission");
                // SAFETY: [buf_offset + result, buf_offset + length) lies in
                // the tag's buffer, as checked when the request came in.
                unsafe {
                    std::ptr::write_bytes(
                        base.add(c.buf_offset as usize + result as usize),
                        0,
                        (c.length - result as u32) as usize,
                    )
                };
            }
            result >= 0
        } else {
            result == c.length as i32
        };
        let st = &mut self.tags[tag as usize];
        st.completing -= 1;
        if !ok {
            if let Some(r) = &c.routed {
                // The application has never seen this IO: it arrives now,
                // with the failure, and is the application's to answer.
                st.handed_back = true;
                self.out.ios.push(IoRequest {
                    tag,
                    seq: st.seq,
                    op: libublk::sys::UBLK_IO_OP_READ as u8,
                    flags: r.flags,
                    offset: r.offset,
                    length: c.length,
                    failed_read: Some(FailedRead {
                        file: r.file,
                        error: if result < 0 { result } else { -libc::EIO },
                    }),
                });
            } else if c.report_failure {
                st.handed_back = true;
            } else if st.completing_error.is_none() {
                st.completing_error = Some(if result < 0 { result } else { -libc::EIO });
            }
        }
        if st.completing == 0 {
            match st.completing_error.take() {
                Some(error) => st.deferred = Some(error),
                None if st.handed_back => {}
                None => st.deferred = Some(st.length as i32),
            }
        }
    }

    fn arm_wake(&mut self, q: &UblkQueue) {
        if self.wake_armed {
            return;
        }
        let sqe = opcode::Read::new(
            types::Fd(self.shared.inbox.eventfd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(target_user_data(OP_WAKE, 0));
        if q.ublk_submit_sqe_sync(sqe).is_ok() {
            self.wake_armed = true;
        }
    }

    fn flush(&mut self, q: &UblkQueue) {
        if self.out.is_empty() || self.batch_outstanding {
            return;
        }
        let batch = std::mem::replace(
            &mut self.out,
            Batch {
                qid: self.qid,
                ..Default::default()
            },
        );
        match self.device.sink.deliver(batch) {
            Ok(()) => self.batch_outstanding = true,
            Err(batch) => {
                // Nobody is listening any more: fail the IOs rather than hold them.
                for io in batch.ios {
                    self.complete(q, io.tag, -libc::EIO);
                }
            }
        }
    }

    /// After the queue went down: cancel the eventfd read and wait for the
    /// backend operations still in the ring, whose buffers and wake slot
    /// must not be released while the kernel may still write to them.
    fn drain(&mut self, q: &UblkQueue) {
        if self.wake_armed {
            let cancel = opcode::AsyncCancel::new(target_user_data(OP_WAKE, 0))
                .build()
                .user_data(target_user_data(OP_CANCEL, 0));
            let _ = q.ublk_submit_sqe_sync(cancel);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while (self.wake_armed || self.backend.iter().any(Option::is_some))
            && Instant::now() < deadline
        {
            let mut done = Vec::new();
            libublk::io::with_task_io_ring_mut(|ring| {
                let ts = types::Timespec::new().nsec(100_000_000);
                let args = types::SubmitArgs::new().timespec(&ts);
                let _ = ring.submitter().submit_with_args(1, &args);
                done.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
            });
            for (user_data, result) in done {
                match UblkIOCtx::user_data_to_op(user_data) {
                    OP_WAKE => self.wake_armed = false,
                    OP_BACKEND => self.on_backend_done(q, slot_of(user_data), result),
                    _ => {}
                }
            }
        }
        if self.wake_armed || self.backend.iter().any(Option::is_some) {
            log::error!(
                "queue {}: backend operations did not finish in 10 s",
                self.qid
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_survive_the_user_data_round_trip() {
        for slot in [0u32, 1, 0xffff, 0x1_0000, (MAX_SLOTS - 1) as u32] {
            let ud = target_user_data(OP_BACKEND, slot);
            assert_eq!(slot_of(ud), slot);
            assert_eq!(UblkIOCtx::user_data_to_op(ud), OP_BACKEND);
        }
    }
}
