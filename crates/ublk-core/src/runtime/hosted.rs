//! A queue served from a thread that runs an event loop of its own (a
//! JavaScript thread), instead of a queue thread: its future never blocks,
//! and the host polls it again whenever the ring's fd is readable. The IO
//! then wakes one thread, the one that answers it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use libublk::io::UblkQueue;

use super::QueueControl;
use libublk::UblkError;

/// A thread with an event loop that can serve a queue.
pub trait QueueHost: Send + Sync + 'static {
    /// Takes `queue` over: its thread must poll [`HostedQueue::run`]'s
    /// future once soon, and again each time [`ring_fd`] is readable,
    /// until it is done. An error (the thread is gone) drops the queue,
    /// and the device does not start.
    fn host(&self, queue: HostedQueue) -> crate::Result<()>;
}

type Start = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A queue of a device being started, on its way to its host's thread.
pub struct HostedQueue {
    qid: u16,
    start: Start,
    handle: HostedHandle,
}

/// What the host keeps of its queue: whether it ended, and a way to make
/// it end now.
#[derive(Clone)]
pub struct HostedHandle {
    /// The device's id.
    device: u32,
    control: Arc<QueueControl>,
    finished: Arc<Finished>,
}

impl HostedHandle {
    pub fn is_finished(&self) -> bool {
        self.finished.is_finished()
    }

    /// The host's thread is going away (a worker ending) with the queue
    /// still served: the device stops, as it would once the thread is
    /// gone, with this thread serving its queue until then. The queue
    /// must not merely leave: on 6.12 its ring cannot let go of the
    /// device while the kernel holds its fetch commands, and the kernel
    /// gives those back only when the device stops.
    pub fn stop_device_here(&self) {
        if self.is_finished() {
            return;
        }
        match crate::device::stop_served(self.device) {
            Ok(true) => {}
            Ok(false) => self.abort_here(),
            Err(e) => {
                log::error!("ublk device {}: {e}", self.device);
                self.abort_here();
            }
        }
    }

    /// Makes the queue leave at once, served here until it has; its IOs
    /// in flight fail when the thread's ring goes.
    fn abort_here(&self) {
        if self.is_finished() {
            return;
        }
        self.control.abort();
        if !serve_here_until(|| self.is_finished(), HOST_STOP_TIMEOUT) {
            log::error!("a hosted queue did not leave within {HOST_STOP_TIMEOUT:?} of its abort");
        }
    }
}

impl HostedQueue {
    pub(crate) fn new(
        device: u32,
        qid: u16,
        start: Start,
        control: Arc<QueueControl>,
        finished: Arc<Finished>,
    ) -> HostedQueue {
        HostedQueue {
            qid,
            start,
            handle: HostedHandle {
                device,
                control,
                finished,
            },
        }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn handle(&self) -> HostedHandle {
        self.handle.clone()
    }

    /// The queue's whole life, on the thread that calls this: it creates
    /// the queue's ring on this thread, which may then host no other.
    pub fn run(self) -> Pin<Box<dyn Future<Output = ()>>> {
        (self.start)()
    }
}

std::thread_local! {
    /// Polls this thread's hosted queue once, outside the event loop: for a
    /// stop that waits for the queue on the very thread that hosts it.
    static POLL_NOW: RefCell<Option<Box<dyn FnMut() -> bool>>> = const { RefCell::new(None) };
    /// The host is polling this thread's queue, and polls it again before
    /// it returns to its event loop.
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    /// Something was handed to this thread's queue without its ring.
    static NUDGED: Cell<bool> = const { Cell::new(false) };
}

/// The host says it is polling this thread's queue (and will poll again
/// after any call it makes into the application).
pub fn set_driving(driving: bool) {
    DRIVING.with(|d| d.set(driving));
}

/// Whether the host is polling this thread's queue right now: what is
/// handed to it then needs no wake-up through the ring.
pub fn driving() -> bool {
    DRIVING.with(|d| d.get())
}

/// Makes the next poll of this thread's queue run its tasks even if the
/// ring has nothing.
pub fn nudge() {
    NUDGED.with(|n| n.set(true));
}

/// Whether something nudged the queue since the last poll.
pub fn nudged() -> bool {
    NUDGED.with(|n| n.get())
}

/// Sets (or clears) how this thread polls its hosted queue on demand; the
/// poll says whether the queue ended.
pub fn set_poll_now(poll: Option<Box<dyn FnMut() -> bool>>) {
    POLL_NOW.with(|p| *p.borrow_mut() = poll);
}

/// Whether this thread hosts a queue now.
pub fn hosting() -> bool {
    POLL_NOW.with(|p| p.borrow().is_some())
}

/// The fd of this thread's queue ring, once a hosted queue made it.
pub fn ring_fd() -> RawFd {
    libublk::io::with_task_io_ring(|ring| ring.as_raw_fd())
}

/// Gives this thread a fresh queue ring of `entries` if an earlier hosted
/// queue left one (libublk keeps one per thread for good): nothing the
/// last queue registered or left in flight carries over.
pub(crate) fn fresh_ring(entries: u16) -> crate::Result<()> {
    libublk::io::ublk_init_task_ring(|cell| {
        if let Some(ring) = cell.get() {
            let fresh = io_uring::IoUring::builder()
                .setup_cqsize(entries as u32)
                .setup_coop_taskrun()
                .build(entries as u32)
                .map_err(UblkError::IOError)?;
            drop(ring.replace(fresh));
        }
        Ok(())
    })
    .map_err(|e| crate::Error::from_ublk("make this thread's queue ring", e))
}

/// Polls this thread's hosted queue, whenever its ring is readable, until
/// `done` or `timeout`: for a thread that waits on something the queue
/// must serve (a stop, which waits for the IO in flight) while no event
/// loop runs here.
pub fn serve_here_until(done: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: ring_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for this thread's ring.
        unsafe { libc::poll(&mut pfd, 1, 10) };
        let poll = POLL_NOW.with(|p| p.borrow_mut().take());
        let Some(mut poll) = poll else {
            // Nothing is hosted here any more.
            return done();
        };
        if !poll() {
            POLL_NOW.with(|p| {
                p.borrow_mut().get_or_insert(poll);
            });
        }
    }
    true
}

/// Submits what the queue queued and says whether the ring has
/// completions; pending otherwise, until the host polls again.
pub(crate) fn ring_ready<'a>(
    queue: &'a UblkQueue<'a>,
) -> impl Future<Output = std::result::Result<bool, UblkError>> + 'a {
    std::future::poll_fn(move |_| {
        let stopping = queue.is_stopping();
        let ready = libublk::io::with_task_io_ring_mut(|ring| {
            // An enter with nothing to submit costs a syscall per poll and
            // gives nothing: the host's own wait on the ring (epoll) runs
            // the ring's pending task work as well.
            let sq = ring.submission();
            let idle = sq.is_empty() && !sq.cq_overflow() && !sq.taskrun();
            drop(sq);
            if !idle {
                ring.submit()?;
            }
            Ok(!ring.completion().is_empty())
        });
        let nudged = NUDGED.with(|n| n.replace(false));
        match ready {
            Err(e) => Poll::Ready(Err(UblkError::IOError(e))),
            Ok(false) if nudged && !stopping => Poll::Ready(Ok(false)),
            Ok(true) if stopping => Poll::Ready(Err(UblkError::QueueIsDown)),
            Ok(true) => Poll::Ready(Ok(false)),
            Ok(false) => Poll::Pending,
        }
    })
}

/// Tells whoever waits that a hosted queue ended.
#[derive(Default)]
pub(crate) struct Finished {
    done: Mutex<bool>,
    cv: Condvar,
    /// The thread that serves the queue, once it started there.
    host: OnceLock<ThreadId>,
}

/// Says a hosted queue ended when its thread ends with it still served
/// (a worker that exited without its environment's cleanup): the thread's
/// ring goes with it, and the kernel takes back what it held.
struct FinishOnExit(RefCell<Option<Arc<Finished>>>);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        if let Some(finished) = self.0.borrow_mut().take() {
            finished.finish();
        }
    }
}

std::thread_local! {
    static FINISH_ON_EXIT: FinishOnExit = const { FinishOnExit(RefCell::new(None)) };
}

/// Sets (or clears) the queue this thread's end finishes.
pub(crate) fn finish_on_exit(finished: Option<Arc<Finished>>) {
    FINISH_ON_EXIT.with(|f| *f.0.borrow_mut() = finished);
}

/// How long a stop waits on the hosting thread itself for its queue.
const HOST_STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl Finished {
    /// The queue starts on this thread.
    pub fn started_here(&self) {
        let _ = self.host.set(std::thread::current().id());
    }

    pub fn finish(&self) {
        *self.done.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Whether this thread serves the queue.
    pub fn is_host(&self) -> bool {
        self.host.get() == Some(&std::thread::current().id())
    }

    pub fn is_finished(&self) -> bool {
        *self.done.lock().unwrap()
    }

    pub fn wait(self: &Arc<Self>) {
        if self.host.get() == Some(&std::thread::current().id()) {
            return self.serve_until_finished();
        }
        let mut done = self.done.lock().unwrap();
        while !*done {
            done = self.cv.wait(done).unwrap();
        }
    }

    /// Waiting on the thread that hosts the queue: nothing else polls it
    /// meanwhile (a stop when the thread's environment shuts down), so
    /// this does.
    fn serve_until_finished(&self) {
        if !serve_here_until(|| self.is_finished(), HOST_STOP_TIMEOUT) {
            log::error!("a hosted queue did not end within {HOST_STOP_TIMEOUT:?} of its stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_hosted_queue_gets_a_fresh_ring_of_its_own_size() {
        std::thread::spawn(|| {
            // No ring yet: the queue makes its own (libublk's default).
            fresh_ring(64).unwrap();
            let _ = libublk::io::ublk_init_task_ring(|cell| {
                let ring = io_uring::IoUring::builder().build(16).unwrap();
                let _ = cell.set(std::cell::RefCell::new(ring));
                Ok(())
            });
            assert_eq!(
                libublk::io::with_task_io_ring(|r| r.params().sq_entries()),
                16
            );
            fresh_ring(64).unwrap();
            assert_eq!(
                libublk::io::with_task_io_ring(|r| r.params().sq_entries()),
                64
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn nudges_are_per_thread() {
        std::thread::spawn(|| {
            assert!(!nudged());
            nudge();
            assert!(nudged());
            std::thread::spawn(|| assert!(!nudged())).join().unwrap();
        })
        .join()
        .unwrap();
    }
}
