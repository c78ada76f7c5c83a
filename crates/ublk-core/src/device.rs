//! A started ublk device served by this process: added, its queues served
//! by one thread each, and started; stopping it fails what its target still
//! holds, stops it, joins the threads, deletes it and lets the target go.
//!
//! Every device this process serves is in one registry, so that deleting
//! one by id ([`crate::control::delete_device`]) goes through its owner and
//! the process can stop all of them when it exits.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, LazyLock, Mutex, Weak};
use std::thread::JoinHandle;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::UblkFlags;

use crate::control::{check_control, ensure_control_ring, info_from_ctrl, DeviceInfo};
use crate::error::{Error, Result};
use crate::options::{kernel_max_queues, DeviceOptions};
use crate::recovery::{self, RecoveryClaim};
use crate::runtime::hosted::{Finished, HostedQueue};
use crate::runtime::{basic_params, IoBuffers, QueueArgs, QueueControl, Serve, Served, Target};
use crate::stats::{DeviceStats, StatsRegion};

/// A device this process serves. Clones are handles to the same device;
/// it is stopped by [`Device::stop`], or when the last handle goes.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

struct Inner {
    id: u32,
    kind: String,
    block_path: String,
    char_path: String,
    /// Set when a stop begins (the stop holds `running` while it waits).
    stopping: AtomicBool,
    /// `None` once stopped.
    running: Mutex<Option<Running>>,
    /// The queues' counters; still readable once the device stopped.
    stats: Arc<StatsRegion>,
}

/// What a running device holds; all of it is let go when it stops (not
/// when the last handle goes: a garbage-collected language may keep a
/// stopped device's handle for a long time, and it must hold no fd).
struct Running {
    ctrl: Arc<UblkCtrl>,
    runtime: Arc<dyn Serve>,
    queues: Vec<QueueHandle>,
    controls: Vec<Arc<QueueControl>>,
    /// First error any queue thread ended with.
    queue_error: Arc<Mutex<Option<Error>>>,
    stats: Arc<StatsRegion>,
}

/// A queue's server: its own thread, or a host's (see
/// [`crate::runtime::hosted`]).
enum QueueHandle {
    Thread(JoinHandle<()>),
    Hosted(Arc<Finished>),
}

impl QueueHandle {
    fn is_finished(&self) -> bool {
        match self {
            QueueHandle::Thread(handle) => handle.is_finished(),
            QueueHandle::Hosted(finished) => finished.is_finished(),
        }
    }

    /// Whether this thread serves the queue.
    fn hosted_here(&self) -> bool {
        matches!(self, QueueHandle::Hosted(finished) if finished.is_host())
    }

    fn join(self) {
        match self {
            QueueHandle::Thread(handle) => {
                let _ = handle.join();
            }
            QueueHandle::Hosted(finished) => finished.wait(),
        }
    }
}

/// How long a stop on the thread that serves a queue serves it meanwhile.
const HOSTED_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What serving one queue takes, moved to the thread that serves it (its
/// own, or its host's).
struct QueueJob {
    id: u32,
    qid: u16,
    dev: Arc<UblkDev>,
    runtime: Arc<dyn Serve>,
    buffers: Arc<IoBuffers>,
    control: Arc<QueueControl>,
    io_delay: Option<std::time::Duration>,
    stats: Arc<StatsRegion>,
    /// Tells the start which thread serves the queue.
    started: mpsc::Sender<(u16, libc::pid_t)>,
    /// The first error a queue of the device ended with.
    errors: Arc<Mutex<Option<Error>>>,
}

impl QueueJob {
    /// Makes this thread the queue's and tells the start so.
    fn announce(&self) {
        let _ = self.started.send((self.qid, UblkCtrl::init_queue_thread()));
    }

    fn args(&self) -> QueueArgs<'_> {
        QueueArgs {
            qid: self.qid,
            dev: &self.dev,
            buffers: &self.buffers,
            control: &self.control,
            io_delay: self.io_delay,
            stats: &self.stats,
        }
    }

    /// Records how serving the queue ended: an error (or a panic) but an
    /// abort's cancellation is the device's first.
    fn ended(&self, outcome: std::thread::Result<Result<()>>) {
        let err = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) if self.control.aborted() && e.errno() == libc::ECANCELED => return,
            Ok(Err(e)) => e,
            Err(_) => Error::new(libc::EIO, format!("queue {} thread panicked", self.qid)),
        };
        log::error!("ublk device {}: {err}", self.id);
        self.errors.lock().unwrap().get_or_insert(err);
    }
}

/// Every device this process serves, by id.
static SERVED: LazyLock<Mutex<HashMap<u32, Weak<Inner>>>> = LazyLock::new(Default::default);

impl Device {
    /// Adds a new device, serves its queues with `target` and starts it;
    /// returns once `/dev/ublkbN` exists. On failure nothing is left behind.
    pub fn create<T: Target>(opts: &DeviceOptions, target: T) -> Result<Device> {
        Self::create_served(opts, Arc::new(Served(Arc::new(target))))
    }

    /// [`Device::create`] for a target shared with its creator (who may
    /// need it while the device runs, as a bridge's owner does).
    pub fn create_shared<T: Target>(opts: &DeviceOptions, target: Arc<T>) -> Result<Device> {
        Self::create_served(opts, Arc::new(Served(target)))
    }

    /// Takes over device `opts.id`, whose server died, and serves it with
    /// `target`: the same block device, with the IOs the dead server held
    /// reissued to this one. The device must have been added with
    /// [`crate::Recovery::Reissue`], and `opts` must describe it as
    /// it is ([`DeviceInfo::options`] reads them from the kernel). Waits
    /// up to 30 s for the kernel to let go of the dead server (and for
    /// another recoverer, see [`RecoveryClaim`]). If taking over fails,
    /// the device is left as it was, for another try.
    pub fn recover<T: Target>(opts: &DeviceOptions, target: T) -> Result<Device> {
        Self::recover_shared(opts, Arc::new(target))
    }

    /// [`Device::recover`] for a target shared with its creator.
    pub fn recover_shared<T: Target>(opts: &DeviceOptions, target: Arc<T>) -> Result<Device> {
        let id = opts
            .id
            .ok_or_else(|| Error::invalid("recovering a device needs its id"))?;
        Self::recover_claimed(RecoveryClaim::acquire(id, false, None)?, opts, target)
    }

    /// [`Device::recover_shared`] under a claim the caller already holds
    /// (a standby's, or one held while the target prepared itself); the
    /// claim ends when this returns.
    pub fn recover_claimed<T: Target>(
        claim: RecoveryClaim,
        opts: &DeviceOptions,
        target: Arc<T>,
    ) -> Result<Device> {
        opts.validate(kernel_max_queues())?;
        check_control()?;
        let runtime: Arc<dyn Serve> = Arc::new(Served(target));
        let ctrl = Arc::new(recovery::take_over(&claim, opts, &*runtime)?);
        let started = start(&ctrl, opts, runtime, Mode::Recover);
        // Live again (or failed): the next recoverer may look.
        drop(claim);
        started.map(Self::register)
    }

    fn register(running: Running) -> Device {
        let id = running.ctrl.dev_info().dev_id;
        let inner = Arc::new(Inner {
            id,
            kind: running.runtime.kind().to_string(),
            block_path: running.ctrl.get_bdev_path(),
            char_path: running.ctrl.get_cdev_path(),
            stopping: AtomicBool::new(false),
            stats: running.stats.clone(),
            running: Mutex::new(Some(running)),
        });
        SERVED.lock().unwrap().insert(id, Arc::downgrade(&inner));
        Device { inner }
    }

    fn create_served(opts: &DeviceOptions, runtime: Arc<dyn Serve>) -> Result<Device> {
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
        let ctrl_flags = ctrl_flags(opts, &*runtime)?;
        let ctrl = UblkCtrlBuilder::default()
            .name(runtime.kind())
            .id(opts.id.map_or(-1, |id| id as i32))
            .nr_queues(opts.queues)
            .depth(opts.depth)
            .io_buf_bytes(opts.max_io_bytes)
            .ctrl_flags(ctrl_flags)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(|e| add_error(opts, e))?;
        let ctrl = Arc::new(ctrl);
        let id = ctrl.dev_info().dev_id;
        let checked = check_granted(&ctrl, opts, ctrl_flags, runtime.kind());
        let started = checked.and_then(|()| start(&ctrl, opts, runtime, Mode::Add));
        match started {
            Ok(running) => Ok(Self::register(running)),
            Err(e) => {
                // Added but not started: delete it, so nothing is left.
                let _ = ensure_control_ring();
                if let Err(del) = ctrl.del_dev() {
                    log::error!("ublk device {id}: delete after a failed start: {del}");
                }
                Err(e)
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The target's kind name.
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    pub fn block_path(&self) -> String {
        self.inner.block_path.clone()
    }

    pub fn char_path(&self) -> String {
        self.inner.char_path.clone()
    }

    /// The device as the kernel describes it now.
    pub fn info(&self) -> Result<DeviceInfo> {
        let ctrl = self
            .inner
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.ctrl.clone());
        match ctrl {
            Some(ctrl) => info_from_ctrl(&ctrl),
            None => Err(Error::new(
                libc::ENODEV,
                format!("ublk device {} was stopped", self.id()),
            )),
        }
    }

    /// The device's IO figures, per queue, as its queue threads count
    /// them (the last ones once it stopped).
    pub fn stats(&self) -> DeviceStats {
        self.inner.stats.snapshot()
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.running.lock().unwrap().is_none()
    }

    /// Whether the device is still served: not stopped, and its queue
    /// threads still running (they end by themselves when the kernel
    /// device goes away, deleted by another process, say). A device that
    /// is no longer served still needs [`Device::stop`] to let go of it.
    pub fn is_serving(&self) -> bool {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return false;
        }
        match self.inner.running.try_lock() {
            Ok(running) => running
                .as_ref()
                .is_some_and(|r| r.queues.iter().any(|q| !q.is_finished())),
            // Held for a moment by `info` or `abandon`: still serving.
            Err(_) => true,
        }
    }

    /// Stops the device and deletes it: what the target still holds is
    /// failed first, so this never waits for it. Calling it again is a
    /// no-op.
    pub fn stop(&self) -> Result<()> {
        self.inner.stop()
    }

    /// A live upgrade by a server that lives on: stops serving the device
    /// without stopping it, for another process to take over
    /// ([`Device::recover`], or a standby). The kernel quiesces the device:
    /// it sends no new IO, the IOs this process holds are answered, and
    /// the kernel keeps what arrives meanwhile for the next server, so no
    /// IO fails. Until the returned [`HandedOver`] is dropped, no other
    /// process may take the device over: the target puts its state in
    /// order for the next server first. Afterwards this handle is stopped.
    ///
    /// Only for a device added with recovery (EINVAL otherwise) on Linux
    /// 6.16 or newer, whose driver can quiesce a device (`UBLK_F_QUIESCE`);
    /// elsewhere EOPNOTSUPP, and [`Device::abandon`] then exiting the
    /// process hands the device over instead.
    pub fn hand_over(&self) -> Result<HandedOver> {
        self.inner.hand_over()
    }

    /// For a process about to exit: leaves the device to the kernel as it
    /// is, still served until the process ends, and neither stopped nor
    /// deleted by it. A recovery device then waits for a new server, as
    /// after a crash, with the IOs in flight kept for it: a live upgrade,
    /// with a standby ([`crate::wait_recoverable`]) waiting to take over.
    pub fn abandon(&self) {
        self.inner.unregister();
        if let Some(run) = self.inner.running.lock().unwrap().as_ref() {
            run.ctrl.disown();
        }
    }
}

/// A device handed over by [`Device::hand_over`]: holds off every other
/// process's recovery of it until dropped.
pub struct HandedOver {
    _claim: std::fs::File,
}

/// How long the kernel may take to find an idle command on every queue
/// when it quiesces a device: IOs the target holds longer stall it.
const QUIESCE_TIMEOUT_MS: u64 = 30_000;
/// How long the kernel may take to record a handed-over device as quiesced.
const QUIESCED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    fn hand_over(&self) -> Result<HandedOver> {
        ensure_control_ring()?;
        let mut running = self.running.lock().unwrap();
        let Some(run) = running.as_ref() else {
            return Err(Error::new(
                libc::ENODEV,
                format!("ublk device {} was stopped", self.id),
            ));
        };
        let flags = run.ctrl.dev_info().flags;
        if crate::Recovery::of_flags(flags) == crate::Recovery::None {
            return Err(Error::invalid(format!(
                "ublk device {} was added without recovery: no other process could take it over",
                self.id
            )));
        }
        if flags & libublk::sys::UBLK_F_QUIESCE as u64 == 0 {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!(
                    "ublk device {} cannot be handed over by a process that lives on: its kernel cannot quiesce it (UBLK_F_QUIESCE, Linux 6.16); abandon it and exit instead",
                    self.id
                ),
            ));
        }
        if flags & libublk::sys::UBLK_F_BATCH_IO as u64 != 0 {
            // The queue's wait for its last commits is per-IO commands' only.
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!(
                    "ublk device {} runs batch IO, which this hand-over does not serve yet; abandon it and exit instead",
                    self.id
                ),
            ));
        }
        let claim = recovery::hold_for_hand_over(self.id)?;
        for control in &run.controls {
            control.quiescing();
        }
        if let Err(e) = run.ctrl.quiesce_dev(QUIESCE_TIMEOUT_MS) {
            // The driver does not undo the quiesce it began.
            return Err(Error::from_ublk(
                format!(
                    "quiesce ublk device {} (it takes no new IO now: stop it)",
                    self.id
                ),
                e,
            ));
        }
        let run = running.take().expect("checked above");
        self.stopping.store(true, Ordering::SeqCst);
        self.unregister();
        // Dropping the control must not delete the device it hands over.
        run.ctrl.disown();
        for control in &run.controls {
            control.quiesced();
        }
        for handle in run.queues {
            handle.join();
        }
        run.stats.unpublish();
        run.runtime.stopped();
        // From here the device is the next server's whatever happened: the
        // claim goes back to the caller, so the target still closes first.
        if let Some(e) = run.queue_error.lock().unwrap().take() {
            // What that queue left unanswered, the kernel reissues.
            log::error!(
                "ublk device {}: a queue ended with an error while handing over: {e}",
                self.id
            );
        }
        // The last queue closed the char device: the kernel now holds the
        // device for its next server, as after a crash.
        if let Err(e) = recovery::wait_recoverable(self.id, Some(QUIESCED_WAIT)) {
            log::warn!("ublk device {} after its hand-over: {e}", self.id);
        }
        Ok(HandedOver { _claim: claim })
    }

    fn unregister(&self) {
        let mut served = SERVED.lock().unwrap();
        let ours = served
            .get(&self.id)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self));
        if ours {
            served.remove(&self.id);
        }
    }

    fn stop(&self) -> Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        // Stopping sends control commands from whatever thread calls it.
        ensure_control_ring()?;
        // Held throughout, so a second caller waits for the first to finish.
        let mut running = self.running.lock().unwrap();
        let Some(run) = running.take() else {
            return Ok(());
        };
        self.unregister();
        for control in &run.controls {
            control.stopping();
        }
        run.runtime.stopping();
        let stopped = if run.queues.iter().any(QueueHandle::hosted_here) {
            // Stopping waits for the IO in flight, which this thread serves:
            // another thread stops the device while this one serves it.
            std::thread::scope(|scope| {
                let stop = scope.spawn(|| {
                    ensure_control_ring()
                        .map_err(|e| libublk::UblkError::OtherError(-e.errno()))?;
                    run.ctrl.kill_dev()
                });
                crate::runtime::hosted::serve_here_until(
                    || stop.is_finished(),
                    HOSTED_STOP_TIMEOUT,
                );
                stop.join()
                    .unwrap_or(Err(libublk::UblkError::OtherError(-libc::EIO)))
            })
        } else {
            run.ctrl.kill_dev()
        };
        for handle in run.queues {
            handle.join();
        }
        run.stats.unpublish();
        let deleted = run.ctrl.del_dev();
        run.runtime.stopped();
        for (what, res) in [("stop", stopped), ("delete", deleted)] {
            if let Err(e) = res {
                let err = Error::from_ublk(format!("{what} ublk device {}", self.id), e);
                // ENODEV: somebody deleted it already, which is the goal
                // anyway. ENOENT on delete: the kernel device is gone, and
                // libublk's json file for its id was removed meanwhile by
                // another process whose own device of that id went first
                // (libublk checks the file, then removes it).
                let gone = err.errno() == libc::ENODEV
                    || (what == "delete" && err.errno() == libc::ENOENT);
                if !gone {
                    return Err(err);
                }
            }
        }
        drop(run.controls);
        let queue_error = run.queue_error.lock().unwrap().take();
        match queue_error {
            Some(e) => Err(e.context(format!("ublk device {} queue", self.id))),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("ublk device {}: {e}", self.id);
        }
    }
}

/// Stops a device this process serves; `Ok(false)` if it serves none with
/// that id.
pub fn stop_served(id: u32) -> Result<bool> {
    let device = SERVED.lock().unwrap().get(&id).and_then(Weak::upgrade);
    match device {
        Some(inner) => inner.stop().map(|()| true),
        None => Ok(false),
    }
}

/// Stops every device this process serves, e.g. when it exits.
pub fn stop_all_served() {
    let devices: Vec<_> = SERVED
        .lock()
        .unwrap()
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for inner in devices {
        if let Err(e) = inner.stop() {
            log::error!("ublk device {}: {e}", inner.id);
        }
    }
}

/// The `UBLK_F_*` flags a device is added with: what its target and its
/// recovery mode need, zero copy where the options, the target and the
/// running kernel (as `GET_FEATURES` reports it, not its version) all
/// allow it, and else batch IO where the options and the kernel allow it.
fn ctrl_flags(opts: &DeviceOptions, runtime: &dyn Serve) -> Result<u64> {
    let kernel_mask = crate::control::kernel_features().ok().map(|f| f.mask);
    let flags = runtime.ctrl_flags() | recovery::ctrl_flags(opts.recovery, kernel_mask)?;
    Ok(flags | transport_flags(opts, runtime.capabilities().zero_copy, flags, kernel_mask))
}

/// How IO data and commands travel: zero copy, else batch IO, else one
/// command per IO on the copy path.
fn transport_flags(
    opts: &DeviceOptions,
    target_zero_copy: bool,
    flags: u64,
    kernel_mask: Option<u64>,
) -> u64 {
    use libublk::sys::{UBLK_F_AUTO_BUF_REG, UBLK_F_BATCH_IO, UBLK_F_USER_COPY, UBLK_F_ZONED};
    let has = |flag: u32| kernel_mask.is_some_and(|mask| mask & flag as u64 != 0);
    if opts.zero_copy && target_zero_copy && has(UBLK_F_AUTO_BUF_REG) {
        return UBLK_F_AUTO_BUF_REG as u64;
    }
    // libublk's batch transport serves neither of these.
    let batch_excludes = (UBLK_F_USER_COPY | UBLK_F_ZONED) as u64;
    if opts.batch_io && has(UBLK_F_BATCH_IO) && flags & batch_excludes == 0 {
        return UBLK_F_BATCH_IO as u64;
    }
    0
}

/// Whether a device is being added, or taken over from a dead server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Add,
    Recover,
}

/// Older kernels drop flags they do not know, and the driver caps queues
/// silently: checks that the device got what was asked for.
fn check_granted(ctrl: &UblkCtrl, opts: &DeviceOptions, wanted: u64, kind: &str) -> Result<()> {
    let info = ctrl.dev_info();
    if info.nr_hw_queues != opts.queues {
        return Err(Error::invalid(format!(
            "the kernel gave {} queues instead of {}",
            info.nr_hw_queues, opts.queues
        )));
    }
    if info.flags & wanted != wanted {
        return Err(Error::new(
            libc::EOPNOTSUPP,
            format!(
                "this kernel does not support the ublk features {:?} that target {kind} needs",
                crate::features::feature_names(wanted & !info.flags),
            ),
        ));
    }
    Ok(())
}

/// Serves the queues of an added device and starts it. On failure every
/// queue thread has ended when this returns.
fn start(
    ctrl: &Arc<UblkCtrl>,
    opts: &DeviceOptions,
    runtime: Arc<dyn Serve>,
    mode: Mode,
) -> Result<Running> {
    let id = ctrl.dev_info().dev_id;
    let mut params_error = None;
    let dev = UblkDev::new(
        runtime.kind().to_string(),
        |dev| {
            dev.tgt.dev_size = opts.size;
            dev.tgt.params = basic_params(opts);
            let ring_depth = runtime.ring_depth(opts.depth);
            dev.tgt.sq_depth = ring_depth;
            dev.tgt.cq_depth = ring_depth;
            runtime.set_params(&mut dev.tgt.params).map_err(|e| {
                params_error = Some(e);
                libublk::UblkError::InvalidVal
            })
        },
        ctrl,
    );
    let dev = Arc::new(match (dev, params_error) {
        (_, Some(e)) => return Err(e.context(format!("configure {} target", runtime.kind()))),
        (Err(e), None) => return Err(Error::from_ublk(format!("open ublk device {id}"), e)),
        (Ok(dev), None) => dev,
    });

    let stats = Arc::new(StatsRegion::create(id, opts.queues)?);
    let zero_copy = ctrl.dev_info().flags & libublk::sys::UBLK_F_AUTO_BUF_REG as u64 != 0;
    let queue_error = Arc::new(Mutex::new(None));
    let mut controls = Vec::with_capacity(opts.queues as usize);
    let mut queues = Vec::with_capacity(opts.queues as usize);
    let (tx, rx) = mpsc::channel();
    let mut spawn_error = None;
    // Queues served by a host's thread: it is not pinned to their CPUs.
    let mut hosted = Vec::new();
    for qid in 0..opts.queues {
        let control = match QueueControl::new() {
            Ok(c) => c,
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        };
        controls.push(control.clone());
        let buffers = if zero_copy {
            IoBuffers::registered(opts.depth, opts.max_io_bytes)
        } else {
            IoBuffers::new(opts.depth, opts.max_io_bytes)
        };
        let job = QueueJob {
            id,
            qid,
            dev: dev.clone(),
            runtime: runtime.clone(),
            buffers,
            control,
            io_delay: opts.io_delay,
            stats: stats.clone(),
            started: tx.clone(),
            errors: queue_error.clone(),
        };
        if let Some(host) = runtime.queue_host(qid) {
            hosted.push(qid);
            let finished = Arc::new(Finished::default());
            let done = finished.clone();
            let hosted_control = job.control.clone();
            let hosted_job = HostedQueue::new(
                id,
                qid,
                Box::new(move || {
                    Box::pin(async move {
                        done.started_here();
                        crate::runtime::hosted::finish_on_exit(Some(done.clone()));
                        job.announce();
                        let ring_entries = job.runtime.ring_depth(job.dev.dev_info.queue_depth);
                        let outcome = match crate::runtime::hosted::fresh_ring(ring_entries) {
                            Ok(()) => job.runtime.serve_queue_hosted(job.args()).await,
                            Err(e) => {
                                job.dev.notify_buffer_registration_complete(true);
                                Err(e)
                            }
                        };
                        job.ended(Ok(outcome));
                        crate::runtime::hosted::finish_on_exit(None);
                        done.finish();
                    })
                }),
                hosted_control,
                finished.clone(),
            );
            match host.host(hosted_job) {
                Ok(()) => queues.push(QueueHandle::Hosted(finished)),
                Err(e) => {
                    spawn_error = Some(e.context(format!("serve queue {qid} on its host")));
                    break;
                }
            }
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name(queue_thread_name(id, qid))
            .spawn(move || {
                job.announce();
                let outcome =
                    catch_unwind(AssertUnwindSafe(|| job.runtime.serve_queue(job.args())));
                job.ended(outcome);
            });
        match spawned {
            Ok(handle) => queues.push(QueueHandle::Thread(handle)),
            Err(e) => {
                spawn_error = Some(Error::from(e).context("spawn queue thread"));
                break;
            }
        }
    }
    drop(tx);
    if spawn_error.is_some() {
        // Let start fail instead of waiting for the missing queues.
        dev.notify_buffer_registration_complete(true);
    }
    for (qid, tid) in rx.iter().take(queues.len()) {
        if !hosted.contains(&qid) {
            ctrl.set_thread_affinity(qid, tid);
        }
        let _ = ctrl.configure_queue(&dev, qid, tid);
    }
    let started = match spawn_error {
        Some(e) => Err(e),
        None => ctrl
            .start_dev(&dev)
            .map(|_| ())
            .map_err(|e| Error::from_ublk(format!("start ublk device {id}"), e)),
    };
    if let Err(start_error) = started {
        runtime.stopping();
        // Stopping a device that never started makes the kernel abort the
        // queues' fetch commands, which a queue must see before it may let
        // go of its ring (6.12 waits for them there). The queues are also
        // told to leave, in case some never got as far as fetching.
        for control in &controls {
            control.stopping();
        }
        // Only fetch commands the kernel holds can be aborted: give every
        // queue still running the time to hand them over first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while controls
            .iter()
            .zip(&queues)
            .any(|(control, queue)| !control.fetched() && !queue.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A device being recovered is left for another try: its queues
        // let go of it, and the kernel holds its IO again.
        if mode == Mode::Add {
            let _ = ensure_control_ring().map(|()| ctrl.kill_dev());
        }
        for control in &controls {
            control.abort();
        }
        for handle in queues {
            handle.join();
        }
        drop(dev);
        // A queue's own failure explains a failed start better.
        let cause = queue_error.lock().unwrap().take();
        return Err(cause.unwrap_or(start_error));
    }
    Ok(Running {
        ctrl: ctrl.clone(),
        runtime,
        queues,
        controls,
        queue_error,
        stats,
    })
}

fn queue_thread_name(id: u32, qid: u16) -> String {
    format!("ublk{id}-q{qid}")
}

/// The device id and queue a queue thread serves, from its name; `None`
/// for any other thread.
pub fn queue_of_thread(name: &str) -> Option<(u32, u16)> {
    let (device, queue) = name.strip_prefix("ublk")?.split_once("-q")?;
    Some((device.parse().ok()?, queue.parse().ok()?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_threads_are_named_by_device_and_queue() {
        assert_eq!(queue_of_thread(&queue_thread_name(12, 3)), Some((12, 3)));
        assert_eq!(queue_of_thread("main"), None);
        assert_eq!(queue_of_thread("ublkx-q1"), None);
    }

    #[test]
    fn zero_copy_wins_then_batch_io_then_one_command_per_io() {
        use libublk::sys::{UBLK_F_AUTO_BUF_REG, UBLK_F_BATCH_IO, UBLK_F_USER_COPY};
        let (zc, batch) = (UBLK_F_AUTO_BUF_REG as u64, UBLK_F_BATCH_IO as u64);
        let both = Some(zc | batch);
        let opts = |zero_copy, batch_io| DeviceOptions {
            zero_copy,
            batch_io,
            ..DeviceOptions::default()
        };
        assert_eq!(transport_flags(&opts(true, true), true, 0, both), zc);
        assert_eq!(transport_flags(&opts(false, true), true, 0, both), batch);
        assert_eq!(
            transport_flags(&opts(true, true), false, 0, both),
            batch,
            "a target that touches data"
        );
        assert_eq!(
            transport_flags(&opts(true, false), false, 0, both),
            0,
            "batch IO is asked for"
        );
        assert_eq!(
            transport_flags(&opts(true, true), true, 0, Some(batch)),
            batch,
            "no zero copy in this kernel"
        );
        assert_eq!(
            transport_flags(&opts(false, true), true, 0, Some(zc)),
            0,
            "6.x: no batch IO"
        );
        assert_eq!(
            transport_flags(&opts(false, true), true, 0, None),
            0,
            "features unknown"
        );
        let user_copy = UBLK_F_USER_COPY as u64;
        assert_eq!(
            transport_flags(&opts(false, true), true, user_copy, both),
            0,
            "libublk's batch transport refuses user copy"
        );
    }
}
