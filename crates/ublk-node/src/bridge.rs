//! Targets written in JavaScript: batches reach JS through one
//! ThreadsafeFunction call per ring reap, results and backend requests come
//! back through one synchronous `post` call per JS tick.
//!
//! Each IO's data is an external ArrayBuffer over its tag's buffer, detached
//! when the IO completes, so a view kept past completion reads as empty
//! instead of aliasing the tag's next IO. Its finalizer holds the queue's
//! buffers alive, so no view ever points at freed memory.

use std::ptr;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Float64Array, ToNapiValue};
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use ublk_core::bridge::{
    BackendKind, BackendRequest, Batch, BatchSink, BridgeTarget, IoResult, QueueShared,
    StagingBuffer,
};
use ublk_core::js_numbers::{integer, u16_arg, u32_arg};

use crate::errors::to_napi;

/// Floats per IO in the descriptor table: tag, seq, op, flags, offset,
/// length, and for a routed read that failed, the file's index and the
/// negative errno (-1 and 0 otherwise).
pub const IO_FIELDS: usize = 8;
/// Floats per IO result: tag, seq, result.
pub const RESULT_FIELDS: usize = 3;
/// Floats per backend request: id, kind, mode, file, tag, seq, bufOffset,
/// length, fileOffset. `mode` is the fallocate mode, or the RWF_* flags of
/// a read or write.
pub const REQUEST_FIELDS: usize = 9;
/// Bit in `kind`: the request completes its IO (see `BackendRequest::completes_io`).
pub const COMPLETES_IO: u32 = 0x100;
/// Bit in `kind`: a completing read's failure goes back to JS (see
/// `BackendRequest::report_failure`).
pub const REPORT_FAILURE: u32 = 0x200;
/// Bit in `kind`: the `tag` field names a staging buffer, not an IO.
pub const STAGING: u32 = 0x400;
const KIND_FLAGS: u32 = COMPLETES_IO | REPORT_FAILURE | STAGING;

/// Weak: a running device keeps the event loop alive through its own
/// handle in the TypeScript layer, which `unref()` can release.
pub type BatchFn = ThreadsafeFunction<Batch, (), JsBatch, Status, false, true, 0>;

/// The arguments the JS batch handler receives.
pub struct JsBatch(
    sys::napi_value,
    sys::napi_value,
    sys::napi_value,
    sys::napi_value,
);

impl napi::bindgen_prelude::JsValuesTupleIntoVec for JsBatch {
    fn into_vec(self, _env: sys::napi_env) -> napi::Result<Vec<sys::napi_value>> {
        Ok(vec![self.0, self.1, self.2, self.3])
    }
}

/// Sends batches to the JS handler; dropped (releasing the function so the
/// event loop may end) when the device stops.
pub struct JsSink {
    func: Mutex<Option<Arc<BatchFn>>>,
}

impl JsSink {
    pub fn new(func: BatchFn) -> Self {
        JsSink {
            func: Mutex::new(Some(Arc::new(func))),
        }
    }

    pub fn close(&self) {
        self.func.lock().unwrap().take();
    }
}

impl BatchSink for JsSink {
    fn deliver(&self, batch: Batch) -> Result<(), Batch> {
        let func = self.func.lock().unwrap().clone();
        let Some(func) = func else {
            return Err(batch);
        };
        // The batch moves into the call; on failure napi-rs drops it, so keep
        // what is needed to fail its IOs.
        let ios = batch.ios.clone();
        let qid = batch.qid;
        match func.call(batch, ThreadsafeFunctionCallMode::NonBlocking) {
            Status::Ok => Ok(()),
            _ => Err(Batch {
                qid,
                ios,
                backend: Vec::new(),
            }),
        }
    }
}

/// Builds the JS arguments for a batch: queue id, IO descriptor table,
/// one external ArrayBuffer per data IO (null otherwise), backend results.
pub fn batch_to_js(env: &Env, queues: &[Arc<QueueShared>], batch: Batch) -> napi::Result<JsBatch> {
    let raw_env = env.raw();
    let shared = queues
        .get(batch.qid as usize)
        .ok_or_else(|| napi::Error::from_reason("batch for an unknown queue"))?;
    let mut table = Vec::with_capacity(batch.ios.len() * IO_FIELDS);
    let mut buffers = ptr::null_mut();
    check(unsafe { sys::napi_create_array_with_length(raw_env, batch.ios.len(), &mut buffers) })?;
    for (i, io) in batch.ios.iter().enumerate() {
        table.extend_from_slice(&[
            io.tag as f64,
            io.seq as f64,
            io.op as f64,
            io.flags as f64,
            io.offset as f64,
            io.length as f64,
            io.failed_read.map_or(-1.0, |f| f.file as f64),
            io.failed_read.map_or(0.0, |f| f.error as f64),
        ]);
        let value = if carries_data(io.op) && io.length > 0 {
            external_buffer(raw_env, shared, io.tag, io.length as usize)?
        } else {
            null(raw_env)?
        };
        check(unsafe { sys::napi_set_element(raw_env, buffers, i as u32, value) })?;
    }
    let backend: Vec<f64> = batch
        .backend
        .iter()
        .flat_map(|(id, res)| [*id as f64, *res as f64])
        .collect();
    unsafe {
        Ok(JsBatch(
            u32::to_napi_value(raw_env, batch.qid as u32)?,
            Float64Array::to_napi_value(raw_env, Float64Array::new(table))?,
            buffers,
            Float64Array::to_napi_value(raw_env, Float64Array::new(backend))?,
        ))
    }
}

fn carries_data(op: u8) -> bool {
    op as u32 == ublk_core::libublk::sys::UBLK_IO_OP_READ
        || op as u32 == ublk_core::libublk::sys::UBLK_IO_OP_WRITE
}

fn check(status: sys::napi_status) -> napi::Result<()> {
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
    check(unsafe { sys::napi_get_null(env, &mut v) })?;
    Ok(v)
}

unsafe extern "C" fn release_queue_buffers(
    _env: sys::napi_env,
    _data: *mut std::ffi::c_void,
    hint: *mut std::ffi::c_void,
) {
    drop(Box::from_raw(hint.cast::<Arc<QueueShared>>()));
}

/// An ArrayBuffer over the first `len` bytes of `tag`'s buffer.
fn external_buffer(
    env: sys::napi_env,
    shared: &Arc<QueueShared>,
    tag: u16,
    len: usize,
) -> napi::Result<sys::napi_value> {
    let (data, cap) = shared
        .buffer(tag)
        .ok_or_else(|| napi::Error::from_reason("IO tag outside the queue"))?;
    let hint = Box::into_raw(Box::new(shared.clone()));
    let mut value = ptr::null_mut();
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env,
            data.cast(),
            len.min(cap),
            Some(release_queue_buffers),
            hint.cast(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        drop(unsafe { Box::from_raw(hint) });
        check(status)?;
    }
    Ok(value)
}

unsafe extern "C" fn release_staging(
    _env: sys::napi_env,
    _data: *mut std::ffi::c_void,
    hint: *mut std::ffi::c_void,
) {
    drop(Box::from_raw(hint.cast::<Arc<StagingBuffer>>()));
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
    let hint = Box::into_raw(Box::new(buffer));
    let mut value = ptr::null_mut();
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env.raw(),
            data.cast(),
            len,
            Some(release_staging),
            hint.cast(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        drop(unsafe { Box::from_raw(hint) });
        check(status)?;
    }
    Ok(RawValue(value))
}

/// Detaches each ArrayBuffer in the JS array `list` (nulls are skipped).
pub fn detach_all(env: &Env, list: sys::napi_value) -> napi::Result<()> {
    let env = env.raw();
    let mut len = 0u32;
    check(unsafe { sys::napi_get_array_length(env, list, &mut len) })?;
    for i in 0..len {
        let mut item = ptr::null_mut();
        check(unsafe { sys::napi_get_element(env, list, i, &mut item) })?;
        let mut is_ab = false;
        check(unsafe { sys::napi_is_arraybuffer(env, item, &mut is_ab) })?;
        if is_ab {
            // Buffers not made by this addon are not detachable; that is
            // the caller's business and harmless here.
            unsafe { sys::napi_detach_arraybuffer(env, item) };
        }
    }
    Ok(())
}

/// Decodes `[tag, seq, result]*`.
pub fn decode_results(values: &[f64]) -> napi::Result<Vec<IoResult>> {
    if values.len() % RESULT_FIELDS != 0 {
        return Err(to_napi(ublk_core::Error::invalid(
            "results must hold [tag, seq, result] triples",
        )));
    }
    values
        .chunks_exact(RESULT_FIELDS)
        .map(|r| {
            let result = r[2];
            if !result.is_finite() || result.fract() != 0.0 || result.abs() > i32::MAX as f64 {
                return Err(ublk_core::Error::invalid(format!(
                    "an IO result must be an integer, got {result}"
                )));
            }
            Ok(IoResult {
                tag: u16_arg("tag", r[0])?,
                seq: u32_arg("seq", r[1])?,
                result: result as i32,
            })
        })
        .collect::<ublk_core::Result<_>>()
        .map_err(to_napi)
}

/// Decodes `[id, kind, mode, file, tag, bufOffset, length, fileOffset]*`.
pub fn decode_requests(values: &[f64]) -> napi::Result<Vec<BackendRequest>> {
    if values.len() % REQUEST_FIELDS != 0 {
        return Err(to_napi(ublk_core::Error::invalid(
            "backend requests must hold 9 numbers each",
        )));
    }
    values
        .chunks_exact(REQUEST_FIELDS)
        .map(|r| {
            let raw_kind = u32_arg("kind", r[1])?;
            let completes_io = raw_kind & COMPLETES_IO != 0;
            let staging = raw_kind & STAGING != 0;
            let kind = match raw_kind & !KIND_FLAGS {
                0 => BackendKind::Read,
                1 => BackendKind::Write,
                2 => BackendKind::Fsync,
                3 => BackendKind::Fdatasync,
                4 => BackendKind::Fallocate(u32_arg("mode", r[2])? as i32),
                5 => BackendKind::Sleep,
                k => return Err(ublk_core::Error::invalid(format!("unknown backend op {k}"))),
            };
            Ok(BackendRequest {
                id: u32_arg("id", r[0])?,
                kind,
                file: u32_arg("file", r[3])?,
                tag: if staging { 0 } else { u16_arg("tag", r[4])? },
                seq: u32_arg("seq", r[5])?,
                buf_offset: u32_arg("bufOffset", r[6])?,
                length: u32_arg("length", r[7])?,
                file_offset: integer("fileOffset", r[8], i64::MAX as u64)?,
                completes_io,
                report_failure: completes_io && raw_kind & REPORT_FAILURE != 0,
                staging: if staging {
                    Some(u32_arg("staging buffer", r[4])?)
                } else {
                    None
                },
                rw_flags: match kind {
                    BackendKind::Read | BackendKind::Write => u32_arg("mode", r[2])? as i32,
                    _ => 0,
                },
            })
        })
        .collect::<ublk_core::Result<_>>()
        .map_err(to_napi)
}

/// Keeps what a bridged device needs after start.
pub struct Bridged {
    pub target: Arc<BridgeTarget>,
    pub sink: Arc<JsSink>,
}

impl Bridged {
    /// Fails what JS holds and releases the JS handler.
    pub fn shut(&self) {
        self.target.cancel_all();
    }

    pub fn release(&self) {
        self.sink.close();
        self.target.close_files();
        self.target.staging().free_all();
    }
}
