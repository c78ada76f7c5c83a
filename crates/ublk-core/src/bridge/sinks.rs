//! Where each queue's batches go: to the application's one sink, or, for a
//! queue that has its own (a JavaScript worker thread serving that queue),
//! to that one. The stop is every sink's news.

use std::sync::{Arc, Mutex};

use super::wire::Event;
use super::{Batch, BatchSink};
use crate::error::{Error, Result};

pub(crate) struct QueueSinks {
    main: Arc<dyn BatchSink>,
    own: Vec<Mutex<Option<Arc<dyn BatchSink>>>>,
}

impl QueueSinks {
    pub fn new(main: Arc<dyn BatchSink>, queues: u16) -> QueueSinks {
        QueueSinks {
            main,
            own: (0..queues).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Gives queue `qid` a sink of its own, from its next hand-over on.
    /// EBUSY if it has one already.
    pub fn attach(&self, qid: u16, sink: Arc<dyn BatchSink>) -> Result<()> {
        let slot = self
            .own
            .get(qid as usize)
            .ok_or_else(|| Error::invalid(format!("no queue {qid}")))?;
        let mut slot = slot.lock().unwrap();
        if slot.is_some() {
            return Err(Error::new(
                libc::EBUSY,
                format!("queue {qid} is already served by its own handler"),
            ));
        }
        *slot = Some(sink);
        Ok(())
    }

    /// Closes queue `qid`'s own sink. Its hand-overs fail from then on
    /// (their IOs with EIO): they never fall back to the main sink, whose
    /// side holds no state for that queue.
    pub fn detach(&self, qid: u16) {
        if let Some(slot) = self.own.get(qid as usize) {
            if let Some(sink) = slot.lock().unwrap().as_ref() {
                sink.close();
            }
        }
    }

    fn own_sink(&self, qid: u16) -> Option<Arc<dyn BatchSink>> {
        self.own
            .get(qid as usize)
            .and_then(|slot| slot.lock().unwrap().clone())
    }
}

impl BatchSink for QueueSinks {
    fn deliver(&self, batch: Batch) -> std::result::Result<(), Batch> {
        if batch.events.iter().any(|e| matches!(e, Event::Stopped)) {
            for (qid, slot) in self.own.iter().enumerate() {
                let sink = slot.lock().unwrap().clone();
                if let Some(sink) = sink {
                    let _ = sink.deliver(Batch {
                        qid: qid as u16,
                        events: vec![Event::Stopped],
                        ..Batch::default()
                    });
                }
            }
            return self.main.deliver(batch);
        }
        match self.own_sink(batch.qid) {
            Some(sink) => sink.deliver(batch),
            None => self.main.deliver(batch),
        }
    }

    fn close(&self) {
        for slot in &self.own {
            if let Some(sink) = slot.lock().unwrap().as_ref() {
                sink.close();
            }
        }
        self.main.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        got: Mutex<Vec<(u16, usize)>>,
        closed: std::sync::atomic::AtomicBool,
    }

    impl BatchSink for Recorder {
        fn deliver(&self, batch: Batch) -> std::result::Result<(), Batch> {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(batch);
            }
            self.got
                .lock()
                .unwrap()
                .push((batch.qid, batch.events.len()));
            Ok(())
        }

        fn close(&self) {
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn event_batch(qid: u16, event: Event) -> Batch {
        Batch {
            qid,
            events: vec![event],
            ..Batch::default()
        }
    }

    #[test]
    fn routes_by_queue_and_broadcasts_the_stop() {
        let main = Arc::new(Recorder::default());
        let q1 = Arc::new(Recorder::default());
        let sinks = QueueSinks::new(main.clone(), 2);
        sinks.attach(1, q1.clone()).unwrap();
        assert_eq!(
            sinks.attach(1, q1.clone()).unwrap_err().errno(),
            libc::EBUSY
        );
        assert_eq!(
            sinks.attach(2, q1.clone()).unwrap_err().errno(),
            libc::EINVAL
        );
        let done = Event::BatchDone { batch: 1 };
        sinks.deliver(event_batch(0, done)).unwrap();
        sinks.deliver(event_batch(1, done)).unwrap();
        assert_eq!(*main.got.lock().unwrap(), vec![(0, 1)]);
        assert_eq!(*q1.got.lock().unwrap(), vec![(1, 1)]);
        sinks.deliver(event_batch(0, Event::Stopped)).unwrap();
        assert_eq!(main.got.lock().unwrap().len(), 2);
        assert_eq!(q1.got.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_detached_queue_fails_its_batches_instead_of_falling_back() {
        let main = Arc::new(Recorder::default());
        let q0 = Arc::new(Recorder::default());
        let sinks = QueueSinks::new(main.clone(), 1);
        sinks.attach(0, q0.clone()).unwrap();
        sinks.detach(0);
        assert!(sinks
            .deliver(event_batch(0, Event::BatchDone { batch: 1 }))
            .is_err());
        assert!(main.got.lock().unwrap().is_empty());
        sinks.close();
        assert!(main.closed.load(std::sync::atomic::Ordering::SeqCst));
    }
}
