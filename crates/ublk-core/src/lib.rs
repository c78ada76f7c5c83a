//! ublk block devices served from user space, over libublk.
//!
//! [`Device::create`] adds and starts a device whose queues are served by a
//! [`Target`]: one thread, one io_uring and one task per IO tag on each
//! queue ([`runtime`]). Rust targets implement [`Target`] directly; targets
//! served by another runtime (JavaScript) go through [`bridge`], an adapter
//! of the same trait. [`control`] answers questions about devices and the
//! kernel that need no queue.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bridge;
pub mod control;
mod device;
mod error;
mod features;
pub mod files;
pub mod js_numbers;
mod options;
mod recovery;
pub mod runtime;
pub mod staging;
pub mod stats;
pub mod targets;

pub use control::{DeviceInfo, DeviceState, KernelFeatures};
pub use device::{queue_of_thread, stop_all_served, stop_served, Device, HandedOver};
pub use error::{errno_name, Error, Result};
pub use features::{feature_names, FEATURE_NAMES};
pub use options::{
    kernel_max_queues, DeviceOptions, Recovery, MAX_DEPTH, MAX_DEVICE_ID, MAX_IO_BYTES,
    MAX_IO_DELAY,
};
pub use recovery::{wait_recoverable, RecoveryClaim};
pub use runtime::{
    Capabilities, DeviceParams, Io, IoDesc, IoOp, QueueContext, Spawner, Target, WriteBatch,
    WriteExtent,
};
pub use stats::DeviceStats;

/// Re-exported so Rust targets can name libublk types without a direct
/// dependency of their own.
pub use libublk;
