//! The dispatch path alone, for its benchmark: a bridge that is never
//! started, driven by the core's synthetic queue thread instead of a kernel.

use std::sync::Arc;

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;
use ublk_core::bridge::BridgeTarget;
use ublk_core::js_numbers::{integer, u32_arg};

use crate::bridge::NativeBridge;
use crate::errors::{guard, to_napi};

/// Drives a bridge that was not started with `total` synthetic 4 KiB reads
/// on queue 0, `batchMax` per hand-over; resolves with the nanoseconds it
/// took. For the dispatch-path benchmark: no kernel involved.
#[napi(ts_return_type = "Promise<number>")]
pub fn run_synthetic_bridge(
    bridge: &NativeBridge,
    total: f64,
    batch_max: f64,
) -> napi::Result<AsyncTask<SyntheticRun>> {
    bridge.start_once()?;
    Ok(AsyncTask::new(SyntheticRun {
        target: bridge.target.clone(),
        depth: bridge.opts.depth,
        total: integer("total", total, u64::MAX).map_err(to_napi)?,
        batch_max: u32_arg("batchMax", batch_max).map_err(to_napi)? as usize,
    }))
}

pub struct SyntheticRun {
    target: Arc<BridgeTarget>,
    depth: u16,
    total: u64,
    batch_max: usize,
}

impl Task for SyntheticRun {
    type Output = f64;
    type JsValue = f64;

    fn compute(&mut self) -> napi::Result<f64> {
        guard("synthetic bridge run", || {
            let took = self
                .target
                .run_synthetic(self.depth, self.total, self.batch_max);
            Ok(took.map_err(to_napi)?.as_nanos() as f64)
        })
    }

    fn resolve(&mut self, _: Env, out: f64) -> napi::Result<f64> {
        self.target.release();
        Ok(out)
    }

    fn reject(&mut self, _: Env, err: napi::Error) -> napi::Result<f64> {
        self.target.release();
        Err(err)
    }
}
