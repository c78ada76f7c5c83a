//! Node.js bindings over `ublk-core`: argument checks and conversions only.
//! Errors reach JavaScript as `"<ERRNO>: <message>"`, which the TypeScript
//! layer turns into errors with an errno-style `code`.

mod args;
mod control;
mod device;
mod errors;
mod info;
