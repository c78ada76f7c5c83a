//! A bridged device's write gate, as JavaScript drives it: which chunks
//! the gated write route may write without JavaScript. Chunk numbers are
//! checked by the core.

use std::sync::Arc;

use napi::bindgen_prelude::Uint32Array;
use napi_derive::napi;
use ublk_core::bridge::WriteGate;
use ublk_core::js_numbers::u32_arg;

use crate::errors::to_napi;

/// The chunks of a device the queue threads may write on their own (see
/// `NativeBridge.createWriteGate`).
#[napi]
pub struct NativeWriteGate {
    gate: Arc<WriteGate>,
}

impl NativeWriteGate {
    pub(crate) fn new(gate: Arc<WriteGate>) -> NativeWriteGate {
        NativeWriteGate { gate }
    }
}

fn chunk_arg(value: f64) -> napi::Result<u32> {
    u32_arg("chunk", value).map_err(to_napi)
}

#[napi]
impl NativeWriteGate {
    #[napi(getter)]
    pub fn chunk_bytes(&self) -> f64 {
        self.gate.chunk_bytes() as f64
    }

    #[napi(getter)]
    pub fn chunks(&self) -> u32 {
        self.gate.chunk_count()
    }

    /// Lets the gated write route write chunks `first` to `last`.
    #[napi]
    pub fn open(&self, first: f64, last: f64) -> napi::Result<()> {
        self.gate
            .open(chunk_arg(first)?, chunk_arg(last)?)
            .map_err(to_napi)
    }

    /// Holds routed writes off a chunk; returns how many are in flight.
    #[napi]
    pub fn close(&self, chunk: f64) -> napi::Result<u32> {
        self.gate.close(chunk_arg(chunk)?).map_err(to_napi)
    }

    /// Routed writes in flight in a chunk.
    #[napi]
    pub fn in_flight(&self, chunk: f64) -> napi::Result<u32> {
        self.gate.in_flight(chunk_arg(chunk)?).map_err(to_napi)
    }

    /// Closes a chunk no routed write entered since the last
    /// `takeTouched` and none is in; says whether it is closed.
    #[napi]
    pub fn close_if_idle(&self, chunk: f64) -> napi::Result<bool> {
        self.gate.close_if_idle(chunk_arg(chunk)?).map_err(to_napi)
    }

    /// The chunks routed writes entered since the last call, ascending.
    #[napi]
    pub fn take_touched(&self) -> Uint32Array {
        Uint32Array::new(self.gate.take_touched())
    }

    /// Routed writes that failed on some file so far.
    #[napi]
    pub fn failures(&self) -> f64 {
        self.gate.failures() as f64
    }
}
