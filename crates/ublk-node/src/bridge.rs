//! Devices served by JavaScript: the core's bridge target with a
//! ThreadsafeFunction as its sink. Only marshalling here: every request
//! is decoded and checked by the core, request by request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use napi::bindgen_prelude::{AsyncTask, Float64ArraySlice, Function, JsValue, Unknown};
use napi::{Env, Task};
use napi_derive::napi;
use ublk_core::bridge::{wire, BatchSink, BridgeTarget, QueueShared, ReadRoute, WriteRoute};
use ublk_core::files::BackingFile;
use ublk_core::js_numbers::{integer, u32_arg};
use ublk_core::staging::MAX_STAGING_BYTES;
use ublk_core::{Capabilities, Device};

use crate::device::{core_options, register_env_cleanup, CreateDevice, NativeDeviceOptions};
use crate::errors::{guard, to_napi};
use crate::gate::NativeWriteGate;
use crate::handover::{
    batch_to_js, detach_all, staging_array_buffer, BatchFn, Inbound, JsSink, RawValue,
};
use crate::recovery::NativeRecoveryClaim;

/// What a JS target can do; decides the device's parameters.
#[napi(object)]
pub struct NativeCapabilities {
    pub read_only: bool,
    pub flush: bool,
    pub fua: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    /// The target has batch hooks: write batches are announced to it.
    pub batch_hooks: bool,
    /// The target never touches IO data: no buffers are handed to it, and
    /// the device may run zero copy.
    pub zero_copy: bool,
}

/// Prepares a device served by JavaScript: `onBatch(queue, ios, backend,
/// events, buffers, table)` is called once per hand-over, answers go back
/// through `NativeBridge.post`. Start it with `startBridgedDevice`.
///
/// The hand-over's rows are in the queue's table: `ios` IO rows, then
/// `backend` finished backend requests, then `events` events. The table
/// is the same Float64Array from one hand-over to the next, rewritten each
/// time, so it is read during the call; it comes as `table` when it is new
/// (the first hand-over of the queue, or one that outgrew it), else `table`
/// is null. `buffers` holds one ArrayBuffer (or null) per IO, or is null
/// when no IO of the hand-over has one.
#[napi(
    ts_args_type = "options: NativeDeviceOptions, capabilities: NativeCapabilities, onBatch: (queue: number, ios: number, backend: number, events: number, buffers: Array<ArrayBuffer | null> | null, table: Float64Array | null) => void"
)]
pub fn create_bridge(
    options: NativeDeviceOptions,
    capabilities: NativeCapabilities,
    on_batch: Function<'_, crate::handover::JsBatch, ()>,
) -> napi::Result<NativeBridge> {
    let opts = core_options(&options).map_err(to_napi)?;
    opts.validate(ublk_core::kernel_max_queues())
        .map_err(to_napi)?;
    let queues: Arc<OnceLock<Vec<Arc<QueueShared>>>> = Arc::new(OnceLock::new());
    let inbound = Arc::new(Inbound::new(capabilities.zero_copy));
    let func = batch_function(on_batch, queues.clone(), inbound.clone())?;
    let caps = Capabilities {
        read_only: capabilities.read_only,
        flush: capabilities.flush,
        fua: capabilities.fua,
        discard: capabilities.discard,
        write_zeroes: capabilities.write_zeroes,
        zero_copy: capabilities.zero_copy,
    };
    let sink: Arc<dyn BatchSink> = Arc::new(JsSink::new(func, inbound.clone()));
    let target = BridgeTarget::new(
        options.target,
        caps,
        capabilities.batch_hooks,
        sink,
        opts.queues,
    )
    .map_err(to_napi)?;
    let _ = queues.set(target.queues().to_vec());
    Ok(NativeBridge {
        target: Arc::new(target),
        opts,
        started: AtomicBool::new(false),
        own_queue: None,
        inbound,
    })
}

/// The JS batch handler as a ThreadsafeFunction of the calling thread;
/// `queues` gives it the queues' buffers once the device knows them.
pub(crate) fn batch_function(
    on_batch: Function<'_, crate::handover::JsBatch, ()>,
    queues: Arc<OnceLock<Vec<Arc<QueueShared>>>>,
    inbound: Arc<Inbound>,
) -> napi::Result<BatchFn> {
    on_batch
        .build_threadsafe_function::<ublk_core::bridge::Batch>()
        .weak::<true>()
        .build_callback(move |ctx| {
            let queues: &[Arc<QueueShared>] = queues.get().map_or(&[], Vec::as_slice);
            batch_to_js(&ctx.env, queues, &inbound, ctx.value)
        })
}

/// The JavaScript side of a device served by JavaScript.
#[napi]
pub struct NativeBridge {
    pub(crate) target: Arc<BridgeTarget>,
    pub(crate) opts: ublk_core::DeviceOptions,
    started: AtomicBool,
    /// A bridge attached in a worker thread serves this queue alone.
    own_queue: Option<u16>,
    /// The tables this thread's batch handler reads its hand-overs from.
    inbound: Arc<Inbound>,
}

impl NativeBridge {
    /// The bridge a worker thread holds for queue `qid` of `target`: it
    /// cannot start the device, and posts for its own queue only.
    pub(crate) fn for_queue(
        target: Arc<BridgeTarget>,
        opts: ublk_core::DeviceOptions,
        qid: u16,
        inbound: Arc<Inbound>,
    ) -> NativeBridge {
        NativeBridge {
            target,
            opts,
            started: AtomicBool::new(true),
            own_queue: Some(qid),
            inbound,
        }
    }

    pub(crate) fn start_once(&self) -> napi::Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(to_napi(ublk_core::Error::new(
                libc::EALREADY,
                "this bridge was already started",
            )));
        }
        Ok(())
    }
}

/// Starts a device prepared by `createBridge`; resolves once its block
/// device exists. IOs may reach `onBatch` before that.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn start_bridged_device(
    env: Env,
    bridge: &NativeBridge,
) -> napi::Result<AsyncTask<CreateDevice>> {
    start_bridge(&env, bridge, Device::create_shared)
}

/// Takes over the device the bridge's options name (`id`), whose server
/// died, and serves it through this bridge, under `claim` (from
/// `claimRecovery`) if given; resolves once it is live again. IOs the
/// dead server held reach `onBatch` first.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn recover_bridged_device(
    env: Env,
    bridge: &NativeBridge,
    claim: Option<&NativeRecoveryClaim>,
) -> napi::Result<AsyncTask<CreateDevice>> {
    let claim = claim.map(NativeRecoveryClaim::take).transpose()?;
    start_bridge(&env, bridge, move |opts, target| match claim {
        Some(claim) => Device::recover_claimed(claim, opts, target),
        None => Device::recover_shared(opts, target),
    })
}

fn start_bridge(
    env: &Env,
    bridge: &NativeBridge,
    start: impl FnOnce(&ublk_core::DeviceOptions, Arc<BridgeTarget>) -> ublk_core::Result<Device>
        + Send
        + 'static,
) -> napi::Result<AsyncTask<CreateDevice>> {
    bridge.start_once()?;
    register_env_cleanup(env);
    let (target, opts) = (bridge.target.clone(), bridge.opts.clone());
    let failed = bridge.target.clone();
    Ok(CreateDevice::new(
        move || start(&opts, target).map_err(to_napi),
        move || failed.release(),
    ))
}

#[napi]
impl NativeBridge {
    /// Hands the first `resultCount` IO results of `results` (`[tag, seq,
    /// result]*`) and the first `requestCount` backend requests of
    /// `requests` (`[id, kind, mode, file, tag, seq, bufOffset, length,
    /// fileOffset]*`) to queue `queue`, after detaching the completed IOs'
    /// buffers (`detach`, or null). The tables may be longer than their
    /// rows, so a caller can keep them from one post to the next.
    /// `batchTaken` tells the queue its last hand-over was taken in.
    /// A malformed request is refused alone (its id gets the errno).
    #[napi(
        ts_args_type = "queue: number, results: Float64Array, resultCount: number, requests: Float64Array, requestCount: number, detach: Array<ArrayBuffer | null> | null, batchTaken: boolean"
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn post(
        &self,
        env: Env,
        queue: u32,
        results: Float64ArraySlice<'_>,
        result_count: f64,
        requests: Float64ArraySlice<'_>,
        request_count: f64,
        detach: Unknown<'_>,
        batch_taken: bool,
    ) -> napi::Result<()> {
        let qid = u16::try_from(queue).unwrap_or(u16::MAX);
        if self.own_queue.is_some_and(|own| own != qid) {
            return Err(to_napi(ublk_core::Error::invalid(format!(
                "this handler serves queue {}, not queue {queue}",
                self.own_queue.unwrap_or_default()
            ))));
        }
        let shared = self
            .target
            .queue(qid)
            .ok_or_else(|| to_napi(ublk_core::Error::invalid(format!("no queue {queue}"))))?;
        let results = wire::rows(&results, result_count, wire::RESULT_FIELDS, "results")
            .and_then(wire::decode_results)
            .map_err(to_napi)?;
        let requests = wire::rows(&requests, request_count, wire::REQUEST_FIELDS, "requests")
            .and_then(wire::decode_requests)
            .map_err(to_napi)?;
        // Detach first: once the queue thread has the result, the buffer
        // belongs to the tag's next IO.
        detach_all(&env, detach.raw())?;
        shared.post(results, requests, batch_taken);
        Ok(())
    }

    /// Opens a backing file for this device's backend IO.
    #[napi(ts_return_type = "Promise<NativeBackingFile>")]
    pub fn open_backing(
        &self,
        path: String,
        direct: bool,
        read_only: bool,
    ) -> AsyncTask<OpenBacking> {
        AsyncTask::new(OpenBacking {
            target: self.target.clone(),
            path,
            direct,
            read_only,
        })
    }

    /// The backing file with `handle`, opened by any thread serving this
    /// device (a worker learns of the files a route it did not set names),
    /// or null.
    #[napi]
    pub fn backing_file(&self, handle: f64) -> Option<NativeBackingFile> {
        let handle = u32_arg("handle", handle).ok()?;
        self.target
            .backing_file(handle)
            .map(|f| NativeBackingFile::new(handle, &f))
    }

    /// Allocates a zeroed, page-aligned staging buffer of `size` bytes for
    /// backend IO that is not an IO's data (metadata, resync copies).
    /// Returns its handle; `stagingBuffer(handle)` gives the memory.
    #[napi]
    pub fn alloc_staging(&self, size: f64) -> napi::Result<u32> {
        let size = integer("size", size, MAX_STAGING_BYTES as u64).map_err(to_napi)?;
        let (handle, _) = self
            .target
            .staging()
            .alloc(size as usize)
            .map_err(to_napi)?;
        Ok(handle)
    }

    /// The memory of a staging buffer, as an ArrayBuffer that keeps it alive.
    #[napi(ts_return_type = "ArrayBuffer")]
    pub fn staging_buffer(&self, env: Env, handle: f64) -> napi::Result<RawValue> {
        let handle = u32_arg("handle", handle).map_err(to_napi)?;
        let buffer = self.target.staging().get(handle).ok_or_else(|| {
            to_napi(ublk_core::Error::new(
                libc::EBADF,
                format!("no staging buffer {handle} in this device"),
            ))
        })?;
        staging_array_buffer(&env, buffer)
    }

    /// Forgets a staging buffer: requests naming it fail with EBADF from
    /// now on; the memory lives while operations or JS views still use it.
    #[napi]
    pub fn free_staging(&self, handle: f64) -> bool {
        u32_arg("handle", handle).is_ok_and(|h| self.target.staging().remove(h))
    }

    /// Serves reads straight from backing files on the queue threads:
    /// region `r` (of `stripeBytes`) of the device is read from
    /// `files[r % files.length]` at `fileOffset` plus the device offset. A
    /// read that fails there reaches JavaScript with the failure attached.
    /// `null` sends every read to JavaScript again. Takes effect for reads
    /// that arrive after it returns.
    #[napi(ts_args_type = "files: Array<number> | null, fileOffset: number, stripeBytes: number")]
    pub fn set_read_route(
        &self,
        files: Option<Vec<f64>>,
        file_offset: f64,
        stripe_bytes: f64,
    ) -> napi::Result<()> {
        let route = match files {
            None => None,
            Some(files) => Some(ReadRoute {
                files: route_files(files)?,
                file_offset: route_offset(file_offset)?,
                stripe_bytes: integer("stripeBytes", stripe_bytes, 1 << 40).map_err(to_napi)?,
            }),
        };
        self.target.set_read_route(route).map_err(to_napi)
    }

    /// Reads the read route served without JavaScript so far.
    #[napi]
    pub fn routed_reads(&self) -> f64 {
        self.target.routed_reads() as f64
    }

    /// Serves writes on the queue threads: each write goes to every one of
    /// `files` at `fileOffset` plus the device offset, and completes when
    /// all copies landed. A write that fails there reaches JavaScript with
    /// the failure attached. `gated`: only writes to chunks open in the
    /// device's write gate. `offload`: the copies run on io_uring's worker
    /// threads (`IOSQE_ASYNC`) instead of the queue thread. `null` sends
    /// every write to JavaScript again. EINVAL for an ungated route on a
    /// target with batch hooks. Takes effect for writes that arrive after
    /// it returns.
    #[napi(
        ts_args_type = "files: Array<number> | null, fileOffset: number, gated: boolean, offload: boolean"
    )]
    pub fn set_write_route(
        &self,
        files: Option<Vec<f64>>,
        file_offset: f64,
        gated: bool,
        offload: bool,
    ) -> napi::Result<()> {
        let route = match files {
            None => None,
            Some(files) => Some(WriteRoute {
                files: route_files(files)?,
                file_offset: route_offset(file_offset)?,
                gated,
                offload,
            }),
        };
        self.target.set_write_route(route).map_err(to_napi)
    }

    /// Gives the device its write gate: chunks of `chunkBytes` over the
    /// device, all closed. Once per device (EBUSY after that), except that
    /// the queues' worker threads share it: a worker's bridge gets the
    /// gate already there if its chunks are `chunkBytes` long.
    #[napi]
    pub fn create_write_gate(&self, chunk_bytes: f64) -> napi::Result<NativeWriteGate> {
        let chunk_bytes = integer("chunkBytes", chunk_bytes, u64::MAX).map_err(to_napi)?;
        if self.own_queue.is_some() {
            return self
                .target
                .shared_write_gate(self.opts.size, chunk_bytes)
                .map(NativeWriteGate::new)
                .map_err(to_napi);
        }
        self.target
            .create_write_gate(self.opts.size, chunk_bytes)
            .map(NativeWriteGate::new)
            .map_err(to_napi)
    }

    /// Writes the write route served without JavaScript so far.
    #[napi]
    pub fn routed_writes(&self) -> f64 {
        self.target.routed_writes() as f64
    }

    /// Releases the batch handler and files of a bridge that will not be
    /// started. In a worker thread: lets go of the queue's handler, whose
    /// IOs fail with EIO from then on.
    #[napi]
    pub fn close(&self) {
        if let Some(qid) = self.own_queue {
            self.target.detach_queue_sink(qid);
        } else if !self.started.load(Ordering::SeqCst) {
            self.target.release();
        }
    }

    /// Serves queue `queue`'s ring from this thread's event loop instead of
    /// a queue thread of its own: an IO then wakes this thread only. Call
    /// before the device starts, with the handler the bridge was made
    /// with (both write into the same tables); a thread hosts one queue
    /// at most.
    #[napi(
        ts_args_type = "queue: number, onBatch: (queue: number, ios: number, backend: number, events: number, buffers: Array<ArrayBuffer | null> | null, table: Float64Array | null) => void"
    )]
    pub fn host_queue(
        &self,
        env: Env,
        queue: u32,
        on_batch: Function<'_, crate::handover::JsBatch, ()>,
    ) -> napi::Result<()> {
        let qid = u16::try_from(queue)
            .map_err(|_| to_napi(ublk_core::Error::invalid(format!("no queue {queue}"))))?;
        let host = crate::host::JsQueueHost::new(
            &env,
            on_batch.raw(),
            self.target.clone(),
            self.inbound.clone(),
        )?;
        self.target.host_queue(qid, Arc::new(host)).map_err(to_napi)
    }

    /// A token for `attachBridgeQueue`, by which a worker thread of this
    /// process serves one queue of this bridge's device.
    #[napi]
    pub fn share(&self) -> u32 {
        crate::workers::share(&self.target, &self.opts)
    }
}

/// A route's file handles, each checked as a whole number the core then
/// looks up.
fn route_files(files: Vec<f64>) -> napi::Result<Vec<u32>> {
    files
        .into_iter()
        .map(|f| u32_arg("file", f))
        .collect::<ublk_core::Result<_>>()
        .map_err(to_napi)
}

fn route_offset(file_offset: f64) -> napi::Result<u64> {
    integer("fileOffset", file_offset, i64::MAX as u64).map_err(to_napi)
}

#[napi(object)]
pub struct NativeBackingFile {
    /// The file's handle in this device.
    pub handle: u32,
    /// The path it was opened by.
    pub path: String,
    pub size: f64,
    pub direct: bool,
    pub read_only: bool,
    pub block_device: bool,
}

pub struct OpenBacking {
    target: Arc<BridgeTarget>,
    path: String,
    direct: bool,
    read_only: bool,
}

impl Task for OpenBacking {
    type Output = (u32, Arc<BackingFile>);
    type JsValue = NativeBackingFile;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("open backing file", || {
            self.target
                .open_file(&self.path, self.direct, self.read_only)
                .map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, (handle, f): Self::Output) -> napi::Result<NativeBackingFile> {
        Ok(NativeBackingFile::new(handle, &f))
    }
}

impl NativeBackingFile {
    fn new(handle: u32, f: &BackingFile) -> Self {
        NativeBackingFile {
            handle,
            path: f.path.clone(),
            size: f.size as f64,
            direct: f.direct,
            read_only: f.read_only,
            block_device: f.block_device,
        }
    }
}
