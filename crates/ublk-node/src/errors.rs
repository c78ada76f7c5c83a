//! Core errors to JavaScript errors. napi-rs async tasks reject with its own
//! status codes only, so the errno travels as a message prefix that the
//! TypeScript layer parses into `code` and `errno`.

pub fn to_napi(err: ublk_core::Error) -> napi::Error {
    napi::Error::new(
        napi::Status::GenericFailure,
        format!("{}: {}", err.code(), err.message()),
    )
}

pub fn invalid(message: impl Into<String>) -> napi::Error {
    to_napi(ublk_core::Error::invalid(message))
}
