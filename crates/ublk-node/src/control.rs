//! Queries and commands that need no queue, run off the JavaScript thread.

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;

use crate::errors::{guard, to_napi};
use crate::info::{DeviceInfo, KernelFeatures};
use ublk_core::js_numbers::{integer, u32_arg};

pub struct ListDevices;

impl Task for ListDevices {
    type Output = Vec<ublk_core::DeviceInfo>;
    type JsValue = Vec<DeviceInfo>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("list devices", || {
            ublk_core::control::list_devices().map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, out: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(out.into_iter().map(DeviceInfo::from).collect())
    }
}

/// Every ublk device on this machine, whoever serves it.
#[napi(ts_return_type = "Promise<Array<DeviceInfo>>")]
pub fn list_devices() -> AsyncTask<ListDevices> {
    AsyncTask::new(ListDevices)
}

type InfoQuery = Box<dyn FnOnce() -> ublk_core::Result<ublk_core::DeviceInfo> + Send>;

/// A question about one device, answered off the JavaScript thread.
pub struct ReadDeviceInfo {
    query: Option<napi::Result<InfoQuery>>,
}

impl ReadDeviceInfo {
    fn task(query: napi::Result<InfoQuery>) -> AsyncTask<ReadDeviceInfo> {
        AsyncTask::new(ReadDeviceInfo { query: Some(query) })
    }
}

impl Task for ReadDeviceInfo {
    type Output = ublk_core::DeviceInfo;
    type JsValue = DeviceInfo;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        guard("read device info", || {
            let query = self.query.take().expect("compute runs once")?;
            query().map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, out: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(out.into())
    }
}

/// One device's info, read from the kernel.
#[napi(ts_return_type = "Promise<DeviceInfo>")]
pub fn device_info(id: f64) -> AsyncTask<ReadDeviceInfo> {
    ReadDeviceInfo::task(
        u32_arg("id", id)
            .map(|id| -> InfoQuery { Box::new(move || ublk_core::control::device_info(id)) })
            .map_err(to_napi),
    )
}

/// Waits while device `id` is served, until its server dies and the
/// kernel holds it for a new one, for at most `timeoutMs` (default: for
/// ever); resolves with its info. A device that cannot be recovered is
/// refused at once. Holds a thread of the libuv pool while it waits.
#[napi(ts_return_type = "Promise<DeviceInfo>")]
pub fn wait_recoverable(id: f64, timeout_ms: Option<f64>) -> AsyncTask<ReadDeviceInfo> {
    let args = u32_arg("id", id).and_then(|id| {
        let timeout = timeout_ms
            .map(|ms| integer("timeoutMs", ms, u32::MAX as u64))
            .transpose()?
            .map(std::time::Duration::from_millis);
        Ok((id, timeout))
    });
    ReadDeviceInfo::task(
        args.map(|(id, timeout)| -> InfoQuery {
            Box::new(move || ublk_core::wait_recoverable(id, timeout))
        })
        .map_err(to_napi),
    )
}

pub struct DeleteDevice {
    id: Result<u32, napi::Error>,
}

impl Task for DeleteDevice {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        guard("delete device", || {
            let id = std::mem::replace(&mut self.id, Ok(0))?;
            ublk_core::control::delete_device(id).map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, _: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// Stops and deletes a device by id.
#[napi(ts_return_type = "Promise<void>")]
pub fn delete_device(id: f64) -> AsyncTask<DeleteDevice> {
    AsyncTask::new(DeleteDevice {
        id: u32_arg("id", id).map_err(to_napi),
    })
}

/// Stops every device this process serves, synchronously. For exit
/// handlers: `process.exit()` skips the environment cleanup hooks.
#[napi]
pub fn stop_all_devices() {
    ublk_core::stop_all_served();
}

/// What the running kernel's ublk driver supports.
#[napi]
pub fn kernel_features() -> napi::Result<KernelFeatures> {
    let features = ublk_core::control::kernel_features().map_err(to_napi)?;
    Ok(KernelFeatures {
        names: features.names,
        mask: features.mask.into(),
        max_queues: ublk_core::kernel_max_queues() as u32,
        max_depth: ublk_core::MAX_DEPTH as u32,
    })
}
