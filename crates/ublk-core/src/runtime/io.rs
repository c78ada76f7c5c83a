//! What the kernel asks of an IO, decoded from its descriptor here and
//! nowhere else, and the handle a target serves it through.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use libublk::helpers::IoBuf;
use libublk::sys;

/// The operations a ublk device receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    /// An operation this crate does not name (zoned, write-same, ...).
    Other(u8),
}

impl IoOp {
    pub fn from_code(code: u8) -> IoOp {
        match code as u32 {
            sys::UBLK_IO_OP_READ => IoOp::Read,
            sys::UBLK_IO_OP_WRITE => IoOp::Write,
            sys::UBLK_IO_OP_FLUSH => IoOp::Flush,
            sys::UBLK_IO_OP_DISCARD => IoOp::Discard,
            sys::UBLK_IO_OP_WRITE_ZEROES => IoOp::WriteZeroes,
            _ => IoOp::Other(code),
        }
    }

    /// The kernel's `UBLK_IO_OP_*` code.
    pub fn code(self) -> u8 {
        match self {
            IoOp::Read => sys::UBLK_IO_OP_READ as u8,
            IoOp::Write => sys::UBLK_IO_OP_WRITE as u8,
            IoOp::Flush => sys::UBLK_IO_OP_FLUSH as u8,
            IoOp::Discard => sys::UBLK_IO_OP_DISCARD as u8,
            IoOp::WriteZeroes => sys::UBLK_IO_OP_WRITE_ZEROES as u8,
            IoOp::Other(code) => code,
        }
    }

    /// Whether the op changes data, and so takes part in the batch hook.
    pub fn modifies(self) -> bool {
        matches!(self, IoOp::Write | IoOp::Discard | IoOp::WriteZeroes)
    }

    /// Whether the op moves data through the IO's buffer.
    pub fn carries_data(self) -> bool {
        matches!(self, IoOp::Read | IoOp::Write)
    }
}

/// `UBLK_IO_F_*` bits, shifted down by the 8 bits of the op code as
/// [`IoDesc::flags`] holds them.
pub mod io_flags {
    use libublk::sys;

    /// Forced unit access: the write is durable when it completes.
    pub const FUA: u32 = sys::UBLK_IO_F_FUA >> 8;
}

/// One IO as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDesc {
    pub op: IoOp,
    /// `UBLK_IO_F_*` flags (see [`io_flags`]).
    pub flags: u32,
    /// Byte offset on the device.
    pub offset: u64,
    /// Bytes; 0 for a flush.
    pub len: u32,
}

impl IoDesc {
    /// Decodes the kernel's descriptor of an IO.
    pub fn decode(iod: &sys::ublksrv_io_desc) -> IoDesc {
        IoDesc {
            op: IoOp::from_code((iod.op_flags & 0xff) as u8),
            flags: iod.op_flags >> 8,
            offset: iod.start_sector << 9,
            len: iod.nr_sectors << 9,
        }
    }

    pub fn fua(&self) -> bool {
        self.flags & io_flags::FUA != 0
    }

    /// What a fully successful IO reports: its bytes for a read or write,
    /// 0 otherwise.
    pub fn success(&self) -> i32 {
        if self.op.carries_data() {
            self.len as i32
        } else {
            0
        }
    }
}

/// The data buffers of one queue, one per tag, `max_io_bytes` each. Shared
/// (an application may hold views of them), never moved, freed when the
/// last holder lets go.
///
/// A zero-copy queue has none: the kernel registers each IO's own pages
/// in the queue ring's buffer table, at the IO's tag, for as long as the
/// IO is in flight (`UBLK_F_AUTO_BUF_REG`), and backend operations read
/// and write them there.
pub struct IoBuffers {
    bufs: Vec<IoBuf<u8>>,
    bytes: usize,
    depth: u16,
    /// The memory was freed by whoever its aliases were given to.
    disowned: AtomicBool,
}

impl Drop for IoBuffers {
    fn drop(&mut self) {
        if self.disowned.load(Ordering::SeqCst) {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

impl IoBuffers {
    pub fn new(depth: u16, bytes: u32) -> Arc<IoBuffers> {
        Arc::new(IoBuffers {
            bufs: (0..depth).map(|_| IoBuf::new(bytes as usize)).collect(),
            bytes: bytes as usize,
            depth,
            disowned: AtomicBool::new(false),
        })
    }

    /// A zero-copy queue's: no memory, the IOs' pages are registered.
    pub fn registered(depth: u16, bytes: u32) -> Arc<IoBuffers> {
        Arc::new(IoBuffers {
            bufs: Vec::new(),
            bytes: bytes as usize,
            depth,
            disowned: AtomicBool::new(false),
        })
    }

    /// Whether the IOs' data stays in the kernel (zero copy).
    pub fn is_registered(&self) -> bool {
        self.bufs.is_empty()
    }

    /// The start of `tag`'s buffer and its length; `None` on a zero-copy
    /// queue.
    pub fn buffer(&self, tag: u16) -> Option<(*mut u8, usize)> {
        self.bufs
            .get(tag as usize)
            .map(|b| (b.as_mut_ptr(), self.bytes))
    }

    pub(crate) fn io_buf(&self, tag: u16) -> Option<&IoBuf<u8>> {
        self.bufs.get(tag as usize)
    }

    /// Second owners of the buffers, for an API that must own them.
    ///
    /// # Safety
    /// At most one of the two owners may ever free the memory: the aliases
    /// must never be dropped, unless [`IoBuffers::disown`] is called once
    /// they were, before anything reads the memory again.
    pub(crate) unsafe fn aliases(&self) -> Vec<IoBuf<u8>> {
        // SAFETY: a bitwise copy of each buffer's pointer, size and mlock
        // flag; the caller keeps the two sets from both freeing it.
        self.bufs
            .iter()
            .map(|b| unsafe { std::ptr::read(b) })
            .collect()
    }

    /// The aliases freed the memory: these buffers must not free it again.
    pub(crate) fn disown(&self) {
        self.disowned.store(true, Ordering::SeqCst);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }
}

/// How many backend operations use a tag's buffer: the tag's IO is not
/// completed, and its buffer not reused, before they are all done.
#[derive(Default)]
pub(crate) struct Lends {
    count: Cell<u32>,
    waiter: Cell<Option<Waker>>,
}

/// One backend operation's use of a tag's buffer; released on drop.
pub(crate) struct Lend(Rc<Lends>);

impl Lend {
    pub fn new(lends: &Rc<Lends>) -> Lend {
        lends.count.set(lends.count.get() + 1);
        Lend(lends.clone())
    }
}

impl Drop for Lend {
    fn drop(&mut self) {
        let left = self.0.count.get() - 1;
        self.0.count.set(left);
        if left == 0 {
            if let Some(waker) = self.0.waiter.take() {
                waker.wake();
            }
        }
    }
}

impl Lends {
    pub fn in_use(&self) -> bool {
        self.count.get() > 0
    }

    /// Resolves once no operation uses the buffer any more.
    pub async fn returned(&self) {
        std::future::poll_fn(|cx| {
            if self.count.get() == 0 {
                std::task::Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// One IO handed to a target: what the kernel asks, and access to the IO's
/// buffer, directly or through backend operations on the queue's ring
/// ([`crate::runtime::ops`]).
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
    pub(crate) desc: IoDesc,
    /// The write batch this IO belongs to (see [`crate::WriteBatch`]).
    pub(crate) batch: Option<u64>,
    pub(crate) buffers: &'a Arc<IoBuffers>,
    pub(crate) lends: &'a Rc<Lends>,
}

impl<'a> Io<'a> {
    pub(crate) fn new(
        qid: u16,
        tag: u16,
        desc: IoDesc,
        buffers: &'a Arc<IoBuffers>,
        lends: &'a Rc<Lends>,
    ) -> Io<'a> {
        // The kernel never sends more than max_io_bytes; a descriptor that
        // claimed more is cut to the buffer rather than trusted.
        let len = desc
            .len
            .min(u32::try_from(buffers.bytes()).unwrap_or(u32::MAX));
        Io {
            qid,
            tag,
            op: desc.op,
            offset: desc.offset,
            len,
            fua: desc.fua(),
            desc: IoDesc { len, ..desc },
            batch: None,
            buffers,
            lends,
        }
    }

    /// The IO as the kernel described it.
    pub fn desc(&self) -> IoDesc {
        self.desc
    }

    /// The number of the write batch this IO is part of, on its queue.
    pub fn batch(&self) -> Option<u64> {
        self.batch
    }

    /// The IO's data: what a write brings, where a read's answer goes.
    /// `None` for an IO that carries no data, on a zero-copy queue (the
    /// data never leaves the kernel), or while a backend operation using
    /// the buffer is still in flight.
    pub fn data(&mut self) -> Option<&mut [u8]> {
        if !self.op.carries_data() || self.lends.in_use() {
            return None;
        }
        let (ptr, _) = self.buffers.buffer(self.tag)?;
        // SAFETY: `len` is at most the buffer's length (see `new`); the
        // buffer belongs to this IO until it completes, no operation uses
        // it (checked above), and `&mut self` keeps this the only slice.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr, self.len as usize) })
    }

    /// What a fully successful IO reports (see [`IoDesc::success`]).
    pub fn done(&self) -> i32 {
        self.desc.success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_in_one_place() {
        let iod = sys::ublksrv_io_desc {
            op_flags: sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA,
            nr_sectors: 8,
            start_sector: 3,
            addr: 0,
        };
        let desc = IoDesc::decode(&iod);
        assert_eq!(desc.op, IoOp::Write);
        assert!(desc.fua());
        assert_eq!((desc.offset, desc.len), (1536, 4096));
        assert_eq!(desc.success(), 4096);
        let flush = IoDesc::decode(&sys::ublksrv_io_desc {
            op_flags: sys::UBLK_IO_OP_FLUSH,
            ..iod
        });
        assert_eq!(
            (flush.op, flush.fua(), flush.success()),
            (IoOp::Flush, false, 0)
        );
        assert_eq!(IoOp::from_code(13), IoOp::Other(13));
        for op in [
            IoOp::Read,
            IoOp::Write,
            IoOp::Flush,
            IoOp::Discard,
            IoOp::WriteZeroes,
        ] {
            assert_eq!(IoOp::from_code(op.code()), op);
        }
    }

    #[test]
    fn io_data_is_clamped_to_its_buffer_and_withheld_while_lent() {
        let buffers = IoBuffers::new(1, 4096);
        let lends = Rc::new(Lends::default());
        let desc = IoDesc {
            op: IoOp::Read,
            flags: 0,
            offset: 0,
            len: 1 << 20,
        };
        let mut io = Io::new(0, 0, desc, &buffers, &lends);
        assert_eq!(io.len, 4096);
        assert_eq!(io.data().map(|d| d.len()), Some(4096));
        assert_eq!(io.done(), 4096);
        let lend = Lend::new(&lends);
        assert!(io.data().is_none(), "an operation has the buffer");
        drop(lend);
        assert!(io.data().is_some());
        let mut flush = Io::new(
            0,
            0,
            IoDesc {
                op: IoOp::Flush,
                len: 0,
                ..desc
            },
            &buffers,
            &lends,
        );
        assert!(flush.data().is_none());
    }

    #[test]
    fn zero_copy_ios_have_no_data_in_user_space() {
        let buffers = IoBuffers::registered(2, 4096);
        assert!(buffers.is_registered() && buffers.buffer(1).is_none());
        assert_eq!((buffers.depth(), buffers.bytes()), (2, 4096));
        let lends = Rc::new(Lends::default());
        let desc = IoDesc {
            op: IoOp::Write,
            flags: 0,
            offset: 0,
            len: 4096,
        };
        let mut io = Io::new(0, 1, desc, &buffers, &lends);
        assert!(io.data().is_none());
        assert_eq!(io.done(), 4096);
    }
}
