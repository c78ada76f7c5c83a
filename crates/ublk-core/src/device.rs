//! A started ublk device owned by this process: added, its queues served
//! by one thread each, and started; stopping it joins the threads and
//! deletes it.
//!
//! Start is split so that user recovery fits later: adding a device and
//! re-attaching to a quiesced one differ only in how the control handle is
//! built; serving the queues and starting are shared.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};

use crate::control::{check_control, ensure_control_ring, info_from_ctrl, DeviceInfo};
use crate::error::{Error, Result};
use crate::options::{kernel_max_queues, DeviceOptions};
use crate::target::Target;

pub struct Device {
    ctrl: Arc<UblkCtrl>,
    queues: Vec<JoinHandle<()>>,
    /// First error any queue thread ended with.
    queue_error: Arc<Mutex<Option<Error>>>,
    id: u32,
    stopped: bool,
}

impl Device {
    /// Adds a new device, serves its queues with `target` and starts it;
    /// returns once `/dev/ublkbN` exists.
    pub fn create(opts: &DeviceOptions, target: Arc<dyn Target>) -> Result<Device> {
        // Bad input is reported as such even where the driver is missing.
        opts.validate(kernel_max_queues())?;
        check_control()?;
        // libublk deletes the device with the requested id when adding
        // fails, even if that device is another one already running: an id
        // in use must never reach it.
        if let Some(id) = opts.id {
            if crate::control::device_exists(id) {
                return Err(Error::new(
                    libc::EEXIST,
                    format!("a ublk device with id {id} already exists"),
                ));
            }
        }

        let ctrl = UblkCtrlBuilder::default()
            .name(target.kind())
            .id(opts.id.map_or(-1, |id| id as i32))
            .nr_queues(opts.queues)
            .depth(opts.depth)
            .io_buf_bytes(opts.max_io_bytes)
            .ctrl_flags(target.ctrl_flags())
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(|e| add_error(opts, e))?;

        // Older kernels drop flags they do not know, and the driver caps
        // queues silently: check that we got what we asked for.
        let info = ctrl.dev_info();
        if info.nr_hw_queues != opts.queues {
            return Err(Error::invalid(format!(
                "the kernel gave {} queues instead of {}",
                info.nr_hw_queues, opts.queues
            )));
        }
        let wanted = target.ctrl_flags();
        if info.flags & wanted != wanted {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!(
                    "this kernel does not support the ublk features {:?} that target {} needs",
                    crate::features::feature_names(wanted & !info.flags),
                    target.kind()
                ),
            ));
        }

        Self::serve_and_start(Arc::new(ctrl), opts, target)
    }

    fn serve_and_start(
        ctrl: Arc<UblkCtrl>,
        opts: &DeviceOptions,
        target: Arc<dyn Target>,
    ) -> Result<Device> {
        let id = ctrl.dev_info().dev_id;
        let mut configure_error = None;
        let dev = UblkDev::new(
            target.kind().to_string(),
            |dev| {
                set_basic_params(dev, opts);
                let ring_depth = target.ring_depth(opts.depth);
                dev.tgt.sq_depth = ring_depth;
                dev.tgt.cq_depth = ring_depth;
                target.configure(&mut dev.tgt.params).map_err(|e| {
                    configure_error = Some(e);
                    libublk::UblkError::InvalidVal
                })
            },
            &ctrl,
        );
        let dev = Arc::new(match (dev, configure_error) {
            (_, Some(e)) => return Err(e.context(format!("configure {} target", target.kind()))),
            (Err(e), None) => return Err(Error::from_ublk(format!("open ublk device {id}"), e)),
            (Ok(dev), None) => dev,
        });

        let queue_error = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let mut queues = Vec::with_capacity(opts.queues as usize);
        for qid in 0..opts.queues {
            let (q_dev, q_target, q_tx, q_error) =
                (dev.clone(), target.clone(), tx.clone(), queue_error.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ublk{id}-q{qid}"))
                .spawn(move || {
                    let _ = q_tx.send((qid, UblkCtrl::init_queue_thread()));
                    let outcome =
                        catch_unwind(AssertUnwindSafe(|| q_target.serve_queue(qid, &q_dev)));
                    let err = match outcome {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(_) => Error::new(libc::EIO, format!("queue {qid} thread panicked")),
                    };
                    log::error!("ublk device {id}: {err}");
                    q_error.lock().unwrap().get_or_insert(err);
                });
            match spawned {
                Ok(handle) => queues.push(handle),
                Err(e) => {
                    // Let start fail instead of waiting for this queue.
                    dev.notify_buffer_registration_complete(true);
                    queue_error
                        .lock()
                        .unwrap()
                        .get_or_insert(Error::from(e).context("spawn queue thread"));
                    break;
                }
            }
        }
        drop(tx);
        for (qid, tid) in rx.iter().take(queues.len()) {
            ctrl.set_thread_affinity(qid, tid);
            let _ = ctrl.configure_queue(&dev, qid, tid);
        }

        let mut device = Device {
            ctrl,
            queues,
            queue_error,
            id,
            stopped: false,
        };
        if let Err(e) = device.ctrl.start_dev(&dev) {
            let start_err = Error::from_ublk(format!("start ublk device {id}"), e);
            let _ = device.shutdown();
            // A queue's own failure explains a failed start better.
            let cause = device.queue_error.lock().unwrap().take();
            return Err(cause.unwrap_or(start_err));
        }
        Ok(device)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn block_path(&self) -> String {
        self.ctrl.get_bdev_path()
    }

    pub fn char_path(&self) -> String {
        self.ctrl.get_cdev_path()
    }

    /// The device as the kernel describes it now.
    pub fn info(&self) -> Result<DeviceInfo> {
        info_from_ctrl(&self.ctrl)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Stops the device, waits for its queue threads and deletes it.
    /// Calling it again is a no-op.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.shutdown()?;
        match self.queue_error.lock().unwrap().take() {
            Some(e) => Err(e.context(format!("ublk device {} queue", self.id))),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stopped = true;
        ensure_control_ring()?;
        // ENODEV: somebody deleted it already, which is the goal anyway.
        let stop = self.ctrl.kill_dev();
        for handle in self.queues.drain(..) {
            let _ = handle.join();
        }
        let del = self.ctrl.del_dev();
        for (what, res) in [("stop", stop), ("delete", del)] {
            match res {
                Err(libublk::UblkError::OtherError(e)) if e == -libc::ENODEV => {}
                Err(e) => {
                    return Err(Error::from_ublk(
                        format!("{what} ublk device {}", self.id),
                        e,
                    ))
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.shutdown();
        }
    }
}

fn add_error(opts: &DeviceOptions, e: libublk::UblkError) -> Error {
    let err = Error::from_ublk("add ublk device", e);
    match (err.errno(), opts.id) {
        (libc::EEXIST, Some(id)) => Error::new(
            libc::EEXIST,
            format!("a ublk device with id {id} already exists"),
        ),
        (libc::EACCES | libc::EPERM, _) => Error::new(
            err.errno(),
            "permission denied adding a ublk device: it needs root",
        ),
        _ => err,
    }
}

fn set_basic_params(dev: &mut UblkDev, opts: &DeviceOptions) {
    let lbs_shift = opts.logical_block_size.trailing_zeros() as u8;
    // Physical blocks and IO hints stay at least a page: file systems and
    // the page cache then issue page-sized IO.
    let pbs_shift = lbs_shift.max(12);
    dev.tgt.dev_size = opts.size;
    dev.tgt.params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE,
            logical_bs_shift: lbs_shift,
            physical_bs_shift: pbs_shift,
            io_opt_shift: pbs_shift,
            io_min_shift: pbs_shift,
            max_sectors: opts.max_io_bytes >> 9,
            dev_sectors: opts.size >> 9,
            ..Default::default()
        },
        ..Default::default()
    };
}

/// The Rust targets this crate ships, by kind name; `backing` is the file
/// or block device of a `loop` target.
pub fn builtin_target(kind: &str, backing: Option<&str>) -> Result<Arc<dyn Target>> {
    match (kind, backing) {
        ("null", _) => Ok(Arc::new(crate::targets::NullTarget)),
        ("loop", Some(path)) => Ok(Arc::new(crate::targets::LoopTarget::open(path, true)?)),
        ("loop", None) => Err(Error::invalid("the loop target needs a backing file path")),
        (other, _) => Err(Error::invalid(format!(
            "unknown target {other:?}; built-in targets: null, loop"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_target_is_einval() {
        let err = builtin_target("raid7", None).err().unwrap();
        assert_eq!(err.code(), "EINVAL");
        assert!(err.message().contains("raid7"));
        assert!(builtin_target("null", None).is_ok());
        assert_eq!(builtin_target("loop", None).err().unwrap().code(), "EINVAL");
        let missing = builtin_target("loop", Some("/nonexistent/disk.img"));
        assert_eq!(missing.err().unwrap().code(), "ENOENT");
    }
}
