//! Targets implemented in Rust: the yardsticks for targets written in
//! TypeScript, and ready to use from Rust alone.

mod null;

pub use null::NullTarget;
