//! `createDevice` for the built-in targets, and the device handle
//! JavaScript holds. The devices themselves, their registry and the order
//! in which they stop live in the core; a device is also stopped when the
//! JavaScript environment that created it shuts down.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;
use ublk_core::js_numbers::{integer, u16_arg, u32_arg};
use ublk_core::{Device, HandedOver};

use crate::errors::{guard, to_napi};
use crate::info::DeviceInfo;
use crate::recovery::NativeRecoveryClaim;
use crate::stats::{device_stats, NativeDeviceStats};

thread_local! {
    /// Devices created from this thread's JavaScript environment, stopped by
    /// its cleanup hook; `None` until the hook is registered.
    static ENV_DEVICES: RefCell<Option<Vec<Device>>> = const { RefCell::new(None) };
}

#[napi(object)]
pub struct NativeDeviceOptions {
    /// Built-in target kind ("null" or "loop"), or the kind name a
    /// JavaScript target reports.
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
    /// Run zero copy where the kernel and the target allow it (default);
    /// false keeps the copy path.
    pub zero_copy: Option<bool>,
    /// Fetch and commit IOs many per command (`UBLK_F_BATCH_IO`) where
    /// the kernel has it and the device runs the copy path; default false.
    pub batch_io: Option<bool>,
    /// When the serving process dies: "none" (default: the device dies
    /// too) or "reissue" (it waits for a new process to recover it, and
    /// the IOs the dead one held are reissued).
    pub recovery: Option<String>,
}

pub fn core_options(opts: &NativeDeviceOptions) -> ublk_core::Result<ublk_core::DeviceOptions> {
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
        zero_copy: opts.zero_copy.unwrap_or(defaults.zero_copy),
        batch_io: opts.batch_io.unwrap_or(defaults.batch_io),
        recovery: opts
            .recovery
            .as_deref()
            .map(ublk_core::Recovery::parse)
            .transpose()?
            .unwrap_or(defaults.recovery),
        ..defaults
    })
}

/// Runs a device's creation off the JavaScript thread.
pub struct CreateDevice {
    create: Option<Box<dyn FnOnce() -> napi::Result<Device> + Send>>,
    /// Undoes what creating needed, if it failed (a bridge's release).
    on_failure: Option<Box<dyn FnOnce() + Send>>,
}

impl CreateDevice {
    pub fn new(
        create: impl FnOnce() -> napi::Result<Device> + Send + 'static,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> AsyncTask<CreateDevice> {
        AsyncTask::new(CreateDevice {
            create: Some(Box::new(create)),
            on_failure: Some(Box::new(on_failure)),
        })
    }
}

impl Task for CreateDevice {
    type Output = Device;
    type JsValue = NativeDevice;

    fn compute(&mut self) -> napi::Result<Device> {
        let create = self.create.take().expect("compute runs once");
        guard("create device", create)
    }

    fn reject(&mut self, _: Env, err: napi::Error) -> napi::Result<NativeDevice> {
        if let Some(undo) = self.on_failure.take() {
            undo();
        }
        Err(err)
    }

    fn resolve(&mut self, _: Env, device: Device) -> napi::Result<NativeDevice> {
        ENV_DEVICES.with(|devices| {
            if let Some(devices) = devices.borrow_mut().as_mut() {
                devices.retain(|d| !d.is_stopped());
                devices.push(device.clone());
            }
        });
        Ok(NativeDevice::new(device))
    }
}

/// Adds a device served by a built-in target and starts it; resolves once
/// its block device exists.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn create_device(env: Env, options: NativeDeviceOptions) -> AsyncTask<CreateDevice> {
    start_builtin(&env, options, ublk_core::targets::create_builtin)
}

/// Takes over device `options.id`, whose server died, with a built-in
/// target, under `claim` (from `claimRecovery`) if given; `options` must
/// describe the device as it is. Resolves once it is live again.
#[napi(ts_return_type = "Promise<NativeDevice>")]
pub fn recover_device(
    env: Env,
    options: NativeDeviceOptions,
    claim: Option<&NativeRecoveryClaim>,
) -> napi::Result<AsyncTask<CreateDevice>> {
    let claim = claim.map(NativeRecoveryClaim::take).transpose()?;
    Ok(start_builtin(&env, options, move |opts, kind, path| {
        ublk_core::targets::recover_builtin(claim, opts, kind, path)
    }))
}

fn start_builtin(
    env: &Env,
    options: NativeDeviceOptions,
    start: impl FnOnce(&ublk_core::DeviceOptions, &str, Option<&str>) -> ublk_core::Result<Device>
        + Send
        + 'static,
) -> AsyncTask<CreateDevice> {
    register_env_cleanup(env);
    let request = core_options(&options).map_err(to_napi);
    CreateDevice::new(
        move || {
            let opts = request?;
            start(&opts, &options.target, options.path.as_deref()).map_err(to_napi)
        },
        || {},
    )
}

/// Stops the devices of this environment when it shuts down (a worker
/// ending, Node exiting without `process.exit()`).
pub fn register_env_cleanup(env: &Env) {
    ENV_DEVICES.with(|devices| {
        let mut devices = devices.borrow_mut();
        if devices.is_some() {
            return;
        }
        let registered = env.add_env_cleanup_hook((), |_| {
            let devices = ENV_DEVICES.with(|d| d.borrow_mut().take().unwrap_or_default());
            for device in devices {
                let _ = device.stop();
            }
        });
        if registered.is_ok() {
            *devices = Some(Vec::new());
        }
    });
}

/// A started device served by this process.
#[napi]
pub struct NativeDevice {
    device: Device,
    /// Held from a hand-over until the target has closed.
    handed_over: Arc<Mutex<Option<HandedOver>>>,
}

impl NativeDevice {
    pub(crate) fn new(device: Device) -> NativeDevice {
        NativeDevice {
            device,
            handed_over: Arc::default(),
        }
    }
}

#[napi]
impl NativeDevice {
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.device.id()
    }

    /// `/dev/ublkbN`
    #[napi(getter)]
    pub fn block_path(&self) -> String {
        self.device.block_path()
    }

    /// `/dev/ublkcN`
    #[napi(getter)]
    pub fn char_path(&self) -> String {
        self.device.char_path()
    }

    #[napi(getter)]
    pub fn target(&self) -> String {
        self.device.kind().to_string()
    }

    /// True once `stop()` completed, or the device was deleted by id.
    #[napi(getter)]
    pub fn stopped(&self) -> bool {
        self.device.is_stopped()
    }

    /// False once the device is stopped, or no longer served because the
    /// kernel device went away (it still needs `stop()` then).
    #[napi(getter)]
    pub fn serving(&self) -> bool {
        self.device.is_serving()
    }

    /// The device's IO figures per queue and in total, as its queue
    /// threads count them (the last ones once it stopped).
    #[napi]
    pub fn stats(&self) -> NativeDeviceStats {
        device_stats(&self.device.stats())
    }

    /// The device as the kernel describes it now.
    #[napi(ts_return_type = "Promise<DeviceInfo>")]
    pub fn info(&self) -> AsyncTask<OwnedDeviceInfo> {
        AsyncTask::new(OwnedDeviceInfo(self.device.clone()))
    }

    /// Stops the device and deletes it; resolves when it is gone. Calling it
    /// again resolves at once.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop(&self) -> AsyncTask<StopDevice> {
        AsyncTask::new(StopDevice(self.device.clone()))
    }

    /// A live upgrade by a process that lives on: the kernel quiesces the
    /// device, what the target holds is answered, and the device waits for
    /// its next server; no other process may take it over until
    /// `finishHandOver()`. Recovery devices on Linux 6.16+ only
    /// (EOPNOTSUPP elsewhere: abandon and exit instead).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn hand_over(&self) -> AsyncTask<HandOverDevice> {
        AsyncTask::new(HandOverDevice(
            self.device.clone(),
            self.handed_over.clone(),
        ))
    }

    /// Lets the next server take a handed-over device.
    #[napi]
    pub fn finish_hand_over(&self) {
        self.handed_over.lock().unwrap().take();
    }

    /// For a process about to exit: leaves the device to the kernel, not
    /// stopped or deleted by this process (a recovery device then waits
    /// for its next server, as after a crash).
    #[napi]
    pub fn abandon(&self) {
        self.device.abandon()
    }
}

pub struct OwnedDeviceInfo(Device);

impl Task for OwnedDeviceInfo {
    type Output = ublk_core::DeviceInfo;
    type JsValue = DeviceInfo;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("read device info", || self.0.info().map_err(to_napi))
    }

    fn resolve(&mut self, _: Env, out: Self::Output) -> napi::Result<DeviceInfo> {
        Ok(out.into())
    }
}

pub struct StopDevice(Device);

impl Task for StopDevice {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        guard("stop device", || self.0.stop().map_err(to_napi))
    }

    fn resolve(&mut self, _: Env, _: ()) -> napi::Result<()> {
        Ok(())
    }
}

pub struct HandOverDevice(Device, Arc<Mutex<Option<HandedOver>>>);

impl Task for HandOverDevice {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        guard("hand over device", || {
            let handed = self.0.hand_over().map_err(to_napi)?;
            *self.1.lock().unwrap() = Some(handed);
            Ok(())
        })
    }

    fn resolve(&mut self, _: Env, _: ()) -> napi::Result<()> {
        Ok(())
    }
}
