//! Core errors to JavaScript errors. napi-rs async tasks reject with its own
//! status codes only, so the errno travels as a message prefix that the
//! TypeScript layer parses into `code` and `errno`.

pub fn to_napi(err: ublk_core::Error) -> napi::Error {
    napi::Error::new(
        napi::Status::GenericFailure,
        format!("{}: {}", err.code(), err.message()),
    )
}

/// Runs a task body so that a Rust panic rejects the promise with EIO
/// instead of aborting the whole Node process.
pub fn guard<T>(what: &str, body: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(to_napi(ublk_core::Error::new(
            libc::EIO,
            format!("internal error in {what}: {detail}"),
        )))
    })
}
