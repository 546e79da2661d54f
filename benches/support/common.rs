//! Helpers shared by the benchmark binaries (each includes this file with `#[path]`; a
//! benchmark uses some of them). Owns nothing of the daemon's: only where the benchmarks put
//! their data and how they find a free port.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<package>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A TCP port on 127.0.0.1 free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
