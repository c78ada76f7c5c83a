//! Serving a device from another runtime (JavaScript): the bridge is an
//! adapter of [`Target`]. Its `handle_io` puts the IO into the batch for
//! the application and awaits the answer; a backend request from the
//! application is an operation the IO's task awaits on the queue's ring.
//!
//! IOs leave a queue thread in batches, at most one hand-over in flight per
//! queue: while the application has not taken in the last one, new work
//! waits, so hand-overs grow with load instead of multiplying. Answers come
//! back in bulk through an inbox whose eventfd the queue's own ring reads,
//! so the queue thread never waits for the application.

mod gate;
mod inbox;
mod queue;
mod route;
mod sinks;
mod synthetic;
pub mod tables;
pub mod wire;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::files::{BackingFile, BackingFiles};
use crate::runtime::hosted::QueueHost;
use crate::runtime::{Capabilities, Io, IoBuffers, QueueContext, Target, WriteBatch};
use crate::staging::StagingBuffers;

pub use gate::{WriteGate, MAX_GATE_CHUNKS};
pub use inbox::QueueInbox;
pub use queue::BridgeQueue;
pub use route::{ReadRoute, WriteRoute, MAX_ROUTE_FILES};
use wire::{Event, IoRequest, IoResult};

/// Everything one hand-over carries to the application.
#[derive(Debug, Default)]
pub struct Batch {
    pub qid: u16,
    pub ios: Vec<IoRequest>,
    /// Finished backend requests: (id, result as bytes or -errno).
    pub backend: Vec<(u32, i32)>,
    pub events: Vec<Event>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ios.is_empty() && self.backend.is_empty() && self.events.is_empty()
    }
}

/// Where batches go. Called on queue threads (and once by whoever stops
/// the device); must not block.
pub trait BatchSink: Send + Sync + 'static {
    /// Hands a batch over; `Err` gives it back when the application is
    /// gone, and its IOs are then failed with EIO.
    fn deliver(&self, batch: Batch) -> std::result::Result<(), Batch>;

    /// The application will get nothing more: let go of it.
    fn close(&self);
}

/// What one queue of a bridged device shares with the application.
pub struct QueueShared {
    pub qid: u16,
    pub inbox: QueueInbox,
    buffers: OnceLock<Arc<IoBuffers>>,
    /// The application's thread that serves this queue's ring, if not a
    /// queue thread.
    host: OnceLock<Arc<dyn QueueHost>>,
    /// That thread, once the queue started there.
    host_thread: OnceLock<std::thread::ThreadId>,
    /// The application's thread for this queue is gone: its IOs fail.
    abandoned: AtomicBool,
    /// IOs handed to the application and not answered yet.
    held: std::sync::atomic::AtomicU32,
}

impl QueueShared {
    /// Hands the application's answers to the queue: without a wake-up
    /// when this thread hosts the queue and is polling it now.
    pub fn post(&self, results: Vec<IoResult>, requests: Vec<inbox::Request>, batch_taken: bool) {
        let here = crate::runtime::hosted::driving()
            && self.host_thread.get() == Some(&std::thread::current().id());
        if here {
            self.inbox.post_local(results, requests, batch_taken);
            crate::runtime::hosted::nudge();
        } else {
            self.inbox.post(results, requests, batch_taken);
        }
    }

    /// IOs handed to the application and not answered yet.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether this thread hosts the queue.
    pub fn hosted_here(&self) -> bool {
        self.host_thread.get() == Some(&std::thread::current().id())
    }

    /// The queue's IO data buffers, once its thread has started; never
    /// for a zero-copy target.
    pub fn buffers(&self) -> Option<&Arc<IoBuffers>> {
        self.buffers.get()
    }
}

/// What every queue of a bridged device shares.
pub(crate) struct DeviceShared {
    pub sink: sinks::QueueSinks,
    pub files: BackingFiles,
    pub staging: StagingBuffers,
    pub routes: route::RouteTable,
    pub stopping: AtomicBool,
    /// The application declared it never touches IO data.
    pub zero_copy: bool,
    /// The application runs batch hooks: it is told of write batches.
    pub batch_hooks: bool,
    released: Mutex<bool>,
}

/// A [`Target`] whose IOs are served by an application through a
/// [`BatchSink`].
pub struct BridgeTarget {
    kind: String,
    caps: Capabilities,
    queues: Vec<Arc<QueueShared>>,
    device: Arc<DeviceShared>,
}

impl BridgeTarget {
    /// A target for a device of `queues` queues, served through `sink`.
    pub fn new(
        kind: impl Into<String>,
        caps: Capabilities,
        batch_hooks: bool,
        sink: Arc<dyn BatchSink>,
        queues: u16,
    ) -> Result<BridgeTarget> {
        let shared = (0..queues)
            .map(|qid| {
                Ok(Arc::new(QueueShared {
                    qid,
                    inbox: QueueInbox::new()?,
                    buffers: OnceLock::new(),
                    host: OnceLock::new(),
                    host_thread: OnceLock::new(),
                    abandoned: AtomicBool::new(false),
                    held: std::sync::atomic::AtomicU32::new(0),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BridgeTarget {
            kind: kind.into(),
            caps,
            queues: shared,
            device: Arc::new(DeviceShared {
                sink: sinks::QueueSinks::new(sink, queues),
                files: BackingFiles::default(),
                staging: StagingBuffers::default(),
                routes: route::RouteTable::default(),
                stopping: AtomicBool::new(false),
                zero_copy: caps.zero_copy,
                batch_hooks,
                released: Mutex::new(false),
            }),
        })
    }

    pub fn queue(&self, qid: u16) -> Option<&Arc<QueueShared>> {
        self.queues.get(qid as usize)
    }

    pub fn queues(&self) -> &[Arc<QueueShared>] {
        &self.queues
    }

    /// Serves queue `qid` through `sink` instead of the one given at
    /// creation (an application thread of its own for that queue), from
    /// its next hand-over on; every sink hears of the stop. Attach before
    /// the device starts, so that no IO of the queue reaches the other.
    /// EBUSY for a queue that has its own sink, ENODEV once released.
    pub fn attach_queue_sink(&self, qid: u16, sink: Arc<dyn BatchSink>) -> Result<()> {
        if *self.device.released.lock().unwrap() {
            return Err(Error::new(
                libc::ENODEV,
                "this bridge was released: its device stopped or was never started",
            ));
        }
        self.device.sink.attach(qid, sink)
    }

    /// Serves queue `qid`'s ring from `host`'s thread instead of a queue
    /// thread (see [`crate::runtime::hosted`]). Before the device starts;
    /// EBUSY if the queue has a host already.
    pub fn host_queue(&self, qid: u16, host: Arc<dyn QueueHost>) -> Result<()> {
        let queue = self
            .queues
            .get(qid as usize)
            .ok_or_else(|| Error::invalid(format!("no queue {qid}")))?;
        queue
            .host
            .set(host)
            .map_err(|_| Error::new(libc::EBUSY, format!("queue {qid} has a host already")))
    }

    /// The application's thread that served queue `qid` is going away:
    /// the IOs it holds fail with EIO, and so does every later one.
    pub fn abandon_queue(&self, qid: u16) {
        if let Some(queue) = self.queues.get(qid as usize) {
            queue.abandoned.store(true, Ordering::SeqCst);
            queue.inbox.wake();
        }
    }

    /// Lets go of queue `qid`'s own sink: its IOs fail with EIO from then
    /// on (the application thread that served it is gone).
    pub fn detach_queue_sink(&self, qid: u16) {
        self.device.sink.detach(qid);
    }

    /// The backing file with `handle`, whichever thread of the
    /// application opened it.
    pub fn backing_file(&self, handle: u32) -> Option<Arc<BackingFile>> {
        self.device.files.get(handle)
    }

    /// Opens a backing file for this device's backend IO; returns its handle.
    pub fn open_file(
        &self,
        path: &str,
        direct: bool,
        read_only: bool,
    ) -> Result<(u32, Arc<BackingFile>)> {
        self.device.files.open(path, direct, read_only)
    }

    pub fn staging(&self) -> &StagingBuffers {
        &self.device.staging
    }

    /// Sends reads straight to backing files from now on (see
    /// [`ReadRoute`]), or, with `None`, every read to the application.
    pub fn set_read_route(&self, route: Option<ReadRoute>) -> Result<()> {
        self.device.routes.set(&self.device.files, route)
    }

    /// Reads served by the read route so far, without the application.
    pub fn routed_reads(&self) -> u64 {
        self.device.routes.served()
    }

    /// Sends writes straight to backing files from now on (see
    /// [`WriteRoute`]), or, with `None`, every write to the application.
    /// EINVAL for an ungated route when the application runs batch hooks:
    /// it must see every write (a gated one shows it every write to a
    /// chunk it has not opened).
    pub fn set_write_route(&self, route: Option<WriteRoute>) -> Result<()> {
        if route.as_ref().is_some_and(|r| !r.gated) && self.device.batch_hooks {
            return Err(Error::invalid(
                "an ungated write route is for targets without batch hooks: those must see every write",
            ));
        }
        self.device.routes.set_write(&self.device.files, route)
    }

    /// Gives the device its write gate (see [`WriteGate`]), over
    /// `device_bytes` in chunks of `chunk_bytes`, every chunk closed. Once
    /// per device: EBUSY for a second.
    pub fn create_write_gate(&self, device_bytes: u64, chunk_bytes: u64) -> Result<Arc<WriteGate>> {
        let gate = Arc::new(WriteGate::new(device_bytes, chunk_bytes)?);
        self.device.routes.set_gate(gate.clone())?;
        Ok(gate)
    }

    /// The write gate that the threads serving the queues share: the one
    /// the device has if its chunks are `chunk_bytes` long, else a new
    /// one as [`create_write_gate`](Self::create_write_gate) makes it if
    /// the device has none; EBUSY for another chunk size.
    pub fn shared_write_gate(&self, device_bytes: u64, chunk_bytes: u64) -> Result<Arc<WriteGate>> {
        self.device
            .routes
            .shared_gate(chunk_bytes, || WriteGate::new(device_bytes, chunk_bytes))
    }

    /// Writes served by the write route so far, without the application.
    pub fn routed_writes(&self) -> u64 {
        self.device.routes.served_writes()
    }

    /// Drives queue 0 with made-up reads and no kernel, to measure the
    /// dispatch path alone (see [`synthetic`]).
    pub fn run_synthetic(
        &self,
        depth: u16,
        total: u64,
        batch_max: usize,
    ) -> Result<std::time::Duration> {
        let shared = self
            .queue(0)
            .ok_or_else(|| Error::invalid("the bridge has no queue"))?;
        synthetic::run(shared, &self.device.sink, depth, total, batch_max)
    }

    /// Lets go of the application and of every file and staging buffer,
    /// once: after the device stopped, or instead of starting it. Requests
    /// that name them fail with EBADF from then on.
    pub fn release(&self) {
        let mut released = self.device.released.lock().unwrap();
        if *released {
            return;
        }
        *released = true;
        let _ = self.device.routes.set(&self.device.files, None);
        let _ = self.device.routes.set_write(&self.device.files, None);
        self.device.files.close();
        self.device.staging.close();
        self.device.sink.close();
        // The queue threads are gone (or never started).
        for q in &self.queues {
            q.inbox.close();
        }
    }
}

impl Target for BridgeTarget {
    type Queue = Rc<BridgeQueue>;

    fn kind(&self) -> &str {
        &self.kind
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn ring_depth(&self, depth: u16) -> u16 {
        // Room for every tag's IO command, a few backend operations per IO
        // and the inbox read.
        depth.saturating_mul(4).saturating_add(8)
    }

    fn queue_host(&self, qid: u16) -> Option<Arc<dyn QueueHost>> {
        self.queues.get(qid as usize)?.host.get().cloned()
    }

    fn open_queue(&self, ctx: &QueueContext) -> Result<Self::Queue> {
        let shared = self
            .queues
            .get(ctx.qid as usize)
            .ok_or_else(|| Error::invalid(format!("no bridge state for queue {}", ctx.qid)))?
            .clone();
        // A zero-copy target is never shown the IOs' data, on either path.
        if !self.caps.zero_copy {
            let _ = shared.buffers.set(ctx.buffers().clone());
        }
        if ctx.hosted {
            let _ = shared.host_thread.set(std::thread::current().id());
        }
        BridgeQueue::start(ctx, shared, self.device.clone())
    }

    async fn handle_io(&self, queue: &Self::Queue, io: Io<'_>) -> i32 {
        queue.serve(io).await
    }

    async fn before_writes(&self, queue: &Self::Queue, batch: &WriteBatch) -> Result<()> {
        // The application runs the prologue itself, before any of the
        // batch's IOs reaches its method: they travel in the same hand-over.
        if self.device.batch_hooks {
            queue.announce_batch(batch);
        }
        Ok(())
    }

    async fn after_writes(&self, queue: &Self::Queue, batch: &WriteBatch) {
        if self.device.batch_hooks {
            queue.finish_batch(batch);
        }
    }

    fn before_tasks(&self, queue: &Self::Queue) {
        queue.take_posted();
    }

    fn after_reap(&self, queue: &Self::Queue) {
        queue.hand_over();
    }

    fn close_queue(&self, queue: &Self::Queue) {
        queue.close();
    }

    fn stopping(&self) {
        // Fails every IO the application holds and every IO still to come.
        self.device.stopping.store(true, Ordering::SeqCst);
        for q in &self.queues {
            q.inbox.wake();
        }
    }

    fn stopped(&self) {
        let _ = self.device.sink.deliver(Batch {
            events: vec![Event::Stopped],
            ..Batch::default()
        });
        self.release();
    }
}
