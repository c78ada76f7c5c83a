//! ublk block devices served from user space, over libublk.
//!
//! [`Device::create`] adds and starts a device whose queues are served by a
//! [`Target`], one thread and one io_uring per queue; [`control`] answers
//! questions about devices and the kernel that need no queue.

pub mod async_target;
pub mod bridge;
pub mod control;
mod device;
mod error;
mod features;
pub mod js_numbers;
mod options;
mod target;
pub mod targets;

pub use async_target::{serve_async, AsyncOptions, AsyncTarget, Io, IoOp, WriteBatch, WriteExtent};
pub use control::{DeviceInfo, DeviceState, KernelFeatures};
pub use device::{builtin_target, Device};
pub use error::{errno_name, Error, Result};
pub use features::{feature_names, FEATURE_NAMES};
pub use options::{kernel_max_queues, DeviceOptions, MAX_DEPTH, MAX_DEVICE_ID, MAX_IO_BYTES};
pub use target::{open_queue, DeviceParams, Target};

/// Re-exported so Rust targets can name queue types without a direct
/// libublk dependency of their own.
pub use libublk;
