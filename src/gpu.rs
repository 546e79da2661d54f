//! GPU preflight at start-up: is there a usable NVIDIA GPU?
//!
//! This build counts the GPUs the NVIDIA kernel driver announces under
//! `/proc/driver/nvidia/gpus/` (one directory per GPU). The NVML inventory (names, VRAM,
//! UUIDs, MIG) replaces this detection when it lands; the verdict's shape ([`GpuSummary`])
//! stays.
//!
//! Owns: the "GPU or no GPU" verdict and its reason.
//! Never: fails start-up: a missing driver is a clear "no GPU" state, never a crash.

use std::path::Path;

use crate::node::GpuSummary;

/// Where the NVIDIA kernel driver lists its GPUs.
pub const NVIDIA_PROC_GPUS: &str = "/proc/driver/nvidia/gpus";

/// The preflight verdict: GPUs found under `proc_gpus`; `required` is `require_gpu`.
pub fn preflight(required: bool, proc_gpus: &Path) -> GpuSummary {
    match std::fs::read_dir(proc_gpus) {
        Ok(entries) => {
            let count = entries.filter_map(Result::ok).count();
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            GpuSummary {
                available: count > 0,
                count,
                reason: (count == 0).then(|| {
                    format!("the NVIDIA driver lists no GPU under {}", proc_gpus.display())
                }),
                required,
            }
        }
        Err(e) => GpuSummary {
            available: false,
            count: 0,
            reason: Some(format!(
                "no NVIDIA driver ({}: {e}); install the driver, or run with --dev (require_gpu = false) for CPU-only engines",
                proc_gpus.display()
            )),
            required,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_a_clear_no_gpu_state() {
        let summary = preflight(true, Path::new("/nonexistent/nvidia/gpus"));
        assert!(!summary.available);
        assert_eq!(summary.count, 0);
        assert!(summary.reason.unwrap().contains("--dev"));
    }

    #[test]
    fn gpus_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("0000:01:00.0")).unwrap();
        let summary = preflight(true, dir.path());
        assert!(summary.available);
        assert_eq!(summary.count, 1);
    }
}
