//! A device's IO figures as JavaScript objects: one call copies every
//! counter out (numbers: exact up to 2^53).

use std::collections::HashMap;

use napi_derive::napi;
use ublk_core::js_numbers::u32_arg;
use ublk_core::stats::{self, OpStats, QueueStats, BUCKETS};

use crate::errors::to_napi;

#[napi(object)]
pub struct NativeOpStats {
    /// IOs completed, failed ones included.
    pub ios: f64,
    /// Bytes of the IOs that succeeded (a discard's or write-zeroes' range).
    pub bytes: f64,
    /// IOs that failed.
    pub errors: f64,
    /// Sum of the latencies (arrival to completion), in nanoseconds.
    pub latency_ns: f64,
    /// Latency histogram: `buckets[i]` counts the IOs faster than
    /// `latencyBucketBounds()[i]` seconds and not faster than the bound
    /// before; the last one, the slower ones.
    pub buckets: Vec<f64>,
}

#[napi(object)]
pub struct NativeQueueStats {
    pub ios: f64,
    pub bytes: f64,
    pub errors: f64,
    /// Failed IOs by errno name ("EIO"; "other" for errnos not counted apart).
    pub errnos: HashMap<String, f64>,
    pub read: NativeOpStats,
    pub write: NativeOpStats,
    pub flush: NativeOpStats,
    pub discard: NativeOpStats,
    pub write_zeroes: NativeOpStats,
    /// Operations of any other kind.
    pub other: NativeOpStats,
}

#[napi(object)]
pub struct NativeDeviceStats {
    pub id: u32,
    /// The process serving the device.
    pub pid: u32,
    pub queues: Vec<NativeQueueStats>,
    /// The queues added up.
    pub total: NativeQueueStats,
}

fn op(s: &OpStats) -> NativeOpStats {
    NativeOpStats {
        ios: s.ios as f64,
        bytes: s.bytes as f64,
        errors: s.errors as f64,
        latency_ns: s.latency_ns as f64,
        buckets: s.buckets.iter().map(|&b| b as f64).collect(),
    }
}

fn queue(s: &QueueStats) -> NativeQueueStats {
    NativeQueueStats {
        ios: s.ios() as f64,
        bytes: s.bytes() as f64,
        errors: s.errors() as f64,
        errnos: s
            .errors_by_errno()
            .map(|(e, n)| (stats::errno_label(e), n as f64))
            .collect(),
        read: op(&s.ops[0]),
        write: op(&s.ops[1]),
        flush: op(&s.ops[2]),
        discard: op(&s.ops[3]),
        write_zeroes: op(&s.ops[4]),
        other: op(&s.ops[5]),
    }
}

pub fn device_stats(s: &ublk_core::DeviceStats) -> NativeDeviceStats {
    NativeDeviceStats {
        id: s.id,
        pid: s.pid,
        queues: s.queues.iter().map(queue).collect(),
        total: queue(&s.total()),
    }
}

/// The figures of device `id` as the ublk-ts process serving it (this one
/// or another) publishes them; ENODEV if no live ublk-ts process serves it.
#[napi]
pub fn read_device_stats(id: f64) -> napi::Result<NativeDeviceStats> {
    let id = u32_arg("id", id).map_err(to_napi)?;
    let s = stats::read_published(id).map_err(to_napi)?;
    Ok(device_stats(&s))
}

/// The exclusive upper bounds, in seconds, of the latency buckets but the
/// last (which has none).
#[napi]
pub fn latency_bucket_bounds() -> Vec<f64> {
    (0..BUCKETS).filter_map(stats::bucket_bound_secs).collect()
}
