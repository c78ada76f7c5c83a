//! Recovery claims: the right to take a device over, held from JavaScript
//! across what a target does before it serves (a RAID1 target reads and
//! writes its members' metadata), and handed to the recovery itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;

use crate::errors::{guard, to_napi};
use crate::info::DeviceInfo;
use ublk_core::js_numbers::{integer, u32_arg};
use ublk_core::RecoveryClaim;

/// A claim on one device's recovery (see `claimRecovery`). It ends when a
/// recovery given it finishes, or on `release()`.
#[napi]
pub struct NativeRecoveryClaim {
    claim: Arc<Mutex<Option<RecoveryClaim>>>,
    info: ublk_core::DeviceInfo,
}

#[napi]
impl NativeRecoveryClaim {
    /// The device as it was when the claim was granted: its server gone.
    #[napi(getter)]
    pub fn info(&self) -> DeviceInfo {
        self.info.clone().into()
    }

    /// Ends the claim without recovering. Calling it again is a no-op.
    #[napi]
    pub fn release(&self) {
        self.claim.lock().unwrap().take();
    }
}

impl NativeRecoveryClaim {
    /// Takes the claim out, for a recovery that ends it; an ended claim
    /// is EINVAL.
    pub fn take(&self) -> napi::Result<RecoveryClaim> {
        self.claim.lock().unwrap().take().ok_or_else(|| {
            to_napi(ublk_core::Error::invalid(format!(
                "the recovery claim on ublk device {} was already used or released",
                self.info.id
            )))
        })
    }
}

pub struct ClaimRecovery {
    args: Option<napi::Result<(u32, bool, Option<Duration>)>>,
}

impl Task for ClaimRecovery {
    type Output = RecoveryClaim;
    type JsValue = NativeRecoveryClaim;

    fn compute(&mut self) -> napi::Result<RecoveryClaim> {
        guard("claim recovery", || {
            let (id, standby, timeout) = self.args.take().expect("compute runs once")?;
            RecoveryClaim::acquire(id, standby, timeout).map_err(to_napi)
        })
    }

    fn resolve(&mut self, _: Env, claim: RecoveryClaim) -> napi::Result<NativeRecoveryClaim> {
        let info = claim.info().clone();
        Ok(NativeRecoveryClaim {
            claim: Arc::new(Mutex::new(Some(claim))),
            info,
        })
    }
}

/// Claims the recovery of device `id`: resolves once its server is gone
/// and no other process is taking it over. Without `standby` a device
/// still served is EBUSY, and the wait ends after `timeoutMs` (default
/// 30 s); a standby waits while the device is served (for `timeoutMs`, or
/// for ever), and goes on waiting when another process takes it first.
/// Holds a thread of the libuv pool while it waits.
#[napi(ts_return_type = "Promise<NativeRecoveryClaim>")]
pub fn claim_recovery(id: f64, standby: bool, timeout_ms: Option<f64>) -> AsyncTask<ClaimRecovery> {
    let args = u32_arg("id", id).and_then(|id| {
        let timeout = timeout_ms
            .map(|ms| integer("timeoutMs", ms, u32::MAX as u64))
            .transpose()?
            .map(Duration::from_millis);
        Ok((id, standby, timeout))
    });
    AsyncTask::new(ClaimRecovery {
        args: Some(args.map_err(to_napi)),
    })
}
