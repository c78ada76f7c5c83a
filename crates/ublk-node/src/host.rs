//! A queue served from a JavaScript thread's own event loop: the thread
//! polls the queue's future when the device starts, and again each time
//! libuv sees the queue's ring readable. No queue thread, so an IO wakes
//! one thread instead of two, each way.
//!
//! libuv is Node's, reached through the symbols the node binary exports;
//! Node-API gives the thread's loop.

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use ublk_core::bridge::{Batch, BridgeTarget};
use ublk_core::runtime::hosted::{self, ring_fd, HostedHandle, HostedQueue, QueueHost};

use crate::handover::{batch_to_js, Inbound};

std::thread_local! {
    /// Batches the hosted queue handed over while this thread polled it.
    static DEFERRED: RefCell<Vec<Batch>> = const { RefCell::new(Vec::new()) };
}

/// Keeps a batch for JavaScript until the poll that made it returns.
pub fn defer_batch(batch: Batch) {
    DEFERRED.with(|d| d.borrow_mut().push(batch));
}

/// How this thread calls the device's batch handler itself.
struct Direct {
    env: sys::napi_env,
    func: sys::napi_ref,
    context: sys::napi_async_context,
    target: Arc<BridgeTarget>,
    /// Shared with the bridge's ThreadsafeFunction: one handler, one set of tables.
    inbound: Arc<Inbound>,
    /// The thread's environment is shutting down: no more calls into it.
    torn_down: AtomicBool,
}

// SAFETY: the env, reference and context are used only on the thread they
// belong to: by the TSFN callback and the uv callbacks, which run there.
unsafe impl Send for Direct {}
// SAFETY: as above; nothing is shared across threads but the `Arc`.
unsafe impl Sync for Direct {}

impl Direct {
    /// Calls the batch handler with `batch`, as a callback from the event
    /// loop: microtasks (the handler's answers) run before it returns.
    fn call(&self, batch: Batch) {
        if self.torn_down.load(Ordering::SeqCst) {
            // JavaScript cannot run any more: the queue is abandoned, and
            // the bridge fails this batch's IOs with the rest it holds.
            return;
        }
        let (env, qid) = (self.env, batch.qid);
        // SAFETY: napi calls on the env's own thread, inside a handle scope
        // opened and closed here; every value made lives in that scope.
        unsafe {
            let mut scope = std::ptr::null_mut();
            sys::napi_open_handle_scope(env, &mut scope);
            let mut func = std::ptr::null_mut();
            sys::napi_get_reference_value(env, self.func, &mut func);
            let mut global = std::ptr::null_mut();
            sys::napi_get_global(env, &mut global);
            match batch_to_js(
                &Env::from_raw(env),
                self.target.queues(),
                &self.inbound,
                batch,
            ) {
                Ok(args) if !func.is_null() => {
                    let mut result = std::ptr::null_mut();
                    let status = sys::napi_make_callback(
                        env,
                        self.context,
                        global,
                        func,
                        args.values().len(),
                        args.values().as_ptr(),
                        &mut result,
                    );
                    self.inbound.give_back(qid);
                    if status == sys::Status::napi_pending_exception {
                        // The handler catches what targets throw: what is
                        // left is the thread ending (`process.exit()` in a
                        // worker terminates its JavaScript).
                        let mut error = std::ptr::null_mut();
                        sys::napi_get_and_clear_last_exception(env, &mut error);
                        log::debug!("the batch handler did not return: the thread is ending");
                    }
                }
                Ok(_) => {
                    self.inbound.give_back(qid);
                    log::error!("the batch handler is gone")
                }
                Err(e) => log::error!("cannot hand a batch to JavaScript: {e}"),
            }
            sys::napi_close_handle_scope(env, scope);
        }
    }

    /// Lets go of the handler; on the env's thread, unless it is gone.
    fn release(&self) {
        if self.torn_down.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: both were made for this env and are released once.
        unsafe {
            sys::napi_delete_reference(self.env, self.func);
            sys::napi_async_destroy(self.env, self.context);
        }
    }
}

/// libuv's `UV_POLL` handle type and `UV_READABLE` event.
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;

type PollCb = unsafe extern "C" fn(*mut c_void, c_int, c_int);
type CloseCb = unsafe extern "C" fn(*mut c_void);

type HandleSizeFn = unsafe extern "C" fn(c_int) -> usize;
type PollInitFn = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type PollStartFn = unsafe extern "C" fn(*mut c_void, c_int, PollCb) -> c_int;
type HandleFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CloseFn = unsafe extern "C" fn(*mut c_void, CloseCb);
type UnrefFn = unsafe extern "C" fn(*mut c_void);

/// The few libuv functions a hosted queue needs.
struct Uv {
    handle_size: HandleSizeFn,
    poll_init: PollInitFn,
    poll_start: PollStartFn,
    poll_stop: HandleFn,
    close: CloseFn,
    unref: UnrefFn,
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the
    // process, whose executable (node) exports libuv.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

fn uv() -> Option<&'static Uv> {
    static UV: OnceLock<Option<Uv>> = OnceLock::new();
    UV.get_or_init(|| {
        // SAFETY: each symbol is libuv's function of that name, whose C
        // signature the field's type spells out.
        unsafe {
            Some(Uv {
                handle_size: std::mem::transmute::<*mut c_void, HandleSizeFn>(symbol(
                    c"uv_handle_size",
                )?),
                poll_init: std::mem::transmute::<*mut c_void, PollInitFn>(symbol(c"uv_poll_init")?),
                poll_start: std::mem::transmute::<*mut c_void, PollStartFn>(symbol(
                    c"uv_poll_start",
                )?),
                poll_stop: std::mem::transmute::<*mut c_void, HandleFn>(symbol(c"uv_poll_stop")?),
                close: std::mem::transmute::<*mut c_void, CloseFn>(symbol(c"uv_close")?),
                unref: std::mem::transmute::<*mut c_void, UnrefFn>(symbol(c"uv_unref")?),
            })
        }
    })
    .as_ref()
}

/// Set when something the queue's future waits for is ready again.
#[derive(Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One hosted queue on this thread: its future and its poll handle.
struct Hosted {
    future: Pin<Box<dyn Future<Output = ()>>>,
    woken: Arc<Woken>,
    direct: Arc<Direct>,
    /// The `uv_poll_t`, whose first field (`data`) points back here.
    handle: *mut c_void,
    /// The queue, for the thread's teardown (registered with Node-API).
    teardown: *mut Teardown,
}

/// What the thread's teardown needs: the queue, and the handler to stop
/// calling.
struct Teardown {
    qid: u16,
    queue: HostedHandle,
    direct: Arc<Direct>,
}

impl Hosted {
    /// Polls the queue, hands what it gathered to JavaScript, and polls
    /// again for what JavaScript answered, until the queue waits on its
    /// ring; true once it ended.
    fn serve(&mut self) -> bool {
        hosted::set_driving(true);
        let done = loop {
            if self.drive() {
                break true;
            }
            let batches = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
            if batches.is_empty() && !hosted::nudged() {
                break false;
            }
            for batch in batches {
                self.direct.call(batch);
            }
        };
        hosted::set_driving(false);
        done
    }

    /// Polls the future until it waits on the ring; true once it ended.
    fn drive(&mut self) -> bool {
        let waker = Waker::from(self.woken.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            self.woken.0.store(false, Ordering::SeqCst);
            if let Poll::Ready(()) = self.future.as_mut().poll(&mut cx) {
                return true;
            }
            if !self.woken.0.load(Ordering::SeqCst) {
                return false;
            }
        }
    }
}

unsafe extern "C" fn on_readable(handle: *mut c_void, _status: c_int, _events: c_int) {
    // SAFETY: as `serve_ready` needs; libuv calls this while the handle is live.
    unsafe { serve_ready(handle) };
}

/// Serves the queue of `handle` as far as it can go now; true once it
/// ended, and then the handle is closing.
///
/// # Safety
/// `handle` is a live poll handle made by `host_here`.
unsafe fn serve_ready(handle: *mut c_void) -> bool {
    // SAFETY: the handle's `data` is the `Hosted` that `host_here` leaked
    // for it, freed only once the handle is closed.
    let hosted = unsafe { &mut **handle.cast::<*mut Hosted>() };
    let ended = hosted.serve();
    if ended {
        hosted::set_poll_now(None);
        let uv = uv().expect("libuv was found when the handle was made");
        // SAFETY: the handle is live and ours; once closed, `on_closed` frees it.
        unsafe {
            (uv.poll_stop)(handle);
            (uv.close)(handle, on_closed);
        }
    }
    ended
}

unsafe extern "C" fn on_closed(handle: *mut c_void) {
    // SAFETY: libuv is done with the handle; both allocations are ours.
    unsafe {
        let hosted = Box::from_raw(*handle.cast::<*mut Hosted>());
        if !hosted.direct.torn_down.load(Ordering::SeqCst) {
            sys::napi_remove_env_cleanup_hook(
                hosted.direct.env,
                Some(on_teardown),
                hosted.teardown.cast(),
            );
        }
        drop(Box::from_raw(hosted.teardown));
        hosted.direct.release();
        let size = (uv().expect("found before").handle_size)(UV_POLL);
        let layout = std::alloc::Layout::from_size_align(size, 16).expect("a handle's layout");
        std::alloc::dealloc(hosted.handle.cast(), layout);
    }
}

unsafe extern "C" fn on_teardown(arg: *mut c_void) {
    // SAFETY: `arg` is the `Teardown` host_here registered, freed only
    // after the hook is removed or has run.
    let teardown = unsafe { &*arg.cast::<Teardown>() };
    teardown.direct.torn_down.store(true, Ordering::SeqCst);
    // What JavaScript held is failed first (the kernel would wait for it
    // for ever once the ring is gone), then the device stops.
    let target = &teardown.direct.target;
    target.abandon_queue(teardown.qid);
    if let Some(shared) = target.queue(teardown.qid) {
        let answered = hosted::serve_here_until(
            || shared.held() == 0 || teardown.queue.is_finished(),
            std::time::Duration::from_secs(10),
        );
        if !answered {
            log::error!(
                "queue {}: IOs held by the JavaScript thread that went away were not answered",
                teardown.qid
            );
        }
    }
    teardown.queue.stop_device_here();
}

/// Starts serving `queue` on this thread: polls it once (it makes its ring
/// and fetches), then whenever the ring is readable.
fn host_here(env: &Env, queue: HostedQueue, direct: Arc<Direct>) {
    let (qid, queue_handle) = (queue.qid(), queue.handle());
    let mut hosted = Hosted {
        future: queue.run(),
        woken: Arc::new(Woken::default()),
        direct,
        handle: std::ptr::null_mut(),
        teardown: std::ptr::null_mut(),
    };
    if hosted.serve() {
        hosted.direct.release();
        return;
    }
    // A thread that ends with the queue still served (a worker exiting)
    // takes it down first, or a stop would wait for it for ever.
    hosted.teardown = Box::into_raw(Box::new(Teardown {
        qid,
        queue: queue_handle,
        direct: hosted.direct.clone(),
    }));
    // SAFETY: a plain napi call on this env's thread; the argument lives
    // until the hook is removed (on_closed) or has run.
    unsafe { sys::napi_add_env_cleanup_hook(env.raw(), Some(on_teardown), hosted.teardown.cast()) };
    // Found when the host was made (JsQueueHost::new).
    let uv = uv().expect("libuv's functions were found before");
    let mut uv_loop = std::ptr::null_mut();
    // SAFETY: a plain napi call on this env's thread.
    unsafe { sys::napi_get_uv_event_loop(env.raw(), &mut uv_loop) };
    // SAFETY: memory for one uv_poll_t, as large as libuv says, aligned
    // for any of its fields.
    let handle = unsafe {
        let size = (uv.handle_size)(UV_POLL);
        std::alloc::alloc_zeroed(std::alloc::Layout::from_size_align(size, 16).expect("layout"))
    };
    hosted.handle = handle.cast();
    let hosted = Box::into_raw(Box::new(hosted));
    // SAFETY: `handle` is fresh memory for a uv_poll_t on this thread's
    // loop; its data field points at the leaked `Hosted` until on_closed.
    unsafe {
        let watched = (uv.poll_init)(uv_loop.cast(), handle.cast(), ring_fd());
        *handle.cast::<*mut Hosted>() = hosted;
        let watched = if watched == 0 {
            (uv.poll_start)(handle.cast(), UV_READABLE, on_readable)
        } else {
            watched
        };
        if watched != 0 {
            // Never seen: an io_uring fd is pollable. The queue is then
            // served only by a stop on this thread.
            log::error!("libuv cannot watch the queue's ring (error {watched})");
        }
        // The device's own handle in the TypeScript layer keeps the loop alive.
        (uv.unref)(handle.cast());
    }
    let handle = handle as usize;
    hosted::set_poll_now(Some(Box::new(move || {
        // SAFETY: the handle lives until the queue ended, and this is
        // dropped when it does.
        unsafe { serve_ready(handle as *mut c_void) }
    })));
}

type HostFn = ThreadsafeFunction<HostedQueue, (), (), Status, false, true, 0>;

/// This JavaScript thread, as a host for a queue.
pub struct JsQueueHost {
    func: HostFn,
}

impl JsQueueHost {
    /// This thread as a host, which calls `on_batch` with the queue's batches.
    pub fn new(
        env: &Env,
        on_batch: sys::napi_value,
        target: Arc<BridgeTarget>,
        inbound: Arc<Inbound>,
    ) -> napi::Result<JsQueueHost> {
        if uv().is_none() {
            return Err(crate::errors::to_napi(ublk_core::Error::new(
                libc::ENOTSUP,
                "libuv's functions are not exported by this process: queueThreads: false needs Node's own libuv",
            )));
        }
        if hosted::hosting() {
            return Err(crate::errors::to_napi(ublk_core::Error::new(
                libc::EBUSY,
                "this thread serves a queue already: a thread serves one queue at a time",
            )));
        }
        let raw = env.raw();
        let mut func = std::ptr::null_mut();
        let mut context = std::ptr::null_mut();
        // SAFETY: plain napi calls on this env's thread; `on_batch` is a
        // live function value of this call.
        unsafe {
            crate::handover::check(sys::napi_create_reference(raw, on_batch, 1, &mut func))?;
            let mut name = std::ptr::null_mut();
            crate::handover::check(sys::napi_create_string_utf8(
                raw,
                c"ublk.batch".as_ptr(),
                10,
                &mut name,
            ))?;
            crate::handover::check(sys::napi_async_init(
                raw,
                std::ptr::null_mut(),
                name,
                &mut context,
            ))?;
        }
        let direct = Arc::new(Direct {
            env: raw,
            func,
            context,
            target,
            inbound,
            torn_down: AtomicBool::new(false),
        });
        let noop = env.create_function_from_closure::<(), (), _>("hostQueue", |_| Ok(()))?;
        let func = noop
            .build_threadsafe_function::<HostedQueue>()
            .weak::<true>()
            .build_callback(move |ctx| {
                host_here(&ctx.env, ctx.value, direct.clone());
                Ok(())
            })?;
        Ok(JsQueueHost { func })
    }
}

impl QueueHost for JsQueueHost {
    fn host(&self, queue: HostedQueue) -> ublk_core::Result<()> {
        match self
            .func
            .call(queue, ThreadsafeFunctionCallMode::NonBlocking)
        {
            Status::Ok => Ok(()),
            status => Err(ublk_core::Error::new(
                libc::ESHUTDOWN,
                format!("the JavaScript thread that was to serve the queue is gone ({status})"),
            )),
        }
    }
}
