//! `createDevice` and the device handle JavaScript holds.
//!
//! Devices served by this process are kept in a registry so that
//! `deleteDevice(id)` stops them through their owner, and so that they are
//! stopped when the JavaScript environment that created them shuts down:
//! a process that exits leaves no device behind.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use napi::bindgen_prelude::{AsyncTask, Float64Array, Function, JsValue, Unknown};
use napi::{Env, Task};
use napi_derive::napi;
use ublk_core::Device;

use crate::bridge::{
    batch_to_js, decode_requests, decode_results, detach_all, staging_array_buffer, BatchFn,
    Bridged, JsBatch, JsSink, RawValue,
};
use crate::errors::{guard, to_napi};
use crate::info::DeviceInfo;
use ublk_core::bridge::{
    BackingFile, BackingFiles, Batch, BridgeTarget, Capabilities, QueueShared, ReadRoute,
    MAX_STAGING_BYTES,
};
use ublk_core::js_numbers::{integer, u16_arg, u32_arg};

/// A running device and, for JS targets, the bridge that serves it.
pub struct Served {
    dev: Device,
    bridged: Option<Arc<Bridged>>,
}

impl Served {
    fn id(&self) -> u32 {
        self.dev.id()
    }

    /// Fails what JS still holds (stop must not wait for it), stops the
    /// device, then lets go of the JS handler.
    fn stop(mut self) -> ublk_core::Result<()> {
        if let Some(b) = &self.bridged {
            b.shut();
        }
        let res = self.dev.stop();
        if let Some(b) = &self.bridged {
            b.release();
        }
        res
    }
}

type Slot = Arc<Mutex<Option<Served>>>;

static OWNED: LazyLock<Mutex<HashMap<u32, Slot>>> = LazyLock::new(Default::default);

thread_local! {
    /// Devices created from this thread's JavaScript environment, stopped by
    /// its cleanup hook; `None` until the hook is registered.
    static ENV_DEVICES: RefCell<Option<Vec<Slot>>> = const { RefCell::new(None) };
}

/// Stops a device this process serves; `Ok(false)` if it serves none with
/// that id.
pub fn stop_owned_device(id: u32) -> napi::Result<bool> {
    let slot = OWNED.lock().unwrap().get(&id).cloned();
    match slot {
        Some(slot) => stop_slot(id, &slot),
        None => Ok(false),
    }
}

/// Stops the device in `slot`, if it still runs. Ids are reused once a
/// device is deleted, so the registry entry goes only if it is this slot's.
fn stop_slot(id: u32, slot: &Slot) -> napi::Result<bool> {
    let mut guard = slot.lock().unwrap();
    let Some(served) = guard.take() else {
        return Ok(false);
    };
    {
        let mut owned = OWNED.lock().unwrap();
        if owned.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            owned.remove(&id);
        }
    }
    served.stop().map(|_| true).map_err(to_napi)
}

/// Stops every device this process serves, synchronously. For exit
/// handlers: `process.exit()` skips the environment cleanup hooks.
#[napi]
pub fn stop_all_devices() {
    let slots: Vec<(u32, Slot)> = OWNED
        .lock()
        .unwrap()
        .iter()
        .map(|(id, slot)| (*id, slot.clone()))
        .collect();
    for (id, slot) in slots {
        let _ = stop_slot(id, &slot);
    }
}

#[napi(object)]
pub struct NativeDeviceOptions {
    /// Built-in target kind: "null" or "loop".
    pub target: String,
    /// Backing file or block device of a "loop" target.
    pub path: Option<String>,
    /// Capacity in bytes, a multiple of the logical block size.
    pub size: f64,
    /// 512 (default), 1024, 2048 or 4096.
    pub logical_block_size: Option<f64>,
    /// Hardware queues, default 1.
    pub queues: Option<f64>,
    /// IOs in flight per queue, default 64.
    pub depth: Option<f64>,
    /// Largest single IO in bytes, default 512 KiB.
    pub max_io_bytes: Option<f64>,
    /// Device id to ask for; default: the driver picks.
    pub id: Option<f64>,
}

fn core_options(opts: &NativeDeviceOptions) -> ublk_core::Result<ublk_core::DeviceOptions> {
    let defaults = ublk_core::DeviceOptions::default();
    Ok(ublk_core::DeviceOptions {
        id: opts.id.map(|v| u32_arg("id", v)).transpose()?,
        size: integer("size", opts.size, u64::MAX)?,
        logical_block_size: opts
            .logical_block_size
            .map(|v| u32_arg("logicalBlockSize", v))
            .transpose()?
            .unwrap_or(defaults.logical_block_size),
        queues: opts
            .queues
            .map(|v| u16_arg("queues", v))
            .transpose()?
            .unwrap_or(defaults.queues),
        depth: opts
            .depth
            .map(|v| u16_arg("depth", v))
            .transpose()?
            .unwrap_or(defaults.depth),
        max_io_bytes: opts
            .max_io_bytes
            .map(|v| u32_arg("maxIoBytes", v))
            .transpose()?
            .unwrap_or(defaults.max_io_bytes),
    })
}

pub struct CreateDevice {
    request: Option<napi::Result<(ublk_core::DeviceOptions, String)>>,
    path: Option<String>,
    bridged: Option<Arc<Bridged>>,
}

impl Task for CreateDevice {
    type Output = (Device, String);
    type JsValue = NativeDevice;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("create device", || {
            let (opts, kind) = self.request.take().expect("compute runs once")?;
            let target: Arc<dyn ublk_core::Target> = match &self.bridged {
                Some(b) => b.target.clone(),
                None => ublk_core::builtin_target(&kind, self.path.as_deref()).map_err(to_napi)?,
            };
            let dev = Device::create(&opts, target).map_err(to_napi)?;
            Ok((dev, kind))
        })
    }

    fn reject(&mut self, _: Env, err: napi::Error) -> napi::Result<Self::JsValue> {
        if let Some(b) = &self.bridged {
            b.release();
        }
        Err(err)
    }

    fn resolve(&mut self, _: Env, (dev, target): Self::Output) -> napi::Result<NativeDevice> {
        let id = dev.id();
        let bridged = self.bridged.take();
        let handle = NativeDevice {
            id,
            block_path: dev.block_path(),
            char_path: dev.char_path(),
            target,
            slot: Arc::new(Mutex::new(Some(Served { dev, bridged }))),
        };
        OWNED.lock().unwrap().insert(id, handle.slot.clone());
        ENV_DEVICES.with(|slots| {
            if let Some(slots) = slots.borrow_mut().as_mut() {
                slots.retain(|s| s.lock().unwrap().is_some());
                slots.push(handle.slot.clone());
            }
        });
        Ok(handle)
    }
}

/// Adds a device served by a built-in target and starts it; resolves once
/// its block device exists.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn create_device(env: Env, options: NativeDeviceOptions) -> AsyncTask<CreateDevice> {
    register_env_cleanup(&env);
    let request = core_options(&options)
        .map(|opts| (opts, options.target))
        .map_err(to_napi);
    AsyncTask::new(CreateDevice {
        request: Some(request),
        path: options.path,
        bridged: None,
    })
}

/// What a JS target can do; decides the device's parameters.
#[napi(object)]
pub struct NativeCapabilities {
    pub read_only: bool,
    pub flush: bool,
    pub fua: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// Prepares a device served by JavaScript: `onBatch(queue, ios, buffers,
/// backendResults)` is called once per ring reap, answers go back through
/// `NativeBridge.post`. Start it with `startBridgedDevice`.
#[napi(
    ts_args_type = "options: NativeDeviceOptions, capabilities: NativeCapabilities, onBatch: (queue: number, ios: Float64Array, buffers: Array<ArrayBuffer | null>, backend: Float64Array) => void"
)]
pub fn create_bridge(
    options: NativeDeviceOptions,
    capabilities: NativeCapabilities,
    on_batch: Function<'_, JsBatch, ()>,
) -> napi::Result<NativeBridge> {
    let opts = core_options(&options).map_err(to_napi)?;
    opts.validate(ublk_core::kernel_max_queues())
        .map_err(to_napi)?;
    let queues: Arc<OnceLock<Vec<Arc<QueueShared>>>> = Arc::new(OnceLock::new());
    let cb_queues = queues.clone();
    let func: BatchFn = on_batch
        .build_threadsafe_function::<Batch>()
        .weak::<true>()
        .build_callback(move |ctx| {
            batch_to_js(
                &ctx.env,
                cb_queues.get().map_or(&[], Vec::as_slice),
                ctx.value,
            )
        })?;
    let sink = Arc::new(JsSink::new(func));
    let caps = Capabilities {
        read_only: capabilities.read_only,
        flush: capabilities.flush,
        fua: capabilities.fua,
        discard: capabilities.discard,
        write_zeroes: capabilities.write_zeroes,
    };
    let target = BridgeTarget::new(
        options.target.clone(),
        caps,
        sink.clone(),
        opts.queues,
        opts.depth,
        opts.max_io_bytes,
    )
    .map_err(to_napi)?;
    let _ = queues.set(target.queues().to_vec());
    Ok(NativeBridge {
        bridged: Arc::new(Bridged {
            target: Arc::new(target),
            sink,
        }),
        opts,
        kind: options.target,
        started: AtomicBool::new(false),
    })
}

/// Starts a device prepared by `createBridge`; resolves once its block
/// device exists. IOs may reach `onBatch` before that.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn start_bridged_device(
    env: Env,
    bridge: &NativeBridge,
) -> napi::Result<AsyncTask<CreateDevice>> {
    if bridge.started.swap(true, Ordering::SeqCst) {
        return Err(to_napi(ublk_core::Error::new(
            libc::EALREADY,
            "this bridge was already started",
        )));
    }
    register_env_cleanup(&env);
    Ok(AsyncTask::new(CreateDevice {
        request: Some(Ok((bridge.opts.clone(), bridge.kind.clone()))),
        path: None,
        bridged: Some(bridge.bridged.clone()),
    }))
}

/// Drives a bridge that was not started with `total` synthetic 4 KiB reads
/// on queue 0, `batchMax` per hand-over; resolves with the nanoseconds it
/// took. For the dispatch-path benchmark: no kernel involved.
#[napi(ts_return_type = "Promise<number>")]
pub fn run_synthetic_bridge(
    bridge: &NativeBridge,
    total: f64,
    batch_max: f64,
) -> napi::Result<AsyncTask<SyntheticRun>> {
    if bridge.started.swap(true, Ordering::SeqCst) {
        return Err(to_napi(ublk_core::Error::new(
            libc::EALREADY,
            "this bridge was already started",
        )));
    }
    Ok(AsyncTask::new(SyntheticRun {
        bridged: bridge.bridged.clone(),
        total: integer("total", total, u64::MAX).map_err(to_napi)?,
        batch_max: u32_arg("batchMax", batch_max).map_err(to_napi)? as usize,
    }))
}

pub struct SyntheticRun {
    bridged: Arc<Bridged>,
    total: u64,
    batch_max: usize,
}

impl Task for SyntheticRun {
    type Output = f64;
    type JsValue = f64;

    fn compute(&mut self) -> napi::Result<f64> {
        guard("synthetic bridge run", || {
            let shared = self
                .bridged
                .target
                .queue(0)
                .ok_or_else(|| to_napi(ublk_core::Error::invalid("the bridge has no queue")))?;
            let took = ublk_core::bridge::synthetic::run(
                shared,
                self.bridged.sink.as_ref(),
                self.total,
                self.batch_max,
            )
            .map_err(to_napi)?;
            Ok(took.as_nanos() as f64)
        })
    }

    fn resolve(&mut self, _: Env, out: f64) -> napi::Result<f64> {
        self.bridged.release();
        Ok(out)
    }

    fn reject(&mut self, _: Env, err: napi::Error) -> napi::Result<f64> {
        self.bridged.release();
        Err(err)
    }
}

/// The JavaScript side of a device served by JavaScript.
#[napi]
pub struct NativeBridge {
    bridged: Arc<Bridged>,
    opts: ublk_core::DeviceOptions,
    kind: String,
    started: AtomicBool,
}

#[napi]
impl NativeBridge {
    /// Hands IO results (`[tag, seq, result]*`) and backend requests
    /// (`[id, kind, mode, file, tag, seq, bufOffset, length, fileOffset]*`) to
    /// queue `queue`, after detaching the completed IOs' buffers.
    /// `batchTaken` tells the queue its last batch was taken in, so it may
    /// hand over the next one.
    #[napi(
        ts_args_type = "queue: number, results: Float64Array, requests: Float64Array, detach: Array<ArrayBuffer | null>, batchTaken: boolean"
    )]
    pub fn post(
        &self,
        env: Env,
        queue: u32,
        results: Float64Array,
        requests: Float64Array,
        detach: Unknown<'_>,
        batch_taken: bool,
    ) -> napi::Result<()> {
        let bridged = &self.bridged;
        let shared = bridged
            .target
            .queue(queue as u16)
            .ok_or_else(|| to_napi(ublk_core::Error::invalid(format!("no queue {queue}"))))?;
        let results = decode_results(&results)?;
        let requests = decode_requests(&requests)?;
        // Detach first: once the queue thread has the result, the buffer
        // belongs to the tag's next IO.
        detach_all(&env, detach.raw())?;
        shared.inbox.post(&results, &requests, batch_taken);
        Ok(())
    }

    /// Opens a backing file for this device's backend IO.
    #[napi(ts_return_type = "Promise<NativeBackingFile>")]
    pub fn open_backing(
        &self,
        path: String,
        direct: bool,
        read_only: bool,
    ) -> napi::Result<AsyncTask<OpenBacking>> {
        let bridged = &self.bridged;
        Ok(AsyncTask::new(OpenBacking {
            files: bridged.target.files().clone(),
            path,
            direct,
            read_only,
        }))
    }

    /// Allocates a zeroed, page-aligned staging buffer of `size` bytes for
    /// backend IO that is not an IO's data (metadata, resync copies).
    /// Returns its index; `stagingBuffer(index)` gives the memory.
    #[napi]
    pub fn alloc_staging(&self, size: f64) -> napi::Result<u32> {
        let size = integer("size", size, MAX_STAGING_BYTES as u64).map_err(to_napi)?;
        let (index, _) = self
            .bridged
            .target
            .staging()
            .alloc(size as usize)
            .map_err(to_napi)?;
        Ok(index)
    }

    /// The memory of a staging buffer, as an ArrayBuffer that keeps it alive.
    #[napi(ts_return_type = "ArrayBuffer")]
    pub fn staging_buffer(&self, env: Env, index: u32) -> napi::Result<RawValue> {
        let buffer = self.bridged.target.staging().get(index).ok_or_else(|| {
            to_napi(ublk_core::Error::new(
                libc::EBADF,
                format!("no staging buffer {index}"),
            ))
        })?;
        staging_array_buffer(&env, buffer)
    }

    /// Forgets a staging buffer: requests naming it fail with EBADF from
    /// now on; the memory lives while operations or JS views still use it.
    #[napi]
    pub fn free_staging(&self, index: u32) -> bool {
        self.bridged.target.staging().free(index)
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
        files: Option<Vec<u32>>,
        file_offset: f64,
        stripe_bytes: f64,
    ) -> napi::Result<()> {
        let route = match files {
            None => None,
            Some(files) => Some(ReadRoute {
                files,
                file_offset: integer("fileOffset", file_offset, i64::MAX as u64)
                    .map_err(to_napi)?,
                stripe_bytes: integer("stripeBytes", stripe_bytes, 1 << 40).map_err(to_napi)?,
            }),
        };
        self.bridged.target.set_read_route(route).map_err(to_napi)
    }

    /// Reads the read route served without JavaScript so far.
    #[napi]
    pub fn routed_reads(&self) -> f64 {
        self.bridged.target.routed_reads() as f64
    }

    /// Releases the batch handler of a bridge that will not be started.
    #[napi]
    pub fn close(&self) {
        if !self.started.load(Ordering::SeqCst) {
            self.bridged.release();
        }
    }
}

fn register_env_cleanup(env: &Env) {
    ENV_DEVICES.with(|slots| {
        let mut slots = slots.borrow_mut();
        if slots.is_some() {
            return;
        }
        let registered = env.add_env_cleanup_hook((), |_| {
            let slots = ENV_DEVICES.with(|s| s.borrow_mut().take().unwrap_or_default());
            for slot in slots {
                let id = slot.lock().unwrap().as_ref().map(Served::id);
                if let Some(id) = id {
                    let _ = stop_slot(id, &slot);
                }
            }
        });
        if registered.is_ok() {
            *slots = Some(Vec::new());
        }
    });
}

/// A started device served by this process.
#[napi]
pub struct NativeDevice {
    id: u32,
    block_path: String,
    char_path: String,
    target: String,
    slot: Slot,
}

#[napi]
impl NativeDevice {
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `/dev/ublkbN`
    #[napi(getter)]
    pub fn block_path(&self) -> String {
        self.block_path.clone()
    }

    /// `/dev/ublkcN`
    #[napi(getter)]
    pub fn char_path(&self) -> String {
        self.char_path.clone()
    }

    #[napi(getter)]
    pub fn target(&self) -> String {
        self.target.clone()
    }

    /// True once `stop()` completed, or the device was deleted by id.
    #[napi(getter)]
    pub fn stopped(&self) -> bool {
        self.slot.lock().unwrap().is_none()
    }

    /// The device as the kernel describes it now.
    #[napi(ts_return_type = "Promise<DeviceInfo>")]
    pub fn info(&self) -> AsyncTask<OwnedDeviceInfo> {
        AsyncTask::new(OwnedDeviceInfo {
            slot: self.slot.clone(),
            id: self.id,
        })
    }

    /// Stops the device and deletes it; resolves when it is gone. Calling it
    /// again resolves at once.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop(&self) -> AsyncTask<StopDevice> {
        AsyncTask::new(StopDevice {
            id: self.id,
            slot: self.slot.clone(),
        })
    }
}

#[napi(object)]
pub struct NativeBackingFile {
    pub index: u32,
    pub size: f64,
    pub direct: bool,
    pub read_only: bool,
    pub block_device: bool,
}

pub struct OpenBacking {
    files: Arc<BackingFiles>,
    path: String,
    direct: bool,
    read_only: bool,
}

impl Task for OpenBacking {
    type Output = (u32, Arc<BackingFile>);
    type JsValue = NativeBackingFile;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("open backing file", || {
            self.files
                .open(&self.path, self.direct, self.read_only)
                .map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, (index, f): Self::Output) -> napi::Result<NativeBackingFile> {
        Ok(NativeBackingFile {
            index,
            size: f.size as f64,
            direct: f.direct,
            read_only: f.read_only,
            block_device: f.block_device,
        })
    }
}

pub struct OwnedDeviceInfo {
    slot: Slot,
    id: u32,
}

impl Task for OwnedDeviceInfo {
    type Output = ublk_core::DeviceInfo;
    type JsValue = DeviceInfo;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("read device info", || {
            let guard = self.slot.lock().unwrap();
            match guard.as_ref() {
                Some(served) => served.dev.info().map_err(to_napi),
                None => Err(to_napi(ublk_core::Error::new(
                    libc::ENODEV,
                    format!("ublk device {} was stopped", self.id),
                ))),
            }
        })
    }

    fn resolve(&mut self, _: Env, out: Self::Output) -> napi::Result<DeviceInfo> {
        Ok(out.into())
    }
}

pub struct StopDevice {
    id: u32,
    slot: Slot,
}

impl Task for StopDevice {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        guard("stop device", || stop_slot(self.id, &self.slot).map(|_| ()))
    }

    fn resolve(&mut self, _: Env, _: ()) -> napi::Result<()> {
        Ok(())
    }
}
