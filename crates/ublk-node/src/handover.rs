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
use ublk_core::bridge::tables::RowTables;
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

/// What one JavaScript thread's batch handler is given, for a device.
#[derive(Default)]
pub struct Inbound {
    /// The target declared zero copy: it never touches an IO's data, so
    /// its IOs come without buffers, whether or not the kernel registers them.
    zero_copy: bool,
    /// Where the hand-overs' rows go, queue by queue.
    tables: RowTables,
}

impl Inbound {
    pub fn new(zero_copy: bool) -> Inbound {
        Inbound {
            zero_copy,
            tables: RowTables::default(),
        }
    }

    /// A call of the handler with queue `qid`'s table returned.
    pub fn give_back(&self, qid: u16) {
        self.tables.give_back(qid);
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
        .filter(|bufs| !bufs.is_registered() && !inbound.zero_copy);
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
    let fresh = inbound.tables.prepare(&batch);
    let table = match &fresh {
        Some(memory) => {
            let (data, len) = (memory.as_mut_ptr(), memory.len());
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
    inbound.tables.lend(batch.qid, fresh);
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
