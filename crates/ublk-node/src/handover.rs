//! Batches to JavaScript and back: one ThreadsafeFunction call per
//! hand-over, whose tables the core's wire module encodes; answers come
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

/// The arguments the JS batch handler receives: queue, IO table, one
/// buffer per IO (or null), backend results, events.
pub struct JsBatch([sys::napi_value; 5]);

impl JsBatch {
    pub fn values(&self) -> &[sys::napi_value; 5] {
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
}

impl JsSink {
    pub fn new(func: BatchFn) -> Self {
        JsSink {
            func: Mutex::new(Some(Arc::new(func))),
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
        match func.call(batch, ThreadsafeFunctionCallMode::NonBlocking) {
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

/// Builds the JS arguments for a batch.
pub fn batch_to_js(env: &Env, queues: &[Arc<QueueShared>], batch: Batch) -> napi::Result<JsBatch> {
    let raw_env = env.raw();
    let mut table = Vec::new();
    wire::encode_ios(&batch.ios, &mut table);
    let mut buffers = ptr::null_mut();
    // SAFETY: a plain napi call on the JS thread with a valid env.
    check(unsafe { sys::napi_create_array_with_length(raw_env, batch.ios.len(), &mut buffers) })?;
    let io_buffers = queues.get(batch.qid as usize).and_then(|q| q.buffers());
    for (i, io) in batch.ios.iter().enumerate() {
        let value = match io_buffers {
            Some(bufs) if io.op.carries_data() && io.length > 0 && !bufs.is_registered() => {
                external_buffer(raw_env, bufs, io.tag, io.length as usize)?
            }
            _ => null(raw_env)?,
        };
        // SAFETY: `buffers` is the array made above, `value` a live value.
        check(unsafe { sys::napi_set_element(raw_env, buffers, i as u32, value) })?;
    }
    // SAFETY: each conversion makes a new JS value in this env.
    let queue = unsafe { u32::to_napi_value(raw_env, batch.qid as u32)? };
    Ok(JsBatch([
        queue,
        f64_table(raw_env, &table)?,
        buffers,
        f64_table(raw_env, &wire::encode_backend(&batch.backend))?,
        f64_table(raw_env, &wire::encode_events(&batch.events))?,
    ]))
}

/// A Float64Array holding a copy of `values`, in memory the JS engine
/// owns: a table is a few dozen bytes, and an external buffer would cost
/// a finalizer and a weak handle per hand-over.
fn f64_table(env: sys::napi_env, values: &[f64]) -> napi::Result<sys::napi_value> {
    let bytes = std::mem::size_of_val(values);
    let mut data = ptr::null_mut();
    let mut buffer = ptr::null_mut();
    // SAFETY: a plain napi call on the JS thread with valid out pointers.
    check(unsafe { sys::napi_create_arraybuffer(env, bytes, &mut data, &mut buffer) })?;
    if bytes > 0 {
        // SAFETY: napi just allocated `bytes` writable bytes at `data`,
        // which no other value uses yet.
        unsafe { ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), data.cast(), bytes) };
    }
    let mut array = ptr::null_mut();
    // SAFETY: `buffer` is the ArrayBuffer made above, exactly `values.len()` f64s long.
    check(unsafe {
        sys::napi_create_typedarray(
            env,
            sys::TypedarrayType::float64_array,
            values.len(),
            buffer,
            0,
            &mut array,
        )
    })?;
    Ok(array)
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

/// Detaches each ArrayBuffer in the JS array `list` (nulls are skipped).
pub fn detach_all(env: &Env, list: sys::napi_value) -> napi::Result<()> {
    let env = env.raw();
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
