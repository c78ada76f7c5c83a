//! Results and requests from the application to one queue thread: a short
//! mutex-guarded list plus an eventfd that the queue's ring reads, written
//! only when the list goes from empty to non-empty.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::wire::{BackendRequest, IoResult, Refused};
use crate::error::Result;
use crate::runtime::EventFd;

/// A decoded backend request, or why it cannot run.
pub type Request = std::result::Result<BackendRequest, Refused>;

#[derive(Default)]
pub(crate) struct Pending {
    pub results: Vec<IoResult>,
    pub requests: Vec<Request>,
    /// The application finished taking in the last batch handed to it.
    pub batch_taken: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.results.is_empty() && self.requests.is_empty() && !self.batch_taken
    }
}

pub struct QueueInbox {
    pending: Mutex<Pending>,
    eventfd: EventFd,
    /// Something was posted without a wake-up (see `post_local`).
    posted_locally: AtomicBool,
}

impl QueueInbox {
    pub(crate) fn new() -> Result<QueueInbox> {
        Ok(QueueInbox {
            pending: Mutex::new(Pending::default()),
            eventfd: EventFd::new()?,
            posted_locally: AtomicBool::new(false),
        })
    }

    /// Queues IO results and backend requests and wakes the queue thread;
    /// `batch_taken` says the application is ready for the next batch.
    /// Never blocks on the queue thread: it holds the lock only to swap.
    pub fn post(&self, results: Vec<IoResult>, requests: Vec<Request>, batch_taken: bool) {
        if results.is_empty() && requests.is_empty() && !batch_taken {
            return;
        }
        let was_empty = {
            let mut p = self.pending.lock().unwrap();
            let was_empty = p.is_empty();
            p.results.extend(results);
            p.requests.extend(requests);
            p.batch_taken |= batch_taken;
            was_empty
        };
        if was_empty {
            self.wake();
        }
    }

    /// Queues results and requests from the thread that hosts the queue,
    /// while it polls it: that poll takes them in, no wake-up needed.
    pub fn post_local(&self, results: Vec<IoResult>, requests: Vec<Request>, batch_taken: bool) {
        let mut p = self.pending.lock().unwrap();
        p.results.extend(results);
        p.requests.extend(requests);
        p.batch_taken |= batch_taken;
        self.posted_locally.store(true, Ordering::Release);
    }

    /// Whether something was posted without a wake-up since the last call.
    pub(crate) fn take_posted_locally(&self) -> bool {
        self.posted_locally.load(Ordering::Acquire)
            && self.posted_locally.swap(false, Ordering::AcqRel)
    }

    /// Wakes the queue thread without posting anything.
    pub fn wake(&self) {
        self.eventfd.wake();
    }

    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap())
    }

    pub fn eventfd(&self) -> RawFd {
        self.eventfd.raw_fd()
    }

    /// Closes the eventfd once the queue thread is gone; later posts wake
    /// nobody.
    pub(crate) fn close(&self) {
        self.eventfd.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_wakes_once_and_take_drains() {
        let inbox = QueueInbox::new().unwrap();
        let r = IoResult {
            tag: 1,
            seq: 2,
            result: 4096,
        };
        inbox.post(vec![r], vec![], false);
        inbox.post(vec![r], vec![], true);
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(inbox.eventfd(), (&mut counter as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(counter, 1, "second post found the inbox non-empty");
        let taken = inbox.take();
        assert_eq!(taken.results.len(), 2);
        assert!(taken.batch_taken);
        assert!(inbox.take().results.is_empty());
    }
}
