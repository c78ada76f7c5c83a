//! User recovery: a device added with `UBLK_F_USER_RECOVERY` outlives its
//! server. When the server dies the kernel quiesces the device and holds
//! its IO; a new process takes it over here (`START_USER_RECOVERY`), then
//! serves its queues and ends the recovery as a normal start would
//! (`END_USER_RECOVERY`, in libublk's `start_dev`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::{sys, UblkError, UblkFlags};

use crate::control::{device_info, DeviceInfo, DeviceState};
use crate::error::{Error, Result};
use crate::options::{DeviceOptions, Recovery};
use crate::runtime::{basic_params, Serve};

/// How long a new server waits for the kernel to let go of the dead one.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// The flags a device is added with for `mode`, or why the running kernel
/// (its `GET_FEATURES` mask, when it answers) or libublk cannot give it.
pub(crate) fn ctrl_flags(mode: Recovery, kernel_mask: Option<u64>) -> Result<u64> {
    let flags = mode.ctrl_flags();
    // A device that outlives its server may also be handed over by a
    // server that lives on, where the kernel can quiesce it (6.16+).
    let quiesce = sys::UBLK_F_QUIESCE as u64;
    let quiesce = if mode != Recovery::None && kernel_mask.is_some_and(|m| m & quiesce != 0) {
        quiesce
    } else {
        0
    };
    let missing = flags & !kernel_mask.unwrap_or(u64::MAX);
    if missing != 0 {
        return Err(Error::new(
            libc::EOPNOTSUPP,
            format!(
                "recovery '{}' needs the ublk features {:?}, which this kernel does not have",
                mode.name(),
                crate::features::feature_names(missing)
            ),
        ));
    }
    let flags = flags | quiesce;
    if mode == Recovery::FailIo {
        // libublk 0.4 refuses every flag it does not know when it adds a
        // device, and it does not know this one.
        return Err(Error::new(
            libc::EOPNOTSUPP,
            "recovery 'fail-io' (UBLK_F_USER_RECOVERY_FAIL_IO): this kernel has it, but libublk 0.4 cannot add a device with it; use 'reissue'",
        ));
    }
    Ok(flags)
}

/// The right to take one device over, held by one recoverer at a time.
///
/// The kernel does not order two processes that recover the same device:
/// a second `START_USER_RECOVERY` while the first server is still opening
/// its queues resets the state that server is building. So every
/// recoverer first takes an exclusive lock on a file named for the device
/// (`/run/ublk-ts/recover-<id>.lock`, released with the process if it
/// dies), and only then looks at the device: a claim is granted once the
/// device's server is gone, and ends when the new server is live (or
/// failed to start) and the claim is dropped. A RAID1 target holds it
/// while it reads and writes its members' metadata, so a recoverer that
/// loses never touches the members of a served array.
pub struct RecoveryClaim {
    info: DeviceInfo,
    _lock: File,
}

impl RecoveryClaim {
    /// Claims device `id`, once its server is gone and the kernel holds it
    /// for a new one. Without `standby`, a device still served is EBUSY,
    /// and the wait (for another recoverer, or for the kernel to let go of
    /// the dead server) ends after `timeout` (30 s if `None`). A `standby`
    /// waits while the device is served, for `timeout` or for ever, and
    /// goes on waiting when another recoverer takes the device first.
    pub fn acquire(id: u32, standby: bool, timeout: Option<Duration>) -> Result<RecoveryClaim> {
        let timeout = if standby {
            timeout
        } else {
            Some(timeout.unwrap_or(TAKE_OVER_TIMEOUT))
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let lock = lock_file(id)?;
        loop {
            if standby {
                wait(id, deadline, true)?;
            }
            if try_lock(&lock, id)? {
                // Under the lock, nobody else can be taking it over.
                match wait(id, deadline, false) {
                    Ok(info) => return Ok(RecoveryClaim { info, _lock: lock }),
                    // Another standby won: stand by again, for its server.
                    Err(e) if standby && e.errno() == libc::EBUSY => unlock(&lock),
                    Err(e) => return Err(e),
                }
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    libc::ETIMEDOUT,
                    format!("ublk device {id}: another process has been recovering it for longer than the wait allowed"),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The device as it was when the claim was granted: its server gone.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
}

const LOCK_DIR: &str = "/run/ublk-ts";

fn lock_file(id: u32) -> Result<File> {
    let path = format!("{LOCK_DIR}/recover-{id}.lock");
    std::fs::create_dir_all(LOCK_DIR)
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        })
        .map_err(|e| Error::from(e).context(format!("open the recovery lock {path}")))
}

fn try_lock(lock: &File, id: u32) -> Result<bool> {
    // SAFETY: flock takes a file descriptor this `File` owns for the
    // whole call, and an operation; it touches no memory of ours.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(Error::from(err).context(format!("lock the recovery of ublk device {id}"))),
    }
}

fn unlock(lock: &File) {
    // SAFETY: as in `try_lock`; unlocking a lock this file holds.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
}

/// The recovery lock of device `id`, for a server handing it over: held
/// while the server quiesces the device and its target puts its state in
/// order, so that no recoverer looks at the device (or a RAID1 recoverer
/// at its members) before. Waits while another process holds it (a
/// recoverer that looked and found the device served lets go at once).
pub(crate) fn hold_for_hand_over(id: u32) -> Result<File> {
    let lock = lock_file(id)?;
    let deadline = Instant::now() + TAKE_OVER_TIMEOUT;
    while !try_lock(&lock, id)? {
        if Instant::now() >= deadline {
            return Err(Error::new(
                libc::ETIMEDOUT,
                format!("ublk device {id}: another process held its recovery lock for longer than {TAKE_OVER_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(POLL);
    }
    Ok(lock)
}

/// Checks that `opts` and the target describe the claimed device as the
/// kernel has it, and starts the recovery: the returned control then
/// serves it as a new device's would. Nothing is changed in the kernel
/// when this fails.
pub(crate) fn take_over(
    claim: &RecoveryClaim,
    opts: &DeviceOptions,
    runtime: &dyn Serve,
) -> Result<UblkCtrl> {
    let info = claim.info();
    let id = info.id;
    if opts.id != Some(id) {
        return Err(Error::invalid(format!(
            "the recovery claim is for ublk device {id}, the options name {:?}",
            opts.id
        )));
    }
    check_same_device(info, opts)?;
    let known = (sys::UBLK_F_USER_RECOVERY
        | sys::UBLK_F_USER_RECOVERY_REISSUE
        | sys::UBLK_F_AUTO_BUF_REG
        | sys::UBLK_F_BATCH_IO
        | sys::UBLK_F_QUIESCE) as u64;
    let ctrl = UblkCtrlBuilder::default()
        .name(runtime.kind())
        .id(id as i32)
        .nr_queues(info.queues)
        .depth(info.depth)
        .io_buf_bytes(info.max_io_bytes)
        .ctrl_flags(info.flags & known)
        .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        .build()
        .map_err(|e| Error::from_ublk(format!("open ublk device {id} for recovery"), e))?;
    check_target_fits(&ctrl, info, opts, runtime)?;
    let deadline = Instant::now() + TAKE_OVER_TIMEOUT;
    loop {
        // libublk reports a refusal either way: as an error, or as a
        // negative result.
        let res = ctrl.start_user_recover().and_then(|r| {
            if r < 0 {
                Err(UblkError::OtherError(r))
            } else {
                Ok(r)
            }
        });
        match res {
            Ok(_) => return Ok(ctrl),
            Err(UblkError::OtherError(e))
                if e.abs() == libc::EBUSY && Instant::now() < deadline =>
            {
                std::thread::sleep(POLL)
            }
            Err(e) => {
                return Err(Error::from_ublk(
                    format!("start recovery of ublk device {id}"),
                    e,
                ))
            }
        }
    }
}

/// Waits while device `id` is served, until its server dies and the kernel
/// holds it for a new one (for at most `timeout`, or for ever): what a
/// standby process does before it takes the device over. A device that
/// cannot be recovered (added without recovery, or not started) is
/// refused at once.
pub fn wait_recoverable(id: u32, timeout: Option<Duration>) -> Result<DeviceInfo> {
    wait(id, timeout.map(|t| Instant::now() + t), true)
}

/// The device once the kernel holds it for a new server: quiesced (or
/// failing IO) and its old server's char device released. A device still
/// served is EBUSY, unless `standby`.
fn wait(id: u32, deadline: Option<Instant>, standby: bool) -> Result<DeviceInfo> {
    let started = Instant::now();
    loop {
        let info = device_info(id)?;
        if info.recovery() == Recovery::None {
            return Err(Error::invalid(format!(
                "ublk device {id} was not added with recovery: it cannot outlive its server (add it with recovery 'reissue')"
            )));
        }
        match info.state {
            DeviceState::Quiesced | DeviceState::FailIo if !info.server_alive => return Ok(info),
            DeviceState::Live if info.server_alive && !standby => {
                return Err(Error::new(
                    libc::EBUSY,
                    format!(
                        "ublk device {id} is served by process {}: only a device whose server died can be recovered",
                        info.server_pid
                    ),
                ))
            }
            DeviceState::Dead => {
                return Err(Error::invalid(format!(
                    "ublk device {id} is not started (state dead): there is nothing to recover"
                )))
            }
            // The old server is still on its way out.
            _ => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::new(
                libc::ETIMEDOUT,
                format!(
                    "ublk device {id} did not become recoverable within {:?} (state {}, server {})",
                    started.elapsed(),
                    info.state.name(),
                    if info.server_alive {
                        "still holding it"
                    } else {
                        "gone"
                    }
                ),
            ));
        }
        if info.state == DeviceState::Live && info.server_alive {
            // A standby sleeps until the server exits, rather than polling
            // the device for as long as it is served.
            let until = deadline.map_or(STANDBY_RECHECK, |d| (d - now).min(STANDBY_RECHECK));
            wait_for_exit(info.server_pid, until);
        } else {
            std::thread::sleep(POLL);
        }
    }
}

/// A standby checks the device again at least this often: the process
/// holding it may not be the server the kernel names.
const STANDBY_RECHECK: Duration = Duration::from_millis(250);

/// Sleeps until process `pid` exits, or for `timeout` at most.
fn wait_for_exit(pid: i32, timeout: Duration) {
    let fd = if pid > 0 {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; no memory is shared with the kernel.
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32 }
    } else {
        -1
    };
    if fd < 0 {
        std::thread::sleep(POLL.max(timeout.min(Duration::from_millis(100))));
        return;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that lives across the call, and
    // `fd` is the pidfd opened above, closed once here afterwards.
    unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        );
        libc::close(fd);
    }
}

/// The options must describe the device as it is: a recovered device
/// keeps its geometry.
fn check_same_device(info: &DeviceInfo, opts: &DeviceOptions) -> Result<()> {
    let pairs: [(&str, u64, u64); 5] = [
        ("size", opts.size, info.size),
        (
            "logical block size",
            opts.logical_block_size as u64,
            info.logical_block_size as u64,
        ),
        ("queues", opts.queues as u64, info.queues as u64),
        ("depth", opts.depth as u64, info.depth as u64),
        (
            "max IO size",
            opts.max_io_bytes as u64,
            info.max_io_bytes as u64,
        ),
    ];
    let differ: Vec<String> = pairs
        .iter()
        .filter(|(_, asked, has)| asked != has)
        .map(|(what, asked, has)| format!("{what} {asked} (the device has {has})"))
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "ublk device {} cannot be recovered with other options: {}",
            info.id,
            differ.join(", ")
        )))
    }
}

/// The new target must give the device what the old one advertised, and
/// must work on the data path the device runs (zero copy or not).
fn check_target_fits(
    ctrl: &UblkCtrl,
    info: &DeviceInfo,
    opts: &DeviceOptions,
    runtime: &dyn Serve,
) -> Result<()> {
    let id = info.id;
    if info.zero_copy() && !runtime.capabilities().zero_copy {
        return Err(Error::invalid(format!(
            "ublk device {id} runs zero copy, and target {} needs the IO data in its buffers",
            runtime.kind()
        )));
    }
    let mut wanted = basic_params(opts);
    runtime.set_params(&mut wanted)?;
    let mut has = sys::ublk_params {
        len: std::mem::size_of::<sys::ublk_params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        ..Default::default()
    };
    ctrl.get_params(&mut has)
        .map_err(|e| Error::from_ublk(format!("read the parameters of ublk device {id}"), e))?;
    let discard = |p: &sys::ublk_params| {
        if p.types & sys::UBLK_PARAM_TYPE_DISCARD != 0 {
            (
                p.discard.max_discard_sectors,
                p.discard.max_write_zeroes_sectors,
            )
        } else {
            (0, 0)
        }
    };
    if wanted.basic.attrs != has.basic.attrs || discard(&wanted) != discard(&has) {
        return Err(Error::invalid(format!(
            "target {} does not advertise what ublk device {id} does (read-only, cache, FUA, discard, write zeroes): recover it with a target like the one that served it",
            runtime.kind()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_flags_follow_the_kernel() {
        let all = Some(u64::MAX);
        let none = Some(0);
        assert_eq!(ctrl_flags(Recovery::None, none).unwrap(), 0);
        let quiesce = sys::UBLK_F_QUIESCE as u64;
        // With QUIESCE where the kernel has it, for an in-place hand-over.
        assert_eq!(
            ctrl_flags(Recovery::Reissue, all).unwrap(),
            Recovery::Reissue.ctrl_flags() | quiesce
        );
        let without_quiesce = Some(Recovery::Reissue.ctrl_flags());
        assert_eq!(
            ctrl_flags(Recovery::Reissue, without_quiesce).unwrap(),
            Recovery::Reissue.ctrl_flags()
        );
        assert_eq!(ctrl_flags(Recovery::None, all).unwrap(), 0);
        let err = ctrl_flags(Recovery::Reissue, none).unwrap_err();
        assert_eq!(err.code(), "EOPNOTSUPP");
        assert!(err.message().contains("user_recovery"), "{}", err.message());
        assert_eq!(
            ctrl_flags(Recovery::FailIo, all).unwrap_err().code(),
            "EOPNOTSUPP"
        );
    }

    #[test]
    fn other_geometry_is_refused_naming_what_differs() {
        let opts = DeviceOptions {
            id: Some(3),
            size: 1 << 20,
            ..Default::default()
        };
        let info = DeviceInfo {
            id: 3,
            state: DeviceState::Quiesced,
            queues: 1,
            depth: 64,
            max_io_bytes: 512 << 10,
            flags: Recovery::Reissue.ctrl_flags(),
            server_pid: -1,
            server_alive: false,
            owner_uid: 0,
            owner_gid: 0,
            size: 2 << 20,
            logical_block_size: 512,
            physical_block_size: 4096,
            read_only: false,
            char_path: String::new(),
            block_path: String::new(),
        };
        let err = check_same_device(&info, &opts).unwrap_err();
        assert_eq!(err.code(), "EINVAL");
        assert!(err
            .message()
            .contains("size 1048576 (the device has 2097152)"));
        assert!(!err.message().contains("depth"));
        assert!(check_same_device(&info, &info.options()).is_ok());
    }
}
