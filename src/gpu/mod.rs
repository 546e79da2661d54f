//! The node's GPUs as the shell sees them (SPEC section 10): an inventory behind a trait, the
//! start-up preflight verdict, and the observation loop that turns what NVML (or a fixture)
//! shows into observations for the core.
//!
//! Owns:
//! - [`GpuInventory`], the one way to look at GPUs, and its three implementations:
//!   [`NvmlInventory`] (real GPUs through `nvml-wrapper`, which loads `libnvidia-ml` at run
//!   time, so nothing NVIDIA is needed to build or test; `[gpu] nvml_library` names the file), [`NoGpu`] (a clear state with its
//!   reason) and [`FixtureInventory`] (a JSON file, a testing aid for machines without a GPU).
//!   [`open_inventory`] picks one: the fixture if configured, else NVML, else "no GPU".
//! - [`GpuMonitor`], the live view of the last reading, read by `GET /v2/gpus` and the `gpu`
//!   field of `/health` (readers never wait on NVML).
//! - The loop (`crate::watch::gpu`, with the other input sources) takes a reading every `[gpu] poll_interval_ms` on a blocking
//!   thread and submits `GpuInventory` / `PreflightFailed`, `VramObserved`,
//!   `DeviceMaskViolation`, `GpuXid` and `DriverReset` observations to the node.
//! - [`placement`]: the proof, with `require_gpu`, that a starting engine is on the GPUs of
//!   its mask before it is ready (OC-POOL-3012, `CPU_SPILLOVER`), and the one shared reader of
//!   the inventory that the loop and the proofs use.
//! - [`release`]: whether a pool's last engine's GPU memory is free again, the verdict a
//!   restart or reload on those GPUs waits on (`[gpu] release_timeout_ms`).
//!
//! Never:
//! - decides: what an observation means (a crash of the pools on a GPU with an Xid, a refused
//!   preload) is the core's business; this module only reports what it saw.
//! - blocks the node actor or an async worker on NVML: readings run on a blocking thread, one
//!   at a time.
//! - panics or fails start-up: a missing library, a missing driver, zero devices or a bad
//!   fixture are a "no GPU" state with a reason that says what is missing and `--dev`.
//! - spawns, signals or probes a process (it reads `/proc/<pid>/stat` to map an engine's
//!   children to its pool, nothing else).

mod fixture;
mod nvml;
pub mod placement;
pub mod release;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pool_core::{GpuInfo, MigDeviceInfo};
use serde::{Deserialize, Serialize};

use crate::config::GpuSettings;
use crate::port::GpuSummary;

pub use fixture::{simulated_gpus, FixtureInventory};
pub use nvml::NvmlInventory;

/// One GPU of a reading: the core's [`GpuInfo`] (index, uuid, name, compute capability, VRAM)
/// plus its MIG devices and the compute processes running on it. The JSON shape of
/// `GET /v2/gpus` (an array of these) and of `pool-managerd gpus --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Index, uuid, name, compute capability, total and free VRAM.
    #[serde(flatten)]
    pub info: GpuInfo,
    /// MIG devices, where MIG mode is on (empty otherwise).
    #[serde(default)]
    pub mig_devices: Vec<MigDevice>,
    /// Compute processes on the GPU as a whole (NVML's running compute processes).
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// A MIG device (a slice of a GPU with MIG mode on): the core's [`MigDeviceInfo`] (uuid,
/// parent index, name, VRAM) and the compute processes on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    /// `MIG-...` UUID (usable in a device mask), parent GPU index, name, total and free VRAM.
    #[serde(flatten)]
    pub info: MigDeviceInfo,
    /// Compute processes on this slice.
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Its pid.
    pub pid: u32,
    /// GPU memory it uses (0 where NVML cannot say).
    pub used_bytes: u64,
    /// The pool whose engine it is (the engine's pid, or a process of the engine's session),
    /// as of the last observation; absent for other processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
}

/// A GPU fault seen since the previous reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuEvent {
    /// An Xid error (NVML's critical Xid event; a double-bit ECC error is reported as Xid 48).
    Xid {
        /// The GPU.
        gpu_uuid: String,
        /// The Xid.
        xid: u32,
    },
    /// The GPU was lost (NVML: fallen off the bus) or reset.
    DriverReset {
        /// The GPU.
        gpu_uuid: String,
    },
}

/// One reading with at least one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuSnapshot {
    /// The GPUs, by index.
    pub gpus: Vec<Gpu>,
    /// Faults seen since the previous reading (each reported once).
    pub events: Vec<GpuEvent>,
}

impl GpuSnapshot {
    /// The core's view of the GPUs (what `Observation::GpuInventory` carries).
    pub fn infos(&self) -> Vec<GpuInfo> {
        self.gpus.iter().map(|g| g.info.clone()).collect()
    }

    /// The core's view of the MIG devices (what `Observation::MigInventory` carries).
    pub fn mig_infos(&self) -> Vec<MigDeviceInfo> {
        self.gpus
            .iter()
            .flat_map(|g| g.mig_devices.iter().map(|m| m.info.clone()))
            .collect()
    }
}

/// No usable GPU, and why: the library or the driver is missing, NVML found no device, or
/// the fixture is missing or invalid. Also the [`GpuInventory`] that always says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoGpu {
    /// What is missing and what to do (it mentions `--dev`).
    pub reason: String,
}

impl NoGpu {
    /// A "no GPU" state (and inventory) with `reason`.
    pub fn new(reason: impl Into<String>) -> NoGpu {
        NoGpu {
            reason: reason.into(),
        }
    }
}

/// What one look at the GPUs found.
pub type GpuReading = Result<GpuSnapshot, NoGpu>;

/// A source of GPU readings. Implementations block (NVML calls, file reads): call
/// [`GpuInventory::observe`] from a blocking thread, never from the node actor or an async
/// worker. They never panic; every failure is a [`NoGpu`] with its reason.
pub trait GpuInventory: Send + Sync {
    /// What it reads, for logs and `pool-managerd gpus` ("NVML", "fixture FILE", "none").
    fn source(&self) -> String;

    /// Takes one reading. Faults (Xid, resets) are reported in the first reading after they
    /// happen, once.
    fn observe(&self) -> GpuReading;
}

impl GpuInventory for NoGpu {
    fn source(&self) -> String {
        "none".to_string()
    }

    fn observe(&self) -> GpuReading {
        Err(self.clone())
    }
}

/// The inventory of `settings`: the fixture when one is configured (`--gpu-fixture`,
/// `[gpu] fixture`), else NVML from `[gpu] nvml_library` when set, else from the dynamic
/// loader's `libnvidia-ml.so.1` (NVML itself reads as "no GPU" with the reason when the
/// library, the driver or any device is missing).
pub fn open_inventory(settings: &GpuSettings) -> Arc<dyn GpuInventory> {
    if !settings.fixture.as_os_str().is_empty() {
        Arc::new(FixtureInventory::new(&settings.fixture))
    } else if settings.nvml_library.as_os_str().is_empty() {
        Arc::new(NvmlInventory::new())
    } else {
        Arc::new(NvmlInventory::with_library(&settings.nvml_library))
    }
}

/// The `/health` verdict of a reading; `required` is `require_gpu`.
pub fn summary(reading: &GpuReading, required: bool) -> GpuSummary {
    match reading {
        Ok(snapshot) => GpuSummary {
            available: !snapshot.gpus.is_empty(),
            count: u32::try_from(snapshot.gpus.len()).unwrap_or(u32::MAX),
            reason: None,
            required,
        },
        Err(no_gpu) => GpuSummary {
            available: false,
            count: 0,
            reason: Some(no_gpu.reason.clone()),
            required,
        },
    }
}

/// The live view: the last reading's GPUs (processes with their pools) and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// Where the readings come from ([`GpuInventory::source`]).
    pub source: String,
    /// The verdict for `/health`.
    pub summary: GpuSummary,
    /// The GPUs (empty with no GPU).
    pub gpus: Vec<Gpu>,
}

/// The last reading, shared between the observation loop (writer) and the API (readers):
/// swapped whole, so readers never lock and never wait on NVML.
#[derive(Debug, Clone)]
pub struct GpuMonitor {
    view: Arc<ArcSwap<GpuView>>,
}

impl GpuMonitor {
    /// A monitor showing `view`.
    pub fn new(view: GpuView) -> GpuMonitor {
        GpuMonitor {
            view: Arc::new(ArcSwap::from_pointee(view)),
        }
    }

    /// A monitor of a reading that has not happened (no GPU, with that reason).
    pub fn unobserved(required: bool) -> GpuMonitor {
        GpuMonitor::new(GpuView {
            source: "none".to_string(),
            summary: GpuSummary {
                available: false,
                count: 0,
                reason: Some("the GPUs have not been observed yet".to_string()),
                required,
            },
            gpus: Vec::new(),
        })
    }

    /// The current view.
    pub fn load(&self) -> Arc<GpuView> {
        self.view.load_full()
    }

    pub(crate) fn store(&self, view: GpuView) {
        self.view.store(Arc::new(view));
    }
}

/// Checks a reading's GPUs: unique indexes and UUIDs (MIG devices included), no empty UUID,
/// free VRAM within total. The error names the first problem.
pub fn validate(gpus: &[Gpu]) -> Result<(), String> {
    let mut indexes = std::collections::BTreeSet::new();
    let mut uuids = std::collections::BTreeSet::new();
    for (i, gpu) in gpus.iter().enumerate() {
        let info = &gpu.info;
        if !indexes.insert(info.index) {
            return Err(format!("gpus[{i}]: index {} appears twice", info.index));
        }
        let mut check_uuid = |uuid: &str, what: &str| {
            if uuid.trim().is_empty() {
                return Err(format!("{what}: uuid is empty"));
            }
            if !uuids.insert(uuid.to_ascii_lowercase()) {
                return Err(format!("{what}: uuid {uuid} appears twice"));
            }
            Ok(())
        };
        check_uuid(&info.uuid, &format!("gpus[{i}]"))?;
        if info.vram_free_bytes > info.vram_total_bytes {
            return Err(format!(
                "gpus[{i}]: vram_free_bytes {} exceeds vram_total_bytes {}",
                info.vram_free_bytes, info.vram_total_bytes
            ));
        }
        for (j, mig) in gpu.mig_devices.iter().enumerate() {
            let mig = &mig.info;
            check_uuid(&mig.uuid, &format!("gpus[{i}].mig_devices[{j}]"))?;
            if mig.vram_free_bytes > mig.vram_total_bytes {
                return Err(format!(
                    "gpus[{i}].mig_devices[{j}]: vram_free_bytes {} exceeds vram_total_bytes {}",
                    mig.vram_free_bytes, mig.vram_total_bytes
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn gpu(index: u32, uuid: &str) -> Gpu {
        Gpu {
            info: GpuInfo {
                index,
                uuid: uuid.to_string(),
                name: "Test GPU".to_string(),
                compute_capability: "9.0".to_string(),
                vram_total_bytes: 80 << 30,
                vram_free_bytes: 79 << 30,
            },
            mig_devices: Vec::new(),
            processes: Vec::new(),
        }
    }

    #[test]
    fn no_gpu_is_a_clear_state() {
        let inventory = NoGpu::new("no NVIDIA driver; run with --dev");
        let reading = inventory.observe();
        let summary = summary(&reading, true);
        assert!(!summary.available);
        assert_eq!(summary.count, 0);
        assert!(summary.reason.unwrap().contains("--dev"));
        assert_eq!(inventory.source(), "none");
    }

    #[test]
    fn gpus_are_counted() {
        let reading = Ok(GpuSnapshot {
            gpus: vec![gpu(0, "GPU-a"), gpu(1, "GPU-b")],
            events: Vec::new(),
        });
        let summary = summary(&reading, true);
        assert!(summary.available);
        assert_eq!(summary.count, 2);
        assert_eq!(summary.reason, None);
    }

    #[test]
    fn validation_names_duplicates() {
        assert!(validate(&[gpu(0, "GPU-a"), gpu(1, "GPU-b")]).is_ok());
        let err = validate(&[gpu(0, "GPU-a"), gpu(0, "GPU-b")]).unwrap_err();
        assert!(err.contains("index 0 appears twice"), "{err}");
        let err = validate(&[gpu(0, "GPU-a"), gpu(1, "gpu-A")]).unwrap_err();
        assert!(err.contains("appears twice"), "{err}");
        let mut bad = gpu(0, "GPU-a");
        bad.info.vram_free_bytes = bad.info.vram_total_bytes + 1;
        assert!(validate(&[bad]).unwrap_err().contains("exceeds"));
    }

    #[test]
    fn the_api_shape_is_flat() {
        let mut g = gpu(0, "GPU-a");
        g.processes.push(GpuProcess {
            pid: 7,
            used_bytes: 1 << 30,
            pool_id: Some("p1".into()),
        });
        let json = serde_json::to_value(&g).unwrap();
        for key in [
            "index",
            "uuid",
            "name",
            "compute_capability",
            "vram_total_bytes",
            "vram_free_bytes",
            "mig_devices",
            "processes",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["processes"][0]["pool_id"], "p1");
        let back: Gpu = serde_json::from_value(json).unwrap();
        assert_eq!(back, g);
    }
}
