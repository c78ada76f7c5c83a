//! Batches to JavaScript and back: one call of the batch handler per
//! hand-over, whose rows the core's wire module encodes into the queue's
//! table (one Float64Array per queue and thread, reused); answers come
//! back through one synchronous `post` call per JavaScript tick.
//!
//! Each IO's data is an external ArrayBuffer over its tag's buffer,
//! detached when the IO completes, so a view kept past completion reads as
//! empty instead of aliasing the tag's next IO. Its finalizer holds the
//! queue's buffers alive, so no view ever points at freed memory.

use std::ptr;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::ToNapiValue;
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use ublk_core::bridge::wire;
use ublk_core::bridge::{Batch, BatchSink, QueueShared};
use ublk_core::runtime::IoBuffers;
use ublk_core::staging::StagingBuffer;

/// Weak: a running device keeps the event loop alive through its own
/// handle in the TypeScript layer, which `unref()` can release.
pub type BatchFn = ThreadsafeFunction<Batch, (), JsBatch, Status, false, true, 0>;

/// The arguments the JS batch handler receives: queue, the counts of IO
/// rows, backend results and events in the queue's table, one buffer per
/// IO (or null when no IO has one), and the table itself when it is new.
pub struct JsBatch([sys::napi_value; 6]);

impl JsBatch {
    pub fn values(&self) -> &[sys::napi_value; 6] {
        &self.0
    }
}

impl napi::bindgen_prelude::JsValuesTupleIntoVec for JsBatch {
    fn into_vec(self, _env: sys::napi_env) -> napi::Result<Vec<sys::napi_value>> {
        Ok(self.0.to_vec())
    }
}

/// Sends batches to the JS handler until closed, which releases the
/// function so the event loop may end.
pub struct JsSink {
    func: Mutex<Option<Arc<BatchFn>>>,
    /// The tables `func`'s hand-overs are written into.
    inbound: Arc<Inbound>,
}

impl JsSink {
    pub fn new(func: BatchFn, inbound: Arc<Inbound>) -> Self {
        JsSink {
            func: Mutex::new(Some(Arc::new(func))),
            inbound,
        }
    }
}

impl BatchSink for JsSink {
    fn deliver(&self, batch: Batch) -> Result<(), Batch> {
        if ublk_core::runtime::hosted::driving() {
            // This thread hosts the queue and is polling it: the batch goes
            // to JavaScript straight from here once the poll returns.
            crate::host::defer_batch(batch);
            return Ok(());
        }
        let func = self.func.lock().unwrap().clone();
        let Some(func) = func else {
            return Err(batch);
        };
        // The batch moves into the call; on failure napi-rs drops it, so keep
        // what is needed to fail its IOs.
        let (qid, ios) = (batch.qid, batch.ios.clone());
        let inbound = self.inbound.clone();
        let returned = move |outcome: napi::Result<()>, _: Env| {
            inbound.give_back(qid);
            outcome
        };
        match func.call_with_return_value(batch, ThreadsafeFunctionCallMode::NonBlocking, returned)
        {
            Status::Ok => Ok(()),
            _ => Err(Batch {
                qid,
                ios,
                ..Batch::default()
            }),
        }
    }

    fn close(&self) {
        self.func.lock().unwrap().take();
    }
}

/// Numbers a queue's table holds at first (8 KiB, the rows of 113 IOs);
/// it grows to the next power of two when a hand-over needs more.
const FIRST_TABLE_LEN: usize = 1024;

/// Memory for one queue's table, which JavaScript sees as a Float64Array
/// for as long as it keeps it; this addon rewrites it for each hand-over.
struct TableMemory {
    data: *mut f64,
    len: usize,
}

// SAFETY: the memory is written only on the JavaScript thread that the
// table was handed to (hand-overs run there), and freed once, on drop.
unsafe impl Send for TableMemory {}
// SAFETY: as above.
unsafe impl Sync for TableMemory {}

impl TableMemory {
    fn new(len: usize) -> Arc<TableMemory> {
        let data = Box::into_raw(vec![0.0f64; len].into_boxed_slice()).cast::<f64>();
        Arc::new(TableMemory { data, len })
    }

    /// Copies `values` to the start of the table.
    fn fill(&self, values: &[f64]) {
        assert!(values.len() <= self.len, "a table too short for its rows");
        // SAFETY: `data` holds `len` f64s, of which `values` fills the
        // first; JavaScript, the only other user, runs on this very thread
        // and is not running while this copies.
        unsafe { ptr::copy_nonoverlapping(values.as_ptr(), self.data, values.len()) };
    }
}

impl Drop for TableMemory {
    fn drop(&mut self) {
        // SAFETY: `data` and `len` come from the boxed slice leaked in `new`.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.data, self.len)) });
    }
}

/// A queue's table, and how many calls of the handler may be reading it.
#[derive(Default, Clone)]
struct TableSlot {
    memory: Option<Arc<TableMemory>>,
    lent: u32,
}

/// The tables one JavaScript thread was handed for a device, by queue. A
/// hand-over writes its rows into its queue's table, so the thread makes
/// no new typed array per hand-over. A new table goes along when there was
/// none yet, when the rows outgrew it, or when a call of the handler that
/// may still read it is under way (a hand-over nested in another, as when
/// the handler stops a device this thread serves).
#[derive(Default)]
pub struct Inbound {
    tables: Mutex<Vec<TableSlot>>,
    /// The rows being encoded, kept to spare an allocation per hand-over.
    rows: Mutex<Vec<f64>>,
}

impl Inbound {
    /// A new table for `len` numbers of queue `qid`, if its table cannot
    /// take them now; `lend` installs it.
    fn table_needed(&self, qid: usize, len: usize) -> Option<Arc<TableMemory>> {
        let tables = self.tables.lock().unwrap();
        match tables.get(qid) {
            Some(TableSlot {
                memory: Some(table),
                lent: 0,
            }) if table.len >= len => None,
            _ => Some(TableMemory::new(
                FIRST_TABLE_LEN.max(len.next_power_of_two()),
            )),
        }
    }

    /// Writes `rows` into queue `qid`'s table (`fresh` from now on, if
    /// given) and lends it to one call of the handler, until `give_back`.
    fn lend(&self, qid: usize, rows: &[f64], fresh: Option<Arc<TableMemory>>) {
        let mut tables = self.tables.lock().unwrap();
        if tables.len() <= qid {
            tables.resize(qid + 1, TableSlot::default());
        }
        let slot = &mut tables[qid];
        if fresh.is_some() {
            slot.memory = fresh;
        }
        slot.memory
            .as_ref()
            .expect("a table is made before the first hand-over")
            .fill(rows);
        slot.lent += 1;
    }

    /// A call of the handler with queue `qid`'s table returned.
    pub fn give_back(&self, qid: u16) {
        if let Some(slot) = self.tables.lock().unwrap().get_mut(qid as usize) {
            slot.lent = slot.lent.saturating_sub(1);
        }
    }
}

/// Builds the JS arguments for a batch.
pub fn batch_to_js(
    env: &Env,
    queues: &[Arc<QueueShared>],
    inbound: &Inbound,
    batch: Batch,
) -> napi::Result<JsBatch> {
    let raw_env = env.raw();
    let qid = batch.qid as usize;
    let queue = queues.get(qid);
    let io_buffers = queue
        .and_then(|q| q.buffers())
        .filter(|bufs| !bufs.is_registered());
    let has_buffer =
        |io: &wire::IoRequest| io_buffers.is_some() && io.op.carries_data() && io.length > 0;
    let buffers = match io_buffers {
        Some(bufs) if batch.ios.iter().any(has_buffer) => {
            let mut list = ptr::null_mut();
            // SAFETY: a plain napi call on the JS thread with a valid env.
            check(unsafe {
                sys::napi_create_array_with_length(raw_env, batch.ios.len(), &mut list)
            })?;
            for (i, io) in batch.ios.iter().enumerate() {
                let value = if has_buffer(io) {
                    external_buffer(raw_env, bufs, io.tag, io.length as usize)?
                } else {
                    null(raw_env)?
                };
                // SAFETY: `list` is the array made above, `value` a live value.
                check(unsafe { sys::napi_set_element(raw_env, list, i as u32, value) })?;
            }
            list
        }
        _ => null(raw_env)?,
    };
    let mut rows = inbound.rows.lock().unwrap();
    rows.clear();
    wire::encode_ios(&batch.ios, &mut rows);
    wire::encode_backend(&batch.backend, &mut rows);
    wire::encode_events(&batch.events, &mut rows);
    let fresh = inbound.table_needed(qid, rows.len());
    let table = match &fresh {
        Some(memory) => {
            let (data, len) = (memory.data, memory.len);
            let buffer = external_array_buffer(
                raw_env,
                data.cast(),
                len * std::mem::size_of::<f64>(),
                memory.clone(),
            )?;
            let mut array = ptr::null_mut();
            // SAFETY: `buffer` is the ArrayBuffer made above, `len` f64s long.
            check(unsafe {
                sys::napi_create_typedarray(
                    raw_env,
                    sys::TypedarrayType::float64_array,
                    len,
                    buffer,
                    0,
                    &mut array,
                )
            })?;
            array
        }
        None => null(raw_env)?,
    };
    // SAFETY: each conversion makes a new JS value in this env.
    let number = |n: usize| unsafe { u32::to_napi_value(raw_env, n as u32) };
    let args = JsBatch([
        number(qid)?,
        number(batch.ios.len())?,
        number(batch.backend.len())?,
        number(batch.events.len())?,
        buffers,
        table,
    ]);
    // Nothing fails from here: the handler will be called with the table.
    inbound.lend(qid, &rows, fresh);
    Ok(args)
}

pub fn check(status: sys::napi_status) -> napi::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            Status::from(status),
            "napi call failed".to_string(),
        ))
    }
}

fn null(env: sys::napi_env) -> napi::Result<sys::napi_value> {
    let mut v = ptr::null_mut();
    // SAFETY: a plain napi call with a valid env and out pointer.
    check(unsafe { sys::napi_get_null(env, &mut v) })?;
    Ok(v)
}

/// A finalizer that drops the `Arc<T>` boxed into `hint`.
unsafe extern "C" fn release_arc<T>(
    _env: sys::napi_env,
    _data: *mut std::ffi::c_void,
    hint: *mut std::ffi::c_void,
) {
    // SAFETY: `hint` is the `Box<Arc<T>>` leaked by `external_array_buffer`
    // for this very buffer, and napi calls a finalizer once.
    drop(unsafe { Box::from_raw(hint.cast::<Arc<T>>()) });
}

/// An ArrayBuffer over `len` bytes at `data`, which `owner` keeps alive for
/// as long as JavaScript holds the ArrayBuffer.
fn external_array_buffer<T>(
    env: sys::napi_env,
    data: *mut u8,
    len: usize,
    owner: Arc<T>,
) -> napi::Result<sys::napi_value> {
    let hint = Box::into_raw(Box::new(owner));
    let mut value = ptr::null_mut();
    // SAFETY: `data..data + len` lies in memory `owner` keeps alive; the
    // finalizer gets `hint` back exactly once.
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env,
            data.cast(),
            len,
            Some(release_arc::<T>),
            hint.cast(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: napi did not take the hint: it is still ours to free.
        drop(unsafe { Box::from_raw(hint) });
        check(status)?;
    }
    Ok(value)
}

/// An ArrayBuffer over the first `len` bytes of `tag`'s buffer.
fn external_buffer(
    env: sys::napi_env,
    buffers: &Arc<IoBuffers>,
    tag: u16,
    len: usize,
) -> napi::Result<sys::napi_value> {
    let (data, cap) = buffers
        .buffer(tag)
        .ok_or_else(|| napi::Error::from_reason("IO tag outside the queue"))?;
    external_array_buffer(env, data, len.min(cap), buffers.clone())
}

/// A JS value made here and returned as it is.
pub struct RawValue(sys::napi_value);

impl ToNapiValue for RawValue {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        Ok(val.0)
    }
}

/// An ArrayBuffer over a whole staging buffer; it keeps the memory alive
/// for as long as JS holds it, whatever happens to the table.
pub fn staging_array_buffer(env: &Env, buffer: Arc<StagingBuffer>) -> napi::Result<RawValue> {
    let (data, len) = (buffer.as_mut_ptr(), buffer.len());
    external_array_buffer(env.raw(), data, len, buffer).map(RawValue)
}

/// Detaches each ArrayBuffer in the JS array `list` (nulls are skipped;
/// a `list` of null or undefined detaches nothing).
pub fn detach_all(env: &Env, list: sys::napi_value) -> napi::Result<()> {
    let env = env.raw();
    let mut kind = 0;
    // SAFETY: a plain napi call on the JS thread; `list` is a live value.
    check(unsafe { sys::napi_typeof(env, list, &mut kind) })?;
    if kind == sys::ValueType::napi_null || kind == sys::ValueType::napi_undefined {
        return Ok(());
    }
    let mut len = 0u32;
    // SAFETY: plain napi calls on the JS thread with a valid env; `list`
    // comes from JavaScript, and napi checks that it is an array.
    check(unsafe { sys::napi_get_array_length(env, list, &mut len) })?;
    for i in 0..len {
        let mut item = ptr::null_mut();
        // SAFETY: as above.
        check(unsafe { sys::napi_get_element(env, list, i, &mut item) })?;
        let mut is_ab = false;
        // SAFETY: as above.
        check(unsafe { sys::napi_is_arraybuffer(env, item, &mut is_ab) })?;
        if is_ab {
            // Buffers not made by this addon are not detachable; that is
            // the caller's business and harmless here.
            // SAFETY: `item` is an ArrayBuffer of this env.
            unsafe { sys::napi_detach_arraybuffer(env, item) };
        }
    }
    Ok(())
}
