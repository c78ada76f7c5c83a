//! What a caller asks for when adding a device, and the checks that run
//! before anything reaches the kernel.

use std::time::Duration;

use crate::error::{Error, Result};

/// Largest queue depth the ublk driver accepts (`UBLK_MAX_QUEUE_DEPTH`).
pub const MAX_DEPTH: u16 = 4096;
/// Largest per-IO buffer libublk allocates (`MAX_BUF_SZ` in libublk).
pub const MAX_IO_BYTES: u32 = 32 << 20;
/// Device ids the driver hands out are below this (`UBLK_MAX_UBLKS`).
pub const MAX_DEVICE_ID: u32 = 1 << 20;
/// Longest random delay [`DeviceOptions::io_delay`] may ask for.
pub const MAX_IO_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Device id to ask for; `None` lets the driver pick the lowest free one.
    pub id: Option<u32>,
    /// Capacity in bytes, a whole number of logical blocks.
    pub size: u64,
    /// 512, 1024, 2048 or 4096.
    pub logical_block_size: u32,
    /// Hardware queues; each gets its own thread and io_uring.
    pub queues: u16,
    /// IOs in flight per queue.
    pub depth: u16,
    /// Largest single IO in bytes (the device's max_sectors), page aligned.
    pub max_io_bytes: u32,
    /// Delays each IO by a random time up to this before its target sees
    /// it (on an io_uring timeout), to provoke interleavings in tests and
    /// benchmarks. At most [`MAX_IO_DELAY`].
    pub io_delay: Option<Duration>,
    /// Serve zero copy (`UBLK_F_AUTO_BUF_REG`) when the kernel has it and
    /// the target allows it ([`crate::Capabilities::zero_copy`]); `false`
    /// keeps the copy path.
    pub zero_copy: bool,
    /// Fetch and commit IOs many per command (`UBLK_F_BATCH_IO`) when the
    /// kernel has it and the device runs the copy path (libublk's batch
    /// transport does not take zero copy, which wins where both could
    /// run); `false`, the default, keeps one command per IO.
    pub batch_io: bool,
    /// What happens when the serving process dies: by default the device
    /// dies with it; with [`Recovery::Reissue`] it waits for a new process
    /// to take it over ([`crate::Device::recover`]).
    pub recovery: Recovery,
}

/// What a device does when its server dies (`UBLK_F_USER_RECOVERY*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// The device dies with its server: IO fails, it can only be deleted.
    #[default]
    None,
    /// The device waits for a new server: IOs the dead one held are
    /// reissued to it and new IOs queue until it arrives, so no IO fails.
    Reissue,
    /// The device waits for a new server and fails IO meanwhile
    /// (`UBLK_F_USER_RECOVERY_FAIL_IO`, Linux 6.13).
    FailIo,
}

impl Recovery {
    /// The option's name in JavaScript and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::None => "none",
            Recovery::Reissue => "reissue",
            Recovery::FailIo => "fail-io",
        }
    }

    pub fn parse(name: &str) -> Result<Recovery> {
        match name {
            "none" => Ok(Recovery::None),
            "reissue" => Ok(Recovery::Reissue),
            "fail-io" => Ok(Recovery::FailIo),
            other => Err(Error::invalid(format!(
                "recovery must be 'none', 'reissue' or 'fail-io', got {other:?}"
            ))),
        }
    }

    /// The `UBLK_F_*` flags a device is added with for this mode.
    pub fn ctrl_flags(self) -> u64 {
        use libublk::sys;
        let flags = match self {
            Recovery::None => 0,
            Recovery::Reissue => sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE,
            Recovery::FailIo => sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_FAIL_IO,
        };
        flags as u64
    }

    /// The mode a device was added with, from its flags.
    pub fn of_flags(flags: u64) -> Recovery {
        use libublk::sys;
        if flags & sys::UBLK_F_USER_RECOVERY as u64 == 0 {
            Recovery::None
        } else if flags & sys::UBLK_F_USER_RECOVERY_FAIL_IO as u64 != 0 {
            Recovery::FailIo
        } else {
            // Plain USER_RECOVERY fails the IOs the server held; it is
            // only ever seen on devices another program added.
            Recovery::Reissue
        }
    }
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            id: None,
            size: 0,
            logical_block_size: 512,
            queues: 1,
            depth: 64,
            max_io_bytes: 512 << 10,
            io_delay: None,
            zero_copy: true,
            batch_io: false,
            recovery: Recovery::None,
        }
    }
}

impl DeviceOptions {
    /// Checks every field against what the driver accepts. `max_queues` is
    /// the kernel's limit on this machine (see [`kernel_max_queues`]).
    pub fn validate(&self, max_queues: u16) -> Result<()> {
        let lbs = self.logical_block_size;
        if !(512..=4096).contains(&lbs) || !lbs.is_power_of_two() {
            return Err(Error::invalid(format!(
                "logical block size must be 512, 1024, 2048 or 4096 bytes, got {lbs}"
            )));
        }
        if self.size == 0 {
            return Err(Error::invalid("size must be greater than 0"));
        }
        if self.size % lbs as u64 != 0 {
            return Err(Error::invalid(format!(
                "size {} is not a multiple of the logical block size {lbs}",
                self.size
            )));
        }
        if self.queues == 0 || self.queues > max_queues {
            return Err(Error::invalid(format!(
                "queues must be between 1 and {max_queues} (one per possible CPU), got {}",
                self.queues
            )));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(Error::invalid(format!(
                "depth must be between 1 and {MAX_DEPTH}, got {}",
                self.depth
            )));
        }
        let page = page_size();
        if self.max_io_bytes < page
            || self.max_io_bytes > MAX_IO_BYTES
            || self.max_io_bytes % page != 0
        {
            return Err(Error::invalid(format!(
                "max IO size must be a multiple of {page} between {page} and {MAX_IO_BYTES} bytes, got {}",
                self.max_io_bytes
            )));
        }
        if let Some(id) = self.id {
            check_device_id(id)?;
        }
        if self.io_delay.is_some_and(|d| d > MAX_IO_DELAY) {
            return Err(Error::invalid(format!(
                "the IO delay must be at most {MAX_IO_DELAY:?}, got {:?}",
                self.io_delay.unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// Device ids outside the driver's range are refused before a command is
/// built, so they never turn into a negative `i32` for libublk.
pub fn check_device_id(id: u32) -> Result<()> {
    if id >= MAX_DEVICE_ID {
        return Err(Error::invalid(format!(
            "device id must be below {MAX_DEVICE_ID}, got {id}"
        )));
    }
    Ok(())
}

pub(crate) fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if sz > 0 {
        sz as u32
    } else {
        4096
    }
}

/// The driver silently caps a device's queues at `nr_cpu_ids`, the number of
/// possible CPUs; asking for more is refused here instead.
pub fn kernel_max_queues() -> u16 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_range_max(&s))
        .map(|max_id| (max_id + 1).min(u16::MAX as u32) as u16)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u16))
}

/// Highest CPU id in a list such as `0-3,8-11`.
fn parse_cpu_range_max(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|part| part.rsplit('-').next()?.trim().parse::<u32>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DeviceOptions {
        DeviceOptions {
            size: 1 << 30,
            ..Default::default()
        }
    }

    fn code(o: &DeviceOptions) -> &'static str {
        o.validate(4).map(|_| "ok").unwrap_or_else(|e| e.code())
    }

    #[test]
    fn defaults_with_size_are_valid() {
        assert_eq!(code(&opts()), "ok");
    }

    #[test]
    fn size_rules() {
        assert_eq!(code(&DeviceOptions { size: 0, ..opts() }), "EINVAL");
        assert_eq!(
            code(&DeviceOptions {
                size: 4097,
                ..opts()
            }),
            "EINVAL"
        );
        let o = DeviceOptions {
            size: 4096 * 3 + 512,
            logical_block_size: 4096,
            ..opts()
        };
        assert!(o.validate(4).unwrap_err().message().contains("multiple"));
    }

    #[test]
    fn block_size_rules() {
        for bad in [0, 256, 768, 3000, 8192] {
            let o = DeviceOptions {
                logical_block_size: bad,
                ..opts()
            };
            assert_eq!(code(&o), "EINVAL", "block size {bad}");
        }
        for good in [512, 1024, 2048, 4096] {
            let o = DeviceOptions {
                logical_block_size: good,
                ..opts()
            };
            assert_eq!(code(&o), "ok", "block size {good}");
        }
    }

    #[test]
    fn depth_and_queue_rules() {
        assert_eq!(code(&DeviceOptions { depth: 0, ..opts() }), "EINVAL");
        assert_eq!(
            code(&DeviceOptions {
                depth: 4097,
                ..opts()
            }),
            "EINVAL"
        );
        assert_eq!(
            code(&DeviceOptions {
                depth: 4096,
                ..opts()
            }),
            "ok"
        );
        assert_eq!(
            code(&DeviceOptions {
                queues: 0,
                ..opts()
            }),
            "EINVAL"
        );
        assert_eq!(
            code(&DeviceOptions {
                queues: 5,
                ..opts()
            }),
            "EINVAL"
        );
        assert_eq!(
            code(&DeviceOptions {
                queues: 4,
                ..opts()
            }),
            "ok"
        );
    }

    #[test]
    fn io_size_and_id_rules() {
        let o = DeviceOptions {
            max_io_bytes: 1000,
            ..opts()
        };
        assert_eq!(code(&o), "EINVAL");
        let o = DeviceOptions {
            max_io_bytes: 64 << 20,
            ..opts()
        };
        assert_eq!(code(&o), "EINVAL");
        let o = DeviceOptions {
            id: Some(MAX_DEVICE_ID),
            ..opts()
        };
        assert_eq!(code(&o), "EINVAL");
    }

    #[test]
    fn recovery_modes_round_trip_through_names_and_flags() {
        for mode in [Recovery::None, Recovery::Reissue, Recovery::FailIo] {
            assert_eq!(Recovery::parse(mode.name()).unwrap(), mode);
            assert_eq!(Recovery::of_flags(mode.ctrl_flags()), mode);
        }
        assert_eq!(Recovery::parse("always").unwrap_err().code(), "EINVAL");
    }

    #[test]
    fn cpu_list_parsing() {
        assert_eq!(parse_cpu_range_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_range_max("0"), Some(0));
        assert_eq!(parse_cpu_range_max("0-3,8-11"), Some(11));
        assert_eq!(parse_cpu_range_max(""), None);
        assert!(kernel_max_queues() >= 1);
    }
}
