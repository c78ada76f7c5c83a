//! Serving a device from another runtime (JavaScript): IOs leave the queue
//! thread in batches, one batch per ring reap, and results come back in
//! bulk through an inbox whose eventfd the queue's own ring watches.
//!
//! The queue thread never waits for the application: it sleeps in its
//! io_uring, and the application wakes it by writing the eventfd after
//! putting completions or backend requests in the inbox. Backend IO (reads
//! and writes of backing files) runs on the same ring, with the IO's own
//! buffer, so data never crosses threads by copy.

mod backing;
mod inbox;
mod queue;
mod route;
mod staging;
pub mod synthetic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libublk::helpers::IoBuf;
use libublk::io::UblkDev;
use libublk::sys;

use crate::error::{Error, Result};
use crate::target::{DeviceParams, Target};

pub use backing::{BackingFile, BackingFiles};
pub use inbox::QueueInbox;
pub use route::{ReadRoute, MAX_ROUTE_FILES};
pub use staging::{StagingBuffer, StagingBuffers, MAX_STAGING_BYTES};

/// One IO handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    pub tag: u16,
    /// Changes every time the tag carries a new IO; a completion must quote it.
    pub seq: u32,
    /// `UBLK_IO_OP_*`
    pub op: u8,
    /// `UBLK_IO_F_*` (FUA, ...)
    pub flags: u32,
    /// Byte offset on the device.
    pub offset: u64,
    /// Bytes; 0 for flush.
    pub length: u32,
    /// A read the device's [`ReadRoute`] sent to a file failed there: the
    /// IO is the application's to serve from elsewhere.
    pub failed_read: Option<FailedRead>,
}

/// Where and how a routed read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedRead {
    /// The backing file's index.
    pub file: u32,
    /// Negative errno (EIO for a transfer that came up short).
    pub error: i32,
}

/// Everything one reap of a queue's ring produced for the application.
#[derive(Debug, Default)]
pub struct Batch {
    pub qid: u16,
    pub ios: Vec<IoRequest>,
    /// Finished backend operations: (request id, result as bytes or -errno).
    pub backend: Vec<(u32, i32)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ios.is_empty() && self.backend.is_empty()
    }
}

/// Where batches go. Called on queue threads; must not block.
pub trait BatchSink: Send + Sync + 'static {
    /// Hands a batch over; `Err` gives it back when the application is gone,
    /// and its IOs are then failed with EIO.
    fn deliver(&self, batch: Batch) -> std::result::Result<(), Batch>;
}

/// An application's result for one IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoResult {
    pub tag: u16,
    pub seq: u32,
    /// Bytes done, or a negative errno.
    pub result: i32,
}

/// What a backend operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// File into the IO's buffer.
    Read,
    /// The IO's buffer into the file.
    Write,
    Fsync,
    Fdatasync,
    /// `fallocate(2)` with this mode (punch hole, zero range, ...).
    Fallocate(i32),
    /// Completes after `length` microseconds: an io_uring timeout, for
    /// delays that provoke interleavings in tests and benchmarks.
    Sleep,
}

/// A request to run IO on a backing file, on a queue's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRequest {
    /// The application's id for it, echoed in the result; 0 asks for no
    /// result (a request that completes its IO needs none).
    pub id: u32,
    pub kind: BackendKind,
    /// Index from [`BackingFiles::open`].
    pub file: u32,
    /// The IO whose buffer is read into or written from (read/write only).
    pub tag: u16,
    /// That IO's `seq`: a request from a finished IO must not reach the
    /// tag's next one.
    pub seq: u32,
    /// Offset inside that IO's buffer.
    pub buf_offset: u32,
    pub length: u32,
    pub file_offset: u64,
    /// Read/write only: the IO is completed by the queue thread when this
    /// (and every other completing request of the IO) finishes, without a
    /// round trip through the application. Reads short of `length` are
    /// zero-filled (past the end of a file); a short write fails the IO.
    pub completes_io: bool,
    /// Read/write only: `RWF_DSYNC` or `RWF_SYNC` for a durable write.
    pub rw_flags: i32,
    /// With `completes_io`, a read that fails is not the IO's end: its
    /// error is reported to the application, which keeps the IO (to serve
    /// it from elsewhere). A read that succeeds still completes the IO
    /// without a round trip.
    pub report_failure: bool,
    /// Read/write only: use this staging buffer (see [`StagingBuffers`])
    /// instead of an IO's buffer; `tag` and `seq` are then ignored.
    pub staging: Option<u32>,
}

/// What the device advertises to the block layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub read_only: bool,
    /// Has a volatile cache: the kernel sends FLUSH.
    pub flush: bool,
    /// Honours FUA on writes.
    pub fua: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// The per-queue state the application side holds: its inbox and the
/// buffers its IOs' data lives in.
pub struct QueueShared {
    pub qid: u16,
    pub inbox: QueueInbox,
    buffers: Vec<IoBuf<u8>>,
    buf_bytes: usize,
}

impl QueueShared {
    /// The data buffer of `tag`: `max_io_bytes` long, valid for as long as
    /// this `QueueShared` lives.
    pub fn buffer(&self, tag: u16) -> Option<(*mut u8, usize)> {
        self.buffers
            .get(tag as usize)
            .map(|b| (b.as_mut_ptr(), self.buf_bytes))
    }

    pub fn depth(&self) -> u16 {
        self.buffers.len() as u16
    }

    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }
}

/// A [`Target`] whose IOs are served by an application through a
/// [`BatchSink`].
pub struct BridgeTarget {
    kind: String,
    caps: Capabilities,
    queues: Vec<Arc<QueueShared>>,
    device: DeviceShared,
}

/// What every queue of a bridged device shares.
#[derive(Clone)]
pub(crate) struct DeviceShared {
    pub sink: Arc<dyn BatchSink>,
    pub files: Arc<BackingFiles>,
    pub staging: Arc<StagingBuffers>,
    pub routes: Arc<route::RouteTable>,
    pub stopping: Arc<AtomicBool>,
}

impl BridgeTarget {
    /// `queues`, `depth` and `max_io_bytes` must match the device options
    /// the target is used with.
    pub fn new(
        kind: impl Into<String>,
        caps: Capabilities,
        sink: Arc<dyn BatchSink>,
        queues: u16,
        depth: u16,
        max_io_bytes: u32,
    ) -> Result<BridgeTarget> {
        let shared = (0..queues)
            .map(|qid| {
                Ok(Arc::new(QueueShared {
                    qid,
                    inbox: QueueInbox::new()?,
                    buffers: (0..depth)
                        .map(|_| IoBuf::new(max_io_bytes as usize))
                        .collect(),
                    buf_bytes: max_io_bytes as usize,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BridgeTarget {
            kind: kind.into(),
            caps,
            queues: shared,
            device: DeviceShared {
                sink,
                files: Arc::new(BackingFiles::default()),
                staging: Arc::new(StagingBuffers::default()),
                routes: Arc::default(),
                stopping: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    pub fn queue(&self, qid: u16) -> Option<&Arc<QueueShared>> {
        self.queues.get(qid as usize)
    }

    pub fn queues(&self) -> &[Arc<QueueShared>] {
        &self.queues
    }

    pub fn files(&self) -> &Arc<BackingFiles> {
        &self.device.files
    }

    pub fn staging(&self) -> &Arc<StagingBuffers> {
        &self.device.staging
    }

    /// Sends reads straight to backing files from now on (see
    /// [`ReadRoute`]), or, with `None`, every read to the application.
    pub fn set_read_route(&self, route: Option<ReadRoute>) -> Result<()> {
        self.device.routes.set(&self.device.files, route)
    }

    /// Closes every backing file, the read route's included; requests that
    /// name them fail with EBADF from then on.
    pub fn close_files(&self) {
        let _ = self.device.routes.set(&self.device.files, None);
        self.device.files.close_all();
    }

    /// Reads served by the read route so far, without the application.
    pub fn routed_reads(&self) -> u64 {
        self.device.routes.served()
    }

    /// Fails every IO the application holds and every IO still to come with
    /// EIO, so that stopping the device never waits for the application.
    pub fn cancel_all(&self) {
        self.device.stopping.store(true, Ordering::SeqCst);
        for q in &self.queues {
            q.inbox.wake();
        }
    }
}

impl Target for BridgeTarget {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn configure(&self, params: &mut DeviceParams) -> Result<()> {
        let basic = &mut params.basic;
        basic.attrs = 0;
        if self.caps.read_only {
            basic.attrs |= sys::UBLK_ATTR_READ_ONLY;
        }
        if self.caps.flush {
            basic.attrs |= sys::UBLK_ATTR_VOLATILE_CACHE;
        }
        if self.caps.fua {
            basic.attrs |= sys::UBLK_ATTR_FUA;
        }
        if self.caps.discard || self.caps.write_zeroes {
            let lbs = 1u32 << basic.logical_bs_shift;
            let max_sectors = basic.max_sectors;
            params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            params.discard = sys::ublk_param_discard {
                discard_granularity: lbs.max(4096),
                max_discard_sectors: if self.caps.discard { max_sectors } else { 0 },
                max_write_zeroes_sectors: if self.caps.write_zeroes {
                    max_sectors
                } else {
                    0
                },
                max_discard_segments: 1,
                ..Default::default()
            };
        }
        Ok(())
    }

    fn serve_queue(&self, qid: u16, dev: &UblkDev) -> Result<()> {
        let shared = self
            .queues
            .get(qid as usize)
            .ok_or_else(|| Error::invalid(format!("no bridge state for queue {qid}")))?
            .clone();
        queue::serve(qid, dev, shared, self.device.clone())
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        // Room for every tag's IO command, a few backend operations per IO
        // and the eventfd read.
        depth.saturating_mul(4).saturating_add(8)
    }
}
