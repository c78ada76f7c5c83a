//! Questions and commands for the ublk driver that need no queue: which
//! devices exist, what one of them looks like, what the kernel supports,
//! and deleting a device.

use std::path::Path;
use std::sync::{Arc, Mutex};

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use crate::error::{Error, Result};
use crate::features::feature_names;
use crate::options::{check_device_id, DeviceOptions, Recovery};

pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// The device states the driver reports (`UBLK_S_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Added but not started, or stopped: no block device.
    Dead,
    /// Started and serving IO.
    Live,
    /// Its server died; waiting for a new server to recover it.
    Quiesced,
    /// Its server died; IO fails until it is recovered.
    FailIo,
    /// A state this library does not know yet.
    Other(u16),
}

impl DeviceState {
    fn from_raw(raw: u16) -> Self {
        match raw as u32 {
            sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            sys::UBLK_S_DEV_LIVE => DeviceState::Live,
            sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Other(raw),
        }
    }

    pub fn name(&self) -> String {
        match self {
            DeviceState::Dead => "dead".into(),
            DeviceState::Live => "live".into(),
            DeviceState::Quiesced => "quiesced".into(),
            DeviceState::FailIo => "fail_io".into(),
            DeviceState::Other(raw) => format!("state{raw}"),
        }
    }
}

/// A device as the driver describes it (`GET_DEV_INFO` + `GET_PARAMS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: u32,
    pub state: DeviceState,
    pub queues: u16,
    pub depth: u16,
    pub max_io_bytes: u32,
    /// The `UBLK_F_*` flags the device was created with, as kept by the kernel.
    pub flags: u64,
    /// Process serving the device, or -1 when none.
    pub server_pid: i32,
    /// Some process holds the device's char device open: its server (or
    /// the process still creating it) runs. False for a device left behind
    /// by a server that died.
    pub server_alive: bool,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Capacity in bytes; 0 before parameters were set.
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub read_only: bool,
    pub char_path: String,
    pub block_path: String,
}

impl DeviceInfo {
    pub fn flag_names(&self) -> Vec<String> {
        feature_names(self.flags)
    }

    /// Whether IO data stays in the kernel (`UBLK_F_AUTO_BUF_REG`) or is
    /// copied to and from the server's buffers.
    pub fn zero_copy(&self) -> bool {
        self.flags & libublk::sys::UBLK_F_AUTO_BUF_REG as u64 != 0
    }

    /// Whether IOs are fetched and committed many per command
    /// (`UBLK_F_BATCH_IO`) or one per IO.
    pub fn batch_io(&self) -> bool {
        self.flags & libublk::sys::UBLK_F_BATCH_IO as u64 != 0
    }

    /// What happens to the device when its server dies.
    pub fn recovery(&self) -> Recovery {
        Recovery::of_flags(self.flags)
    }

    /// Options that describe this device as it is: what
    /// [`crate::Device::recover`] takes.
    pub fn options(&self) -> DeviceOptions {
        DeviceOptions {
            id: Some(self.id),
            size: self.size,
            logical_block_size: self.logical_block_size,
            queues: self.queues,
            depth: self.depth,
            max_io_bytes: self.max_io_bytes,
            io_delay: None,
            zero_copy: self.zero_copy(),
            batch_io: self.batch_io(),
            recovery: self.recovery(),
        }
    }
}

/// What the running kernel's ublk driver supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatures {
    pub mask: u64,
    pub names: Vec<String>,
}

/// libublk sends control commands through a thread-local io_uring that it
/// sets up only where a control handle is created; a handle used from
/// another thread (stop from a worker pool, say) needs one there too.
pub(crate) fn ensure_control_ring() -> Result<()> {
    libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(
                io_uring::IoUring::<io_uring::squeue::Entry128>::builder()
                    .build(32)
                    .map_err(libublk::UblkError::IOError)?,
            );
        }
        Ok(())
    })
    .map_err(|e| Error::from_ublk("set up the ublk control ring", e))
}

/// Opens the control device once, to tell "driver missing" from
/// "not allowed" before any command is built.
pub fn check_control() -> Result<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL_PATH)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            libc::ENOENT,
            format!(
                "{CONTROL_PATH} does not exist: this kernel has no ublk driver loaded (modprobe ublk_drv)"
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::new(
            libc::EACCES,
            format!("permission denied opening {CONTROL_PATH}: adding ublk devices needs root"),
        )),
        Err(e) => Err(Error::from(e).context(format!("open {CONTROL_PATH}"))),
    }
}

/// The kernel's supported `UBLK_F_*` features (`GET_FEATURES`, Linux 6.5+).
pub fn kernel_features() -> Result<KernelFeatures> {
    check_control()?;
    let mask = UblkCtrl::get_features().ok_or_else(|| {
        Error::new(
            libc::EOPNOTSUPP,
            "the ublk driver does not answer GET_FEATURES (Linux 6.5 or newer needed)",
        )
    })?;
    Ok(KernelFeatures {
        mask,
        names: feature_names(mask),
    })
}

/// Ids of every ublk device, in ascending order.
pub fn list_ids() -> Result<Vec<u32>> {
    check_control()?;
    let ids = Arc::new(Mutex::new(Vec::new()));
    let sink = ids.clone();
    UblkCtrl::for_each_dev_id(move |id| sink.lock().unwrap().push(id));
    let mut ids = std::mem::take(&mut *ids.lock().unwrap());
    ids.sort_unstable();
    Ok(ids)
}

/// Whether the driver knows a device with this id, live or not.
pub fn device_exists(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Every ublk device with its info; a device deleted while listing is left out.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    Ok(list_ids()?
        .into_iter()
        .filter_map(|id| device_info(id).ok())
        .collect())
}

fn no_such_device(id: u32) -> Error {
    Error::new(libc::ENODEV, format!("no ublk device with id {id}"))
}

fn open_existing(id: u32) -> Result<UblkCtrl> {
    check_device_id(id)?;
    check_control()?;
    // Asking libublk about an id that does not exist makes it print to
    // stderr; sysfs answers the same question quietly.
    if !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists() {
        return Err(no_such_device(id));
    }
    UblkCtrl::new_simple(id as i32).map_err(|e| {
        let err = Error::from_ublk(format!("ublk device {id}"), e);
        if matches!(err.errno(), libc::ENODEV | libc::ENOENT) {
            no_such_device(id)
        } else {
            err
        }
    })
}

/// Info on one device, read from the kernel now.
pub fn device_info(id: u32) -> Result<DeviceInfo> {
    let ctrl = open_existing(id)?;
    info_from_ctrl(&ctrl)
}

pub(crate) fn info_from_ctrl(ctrl: &UblkCtrl) -> Result<DeviceInfo> {
    ensure_control_ring()?;
    let _ = ctrl.read_dev_info();
    let info = ctrl.dev_info();
    let mut params = sys::ublk_params {
        len: std::mem::size_of::<sys::ublk_params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC,
        ..Default::default()
    };
    // A device whose parameters were never set answers GET_PARAMS with an
    // error; it simply has no capacity yet.
    let have_params = ctrl.get_params(&mut params).is_ok();
    let basic = &params.basic;
    let (size, lbs, pbs) = if have_params && basic.logical_bs_shift >= 9 {
        (
            basic.dev_sectors << 9,
            1u32 << basic.logical_bs_shift,
            1u32 << basic.physical_bs_shift,
        )
    } else {
        (0, 0, 0)
    };
    Ok(DeviceInfo {
        id: info.dev_id,
        state: DeviceState::from_raw(info.state),
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        max_io_bytes: info.max_io_buf_bytes,
        flags: info.flags,
        server_pid: info.ublksrv_pid,
        server_alive: char_device_held(info.ublksrv_pid, &ctrl.get_cdev_path()),
        owner_uid: info.owner_uid,
        owner_gid: info.owner_gid,
        size,
        logical_block_size: lbs,
        physical_block_size: pbs,
        read_only: have_params && basic.attrs & sys::UBLK_ATTR_READ_ONLY != 0,
        char_path: ctrl.get_cdev_path(),
        block_path: ctrl.get_bdev_path(),
    })
}

/// Whether a process holds `char_path` open: `pid` (the server the kernel
/// names) is asked first, then every process, for a device still being
/// created (no server pid yet) or handed to another process.
fn char_device_held(pid: i32, char_path: &str) -> bool {
    let holds = |proc_dir: &Path| {
        std::fs::read_dir(proc_dir.join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new(char_path))
            })
        })
    };
    if pid > 0 && holds(Path::new(&format!("/proc/{pid}"))) {
        return true;
    }
    std::fs::read_dir("/proc").is_ok_and(|procs| {
        procs.flatten().any(|entry| {
            let is_pid = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            is_pid && holds(&entry.path())
        })
    })
}

/// Stops and deletes a device by id. A device this process serves is
/// stopped through its owner ([`crate::Device::stop`]), so its queue
/// threads are joined instead of left waiting.
pub fn delete_device(id: u32) -> Result<()> {
    check_device_id(id)?;
    if crate::device::stop_served(id)? {
        return Ok(());
    }
    let ctrl = open_existing(id)?;
    ctrl.del_dev().map(|_| ()).map_err(|e| {
        let err = Error::from_ublk(format!("delete ublk device {id}"), e);
        if err.errno() == libc::ENODEV {
            no_such_device(id)
        } else {
            err
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        assert_eq!(DeviceState::from_raw(0).name(), "dead");
        assert_eq!(DeviceState::from_raw(1).name(), "live");
        assert_eq!(DeviceState::from_raw(2).name(), "quiesced");
        assert_eq!(DeviceState::from_raw(3).name(), "fail_io");
        assert_eq!(DeviceState::from_raw(9).name(), "state9");
    }

    #[test]
    fn missing_driver_is_a_clear_error() {
        if std::path::Path::new(CONTROL_PATH).exists() {
            return; // only meaningful on a host without ublk
        }
        let err = list_ids().unwrap_err();
        assert_eq!(err.code(), "ENOENT");
        assert!(err.message().contains("ublk_drv"));
        assert_eq!(device_info(0).unwrap_err().code(), "ENOENT");
        assert_eq!(kernel_features().unwrap_err().code(), "ENOENT");
    }
}
