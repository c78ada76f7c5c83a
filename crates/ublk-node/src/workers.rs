//! Queues served from worker threads: the thread that created a bridge
//! shares it under a token, and a `worker_threads` worker of the same
//! process attaches to one of its queues with a batch handler of its own.
//! The worker's bridge posts answers for that queue only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use napi::bindgen_prelude::Function;
use napi_derive::napi;
use ublk_core::bridge::{BatchSink, BridgeTarget};
use ublk_core::js_numbers::u32_arg;

use crate::bridge::{batch_function, NativeBridge};
use crate::errors::to_napi;
use crate::handover::{Inbound, JsBatch, JsSink};

struct Shared {
    target: Weak<BridgeTarget>,
    opts: ublk_core::DeviceOptions,
}

/// Shared bridges by token. Weak: a token outlives nothing it names.
static SHARED: Mutex<Option<(u32, HashMap<u32, Shared>)>> = Mutex::new(None);

pub(crate) fn share(target: &Arc<BridgeTarget>, opts: &ublk_core::DeviceOptions) -> u32 {
    let mut shared = SHARED.lock().unwrap();
    let (next, table) = shared.get_or_insert_with(|| (1, HashMap::new()));
    table.retain(|_, s| s.target.strong_count() > 0);
    if let Some((token, _)) = table
        .iter()
        .find(|(_, s)| std::ptr::addr_eq(s.target.as_ptr(), Arc::as_ptr(target)))
    {
        return *token;
    }
    let token = *next;
    *next = next.wrapping_add(1).max(1);
    table.insert(
        token,
        Shared {
            target: Arc::downgrade(target),
            opts: opts.clone(),
        },
    );
    token
}

/// Serves queue `queue` of the bridge that `token` (from `share()`)
/// names with `onBatch`, called on this thread; returns this thread's
/// bridge for the queue, with every method but starting the device.
/// Attach before the device starts. ENOENT for an unknown token, EBUSY
/// for a queue that has its handler already.
#[napi(
    ts_args_type = "token: number, queue: number, onBatch: (queue: number, ios: number, backend: number, events: number, buffers: Array<ArrayBuffer | null> | null, table: Float64Array | null) => void"
)]
pub fn attach_bridge_queue(
    token: f64,
    queue: f64,
    on_batch: Function<'_, JsBatch, ()>,
) -> napi::Result<NativeBridge> {
    let token = u32_arg("token", token).map_err(to_napi)?;
    let qid = u32_arg("queue", queue).map_err(to_napi)?;
    let (target, opts) = {
        let shared = SHARED.lock().unwrap();
        let found = shared
            .as_ref()
            .and_then(|(_, table)| table.get(&token))
            .and_then(|s| Some((s.target.upgrade()?, s.opts.clone())));
        found.ok_or_else(|| {
            to_napi(ublk_core::Error::new(
                libc::ENOENT,
                format!("no shared bridge {token} in this process"),
            ))
        })?
    };
    let qid = u16::try_from(qid)
        .ok()
        .filter(|q| *q < opts.queues)
        .ok_or_else(|| {
            to_napi(ublk_core::Error::invalid(format!(
                "the device has {} queues, there is no queue {qid}",
                opts.queues
            )))
        })?;
    let queues = Arc::new(OnceLock::new());
    let _ = queues.set(target.queues().to_vec());
    let zero_copy = ublk_core::Target::capabilities(&*target).zero_copy;
    let inbound = Arc::new(Inbound::new(zero_copy));
    let func = batch_function(on_batch, queues, inbound.clone())?;
    let sink: Arc<dyn BatchSink> = Arc::new(JsSink::new(func, inbound.clone()));
    target.attach_queue_sink(qid, sink).map_err(to_napi)?;
    Ok(NativeBridge::for_queue(target, opts, qid, inbound))
}
