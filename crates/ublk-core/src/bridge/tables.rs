//! The tables hand-overs travel in: one per queue and consumer thread,
//! rewritten for each hand-over instead of made anew, so an application
//! that reads its rows through a view of the table (a Float64Array)
//! allocates nothing per hand-over.
//!
//! A table is lent to one call of the application at a time: a hand-over
//! made while a call may still read the table (one nested in another,
//! should the serving thread poll its queue from inside a call) goes into
//! a new table, and so does one that outgrows it.

use std::ptr;
use std::sync::{Arc, Mutex};

use super::wire;
use super::Batch;

/// Numbers a queue's table holds at first (8 KiB, the rows of 113 IOs);
/// it grows to the next power of two when a hand-over needs more.
pub const FIRST_TABLE_LEN: usize = 1024;

/// Memory for one queue's table, shared with the application for as long
/// as it keeps a view of it (its `Arc` goes with the view).
pub struct TableMemory {
    data: *mut f64,
    len: usize,
}

// SAFETY: the memory is written only by `RowTables::lend`, on the thread
// whose application reads it, while that application is not running; it
// is freed once, when the last `Arc` goes.
unsafe impl Send for TableMemory {}
// SAFETY: as above.
unsafe impl Sync for TableMemory {}

impl TableMemory {
    fn new(len: usize) -> Arc<TableMemory> {
        let data = Box::into_raw(vec![0.0f64; len].into_boxed_slice()).cast::<f64>();
        Arc::new(TableMemory { data, len })
    }

    /// The first of the table's `len()` numbers.
    pub fn as_mut_ptr(&self) -> *mut f64 {
        self.data
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `values` to the start of the table.
    fn fill(&self, values: &[f64]) {
        assert!(values.len() <= self.len, "a table too short for its rows");
        // SAFETY: `data` holds `len` f64s, of which `values` fills the
        // first; the application, the only other user, runs on this very
        // thread and is not running while this copies.
        unsafe { ptr::copy_nonoverlapping(values.as_ptr(), self.data, values.len()) };
    }
}

impl Drop for TableMemory {
    fn drop(&mut self) {
        // SAFETY: `data` and `len` come from the boxed slice leaked in `new`.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.data, self.len)) });
    }
}

/// A queue's table, and how many calls of the application may be reading it.
#[derive(Default, Clone)]
struct TableSlot {
    memory: Option<Arc<TableMemory>>,
    lent: u32,
}

/// The tables of one consumer thread, by queue.
#[derive(Default)]
pub struct RowTables {
    slots: Mutex<Vec<TableSlot>>,
    /// The rows `prepare` encoded, for `lend` to write.
    rows: Mutex<Vec<f64>>,
}

impl RowTables {
    /// Encodes `batch`'s rows (IOs, then backend results, then events) for
    /// `lend`; returns the new table they go into, if the queue's table
    /// cannot take them now. The caller shows a new table to the
    /// application before `lend` makes it the queue's.
    pub fn prepare(&self, batch: &Batch) -> Option<Arc<TableMemory>> {
        let mut rows = self.rows.lock().unwrap();
        rows.clear();
        wire::encode_ios(&batch.ios, &mut rows);
        wire::encode_backend(&batch.backend, &mut rows);
        wire::encode_events(&batch.events, &mut rows);
        let slots = self.slots.lock().unwrap();
        match slots.get(batch.qid as usize) {
            Some(TableSlot {
                memory: Some(table),
                lent: 0,
            }) if table.len >= rows.len() => None,
            _ => Some(TableMemory::new(
                FIRST_TABLE_LEN.max(rows.len().next_power_of_two()),
            )),
        }
    }

    /// Writes the rows `prepare` encoded into queue `qid`'s table (`fresh`
    /// from now on, if given) and lends it to one call of the application,
    /// until `give_back`.
    pub fn lend(&self, qid: u16, fresh: Option<Arc<TableMemory>>) {
        let rows = self.rows.lock().unwrap();
        let mut slots = self.slots.lock().unwrap();
        let qid = qid as usize;
        if slots.len() <= qid {
            slots.resize(qid + 1, TableSlot::default());
        }
        let slot = &mut slots[qid];
        if fresh.is_some() {
            slot.memory = fresh;
        }
        slot.memory
            .as_ref()
            .expect("prepare makes a queue's first table")
            .fill(&rows);
        slot.lent += 1;
    }

    /// A call of the application with queue `qid`'s table returned.
    pub fn give_back(&self, qid: u16) {
        if let Some(slot) = self.slots.lock().unwrap().get_mut(qid as usize) {
            slot.lent = slot.lent.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::wire::{IoRequest, BACKEND_RESULT_FIELDS, IO_FIELDS};
    use crate::runtime::IoOp;

    fn batch(qid: u16, ios: usize, backend: usize) -> Batch {
        let io = IoRequest {
            tag: 1,
            seq: 2,
            op: IoOp::Read,
            flags: 0,
            offset: 0,
            length: 4096,
            batch: None,
            route_failure: None,
        };
        Batch {
            qid,
            ios: vec![io; ios],
            backend: vec![(7, -5); backend],
            events: Vec::new(),
        }
    }

    fn table_of(tables: &RowTables, qid: usize) -> Arc<TableMemory> {
        tables.slots.lock().unwrap()[qid].memory.clone().unwrap()
    }

    fn numbers(table: &TableMemory, n: usize) -> Vec<f64> {
        // SAFETY: the table holds at least `n` numbers, and nothing writes
        // it while this reads.
        unsafe { std::slice::from_raw_parts(table.as_mut_ptr(), n) }.to_vec()
    }

    #[test]
    fn a_table_is_reused_unless_lent_or_outgrown() {
        let tables = RowTables::default();
        let first = tables.prepare(&batch(1, 1, 0));
        assert!(first.is_some(), "queue 1 has no table yet");
        tables.lend(1, first);
        let table = table_of(&tables, 1);
        assert_eq!(numbers(&table, IO_FIELDS)[..2], [1.0, 2.0]);
        tables.give_back(1);

        assert!(
            tables.prepare(&batch(1, 2, 1)).is_none(),
            "returned: reused"
        );
        tables.lend(1, None);
        assert!(Arc::ptr_eq(&table_of(&tables, 1), &table));
        assert_eq!(
            numbers(&table, 2 * IO_FIELDS + BACKEND_RESULT_FIELDS)[2 * IO_FIELDS..],
            [7.0, -5.0],
            "backend results follow the IO rows"
        );

        // A hand-over nested in the call still reading the table gets a new one.
        let nested = tables.prepare(&batch(1, 1, 0));
        assert!(nested.is_some(), "lent: not rewritten");
        tables.lend(1, nested);
        assert!(!Arc::ptr_eq(&table_of(&tables, 1), &table));
        assert_eq!(
            numbers(&table, 2 * IO_FIELDS + BACKEND_RESULT_FIELDS)[2 * IO_FIELDS..],
            [7.0, -5.0],
            "the lent table was left as it was"
        );
        tables.give_back(1);
        tables.give_back(1);

        let ios = FIRST_TABLE_LEN / IO_FIELDS + 1;
        let grown = tables.prepare(&batch(1, ios, 0)).expect("outgrown");
        assert_eq!(grown.len(), 2 * FIRST_TABLE_LEN);
        assert!(
            tables.prepare(&batch(0, 1, 0)).is_some(),
            "each queue has its own"
        );
    }
}
