//! Helpers shared by the benchmark binaries (each includes this file with `#[path]`; a
//! benchmark uses some of them). Owns nothing of the daemon's: only where the benchmarks put
//! their data; ports and child processes come from `tests/support/process.rs`, `serve` as a
//! child from `tests/support/serve.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "../../tests/support/process.rs"]
pub mod process;
#[path = "../../tests/support/serve.rs"]
pub mod serve;
#[allow(unused_imports)] // each benchmark uses its own part
pub use process::{free_port, free_ports};

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<package>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
