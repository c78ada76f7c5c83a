//! Targets implemented in Rust: the yardsticks for targets written in
//! TypeScript, and ready to use from Rust alone.

mod loop_file;
mod null;

pub use loop_file::LoopTarget;
pub use null::NullTarget;

use std::sync::Arc;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::options::DeviceOptions;
use crate::recovery::RecoveryClaim;
use crate::runtime::Target;

/// Creates a device served by a target this crate ships, by kind name;
/// `backing` is the file or block device of a `loop` target.
pub fn create_builtin(opts: &DeviceOptions, kind: &str, backing: Option<&str>) -> Result<Device> {
    serve_builtin(opts, kind, backing, Start::Add)
}

/// Recovers device `opts.id` with a target this crate ships
/// ([`Device::recover`]), under `claim` if the caller holds one.
pub fn recover_builtin(
    claim: Option<RecoveryClaim>,
    opts: &DeviceOptions,
    kind: &str,
    backing: Option<&str>,
) -> Result<Device> {
    serve_builtin(opts, kind, backing, Start::Recover(claim))
}

/// How a device gets its target: added, or recovered.
enum Start {
    Add,
    Recover(Option<RecoveryClaim>),
}

impl Start {
    fn start<T: Target>(self, opts: &DeviceOptions, target: T) -> Result<Device> {
        match self {
            Start::Add => Device::create(opts, target),
            Start::Recover(None) => Device::recover(opts, target),
            Start::Recover(Some(claim)) => Device::recover_claimed(claim, opts, Arc::new(target)),
        }
    }
}

fn serve_builtin(
    opts: &DeviceOptions,
    kind: &str,
    backing: Option<&str>,
    start: Start,
) -> Result<Device> {
    match (kind, backing) {
        ("null", _) => start.start(opts, NullTarget),
        ("loop", Some(path)) => start.start(opts, LoopTarget::open(path, true)?),
        ("loop", None) => Err(Error::invalid("the loop target needs a backing file path")),
        (other, _) => Err(Error::invalid(format!(
            "unknown target {other:?}; built-in targets: null, loop"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_targets_and_missing_files_are_refused_before_the_kernel() {
        let opts = DeviceOptions {
            size: 1 << 20,
            ..Default::default()
        };
        let err = create_builtin(&opts, "raid7", None).err().unwrap();
        assert_eq!(err.code(), "EINVAL");
        assert!(err.message().contains("raid7"));
        assert_eq!(
            create_builtin(&opts, "loop", None).err().unwrap().code(),
            "EINVAL"
        );
        let missing = create_builtin(&opts, "loop", Some("/nonexistent/disk.img"));
        assert_eq!(missing.err().unwrap().code(), "ENOENT");
    }
}
