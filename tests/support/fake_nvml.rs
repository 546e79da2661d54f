//! The fake NVML library of the tests (`tests/fake-nvml/fake_nvml.c`): built here with the C
//! compiler (`cc`) into a `libnvidia-ml.so.1` that answers from a scenario file (see the C
//! file's header for its lines). Shared by `tests/nvml.rs` (a daemon process that finds it
//! through `LD_LIBRARY_PATH`) and the feature suite (in-process daemons that load a copy each
//! through `[gpu] nvml_library`).
//!
//! Building needs a C compiler: without one, [`build_library`] fails under `CI=true` (CI must
//! run what depends on it) and answers `None` with the reason printed elsewhere.

use std::path::{Path, PathBuf};

/// The fake library built into `dir/lib/libnvidia-ml.so.1` (its path), or `None` (with the
/// reason printed) where no C compiler runs, which `CI=true` refuses.
pub fn build_library(dir: &Path) -> Option<PathBuf> {
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let library = lib.join("libnvidia-ml.so.1");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake-nvml/fake_nvml.c");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(source)
        .output();
    match built {
        Ok(out) if out.status.success() => Some(library),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot build the fake NVML library with cc: {why} (CI=true: it must run)"
            );
            eprintln!("skipped: cannot build the fake NVML library with cc: {why}");
            None
        }
    }
}
