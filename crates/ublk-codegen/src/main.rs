//! Writes the TypeScript modules generated from the Rust core, so the two
//! sides of the JavaScript bridge share one definition of what crosses it.
//!
//! ```text
//! cargo run -p ublk-codegen -- <repository root>
//! ```

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let path = root.join("lib/wire.ts");
    if let Err(e) = std::fs::write(&path, ublk_core::bridge::wire::typescript()) {
        eprintln!("ublk-codegen: write {}: {e}", path.display());
        std::process::exit(1);
    }
}
