//! Integers that arrive as doubles, as every JavaScript number does: each is
//! checked here, so 1.5, -1, NaN or 2**64 become EINVAL instead of being
//! truncated or wrapped into something the kernel would act on.

use crate::error::{Error, Result};

fn invalid(message: String) -> Error {
    Error::invalid(message)
}

/// Largest integer a double holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

pub fn integer(name: &str, value: f64, max: u64) -> Result<u64> {
    let limit = (max as f64).min(MAX_SAFE_INTEGER);
    if !value.is_finite() || value.fract() != 0.0 || value < 0.0 || value > limit {
        return Err(invalid(format!(
            "{name} must be an integer between 0 and {}, got {value}",
            limit as u64
        )));
    }
    Ok(value as u64)
}

pub fn u16_arg(name: &str, value: f64) -> Result<u16> {
    integer(name, value, u16::MAX as u64).map(|v| v as u16)
}

pub fn u32_arg(name: &str, value: f64) -> Result<u32> {
    integer(name, value, u32::MAX as u64).map(|v| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_an_exact_integer() {
        for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY, 70000.0] {
            assert!(u16_arg("depth", bad).is_err(), "{bad}");
        }
        assert_eq!(u16_arg("depth", 64.0).unwrap(), 64);
        assert!(integer("size", 2f64.powi(60), u64::MAX).is_err());
        assert_eq!(integer("size", 1073741824.0, u64::MAX).unwrap(), 1 << 30);
        let err = u32_arg("id", -3.0).unwrap_err();
        assert_eq!(err.code(), "EINVAL");
        assert!(err.message().starts_with("id must be an integer"), "{err}");
    }
}
