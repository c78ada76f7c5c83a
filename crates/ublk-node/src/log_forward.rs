//! The core's warnings and errors, forwarded to JavaScript: what a queue
//! thread logs (a queue that ended with an error, backend operations that
//! never finished) would otherwise be lost. The TypeScript layer turns each
//! record into a process warning naming the device and queue.

use std::sync::{Arc, Mutex, Once};

use napi::bindgen_prelude::{FnArgs, Function};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

/// One record: level, device id, queue id (-1 where unknown), message.
type Args = FnArgs<(String, i32, i32, String)>;

/// Weak: a log handler never keeps the process alive.
type LogFn = ThreadsafeFunction<Args, (), Args, Status, false, true, 0>;

static HANDLER: Mutex<Option<Arc<LogFn>>> = Mutex::new(None);
static INSTALL: Once = Once::new();

struct Forward;

static FORWARD: Forward = Forward;

impl log::Log for Forward {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let handler = HANDLER.lock().unwrap().clone();
        let Some(handler) = handler else {
            return;
        };
        let (device, queue) = std::thread::current()
            .name()
            .and_then(ublk_core::queue_of_thread)
            .map_or((-1, -1), |(device, queue)| (device as i32, queue as i32));
        let args = (
            record.level().as_str().to_lowercase(),
            device,
            queue,
            record.args().to_string(),
        );
        let _ = handler.call(args.into(), ThreadsafeFunctionCallMode::NonBlocking);
    }

    fn flush(&self) {}
}

/// Sends the core's warnings and errors to `handler` from now on.
#[napi(
    ts_args_type = "handler: (level: string, device: number, queue: number, message: string) => void"
)]
pub fn set_log_handler(handler: Function<'_, Args, ()>) -> napi::Result<()> {
    let tsfn: LogFn = handler
        .build_threadsafe_function::<Args>()
        .weak::<true>()
        .build_callback(|ctx| Ok(ctx.value))?;
    *HANDLER.lock().unwrap() = Some(Arc::new(tsfn));
    INSTALL.call_once(|| {
        if log::set_logger(&FORWARD).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    });
    Ok(())
}
