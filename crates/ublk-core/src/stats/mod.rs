//! Per-device and per-queue IO figures, counted in the queue runtime where
//! every IO is committed (so for Rust and JavaScript targets alike, and
//! for IOs that never leave the queue thread): IOs, bytes, errors by errno
//! and a latency histogram per operation. Latency runs from the reap that
//! brought the IO to its commit.
//!
//! Each queue thread writes only its own block of counters ([`counters`]),
//! which lives in a file under [`STATS_DIR`] that other processes read
//! ([`read_published`]).

mod counters;
mod mapping;
mod region;

pub(crate) use counters::QueueCounters;
pub use counters::{bucket_bound_secs, OpStats, QueueStats, BUCKETS, ERRNOS, OPS, OP_NAMES};
pub(crate) use region::StatsRegion;
pub use region::{read_published, stats_path, STATS_DIR};

/// A device's figures, per queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    pub id: u32,
    /// The process serving the device.
    pub pid: u32,
    pub queues: Vec<QueueStats>,
}

impl DeviceStats {
    /// The device's figures: its queues' added up.
    pub fn total(&self) -> QueueStats {
        let mut total = QueueStats::default();
        for q in &self.queues {
            total.add(q);
        }
        total
    }
}

/// The name of an errno as the figures report it: `EIO`, `errno N` where
/// this crate has no name for it, and `other` for slot 0 (errnos past
/// [`ERRNOS`]).
pub fn errno_label(errno: i32) -> String {
    if errno == 0 {
        return "other".to_string();
    }
    match crate::errno_name(errno) {
        "EUNKNOWN" => format!("errno {errno}"),
        name => name.to_string(),
    }
}
