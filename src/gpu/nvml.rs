//! The NVML inventory: real NVIDIA GPUs through `nvml-wrapper`.
//!
//! `nvml-wrapper` loads `libnvidia-ml.so.1` when NVML is first initialised, at run time: the
//! daemon builds, starts and runs its tests on machines with no NVIDIA software at all, where
//! this inventory reads as "no GPU" with the reason.
//!
//! A reading: per GPU its index, UUID, name, CUDA compute capability (`"9.0"`), total and free
//! VRAM and running compute processes with their GPU memory; where MIG mode is on, its MIG
//! devices (UUID, VRAM, processes). Faults: per GPU an NVML event set registered for the
//! critical Xid and double-bit ECC events the device supports (polled without waiting at
//! each reading; a double-bit ECC error is reported as Xid 48), and a GPU that NVML reports
//! lost (fallen off the bus) is a driver reset, once until it is seen again. Faults seen while
//! no GPU can be read (every GPU lost) are reported with the next reading that has a GPU.
//!
//! The library is the dynamic loader's `libnvidia-ml.so.1` (the driver's, found through
//! `ld.so.conf` or `LD_LIBRARY_PATH`), or the file `[gpu] nvml_library` names (a driver
//! installed outside the loader's path, a container that mounts it elsewhere; the feature
//! suite points each scenario at its own copy of a fake library). NVML is initialised once
//! per process and library, on the first reading that succeeds (and retried at each reading
//! until then, so a driver loaded after the daemon started is found).
//!
//! Owns: every call into NVML.
//! Never: panics on an NVML error, or runs on an async thread (every call blocks).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{Device, EventSet, Nvml};
use pool_core::{GpuInfo, MigDeviceInfo};

use super::{Gpu, GpuEvent, GpuInventory, GpuProcess, GpuReading, GpuSnapshot, MigDevice, NoGpu};

/// The library `nvml-wrapper` loads.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";
/// At most this many GPUs are read (the core keeps no more: `pool_core::evolve::GPUS_MAX`).
const GPUS_MAX: u32 = pool_core::evolve::GPUS_MAX as u32;
/// The most MIG devices read per GPU.
const MIG_DEVICES_MAX: u32 = 16;
/// The most fault events taken from one GPU's event set per reading.
const EVENTS_PER_GPU_MAX: usize = 64;
/// Faults kept for a later reading while no GPU can be read, at most (the oldest are kept).
const UNREPORTED_MAX: usize = 4096;
/// Xid NVIDIA documents for a double-bit ECC error.
const XID_DOUBLE_BIT_ECC: u32 = 48;
/// `nvmlDeviceGetMigMode`'s "enabled".
const MIG_ENABLED: u32 = 1;

/// NVML, initialised once per process and library (`None`: the loader's
/// [`NVML_LIBRARY`]), and kept (never shut down: the daemon reads it until it exits).
type Loaded = Vec<(Option<PathBuf>, &'static Nvml)>;
static NVML: Mutex<Loaded> = Mutex::new(Vec::new());

fn nvml(library: Option<&Path>) -> Result<&'static Nvml, NvmlError> {
    let mut loaded = match NVML.lock() {
        Ok(loaded) => loaded,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((_, nvml)) = loaded.iter().find(|(path, _)| path.as_deref() == library) {
        return Ok(nvml);
    }
    let mut builder = Nvml::builder();
    if let Some(path) = library {
        builder.lib_path(path.as_os_str());
    }
    let nvml: &'static Nvml = Box::leak(Box::new(builder.init()?));
    loaded.push((library.map(Path::to_path_buf), nvml));
    Ok(nvml)
}

/// Why NVML could not start from `library` (`None`: the loader's), with what to do.
fn init_reason(error: &NvmlError, library: Option<&Path>) -> String {
    let name = library.map_or_else(|| NVML_LIBRARY.to_string(), |p| p.display().to_string());
    let (what, todo) = match (error, library) {
        (NvmlError::LibloadingError(e), None) => (
            format!(
                "the NVIDIA management library {name} cannot be loaded ({e}), so no NVIDIA \
                 driver is installed"
            ),
            "install the NVIDIA driver".to_string(),
        ),
        (NvmlError::LibloadingError(e), Some(_)) => (
            format!(
                "the NVIDIA management library {name} ([gpu] nvml_library) cannot be loaded ({e})"
            ),
            format!(
                "give [gpu] nvml_library the path of the driver's {NVML_LIBRARY}, or \"\" for \
                 the one the dynamic loader finds"
            ),
        ),
        (NvmlError::FailedToLoadSymbol(e), _) => (
            format!("the NVIDIA management library {name} is too old or damaged ({e})"),
            "update the NVIDIA driver".to_string(),
        ),
        (NvmlError::DriverNotLoaded, _) => (
            "the NVIDIA kernel driver is not loaded (NVML: driver not loaded)".to_string(),
            "load it (nvidia-smi should list the GPUs)".to_string(),
        ),
        (NvmlError::NoPermission, _) => (
            "NVML may not talk to the NVIDIA driver (no permission)".to_string(),
            "run the daemon as a user with access to /dev/nvidia*".to_string(),
        ),
        (NvmlError::LibRmVersionMismatch, _) => (
            "the NVIDIA management library and the kernel driver have different versions"
                .to_string(),
            "reboot or reload the driver".to_string(),
        ),
        (other, _) => (
            format!("NVML cannot start from {name} ({other})"),
            "check nvidia-smi".to_string(),
        ),
    };
    format!("{what}; {todo}, or run with --dev (require_gpu = false) for CPU-only engines")
}

#[derive(Default)]
struct Memory {
    /// Event sets, per GPU UUID (one set per GPU, so that one GPU's failure to register
    /// leaves the others' sets alone). Created once, after the first successful start.
    sets: Vec<(String, EventSet<'static>)>,
    sets_made: bool,
    /// GPU UUIDs by index, from earlier readings (to name a GPU that is lost).
    uuids: HashMap<u32, String>,
    /// GPUs reported lost and not seen since.
    lost: BTreeSet<String>,
    /// The last problem logged (each distinct problem is logged once).
    last_problem: Option<String>,
    /// Faults seen by a reading that found no readable GPU (a reading without GPUs carries
    /// none): reported with the next reading that has GPUs.
    unreported: Vec<GpuEvent>,
}

/// Real GPUs through NVML (see the module doc).
pub struct NvmlInventory {
    /// The library to load; `None`: the dynamic loader's [`NVML_LIBRARY`].
    library: Option<PathBuf>,
    memory: Mutex<Memory>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlInventory")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl Default for NvmlInventory {
    fn default() -> Self {
        NvmlInventory::new()
    }
}

impl NvmlInventory {
    /// An NVML inventory of the dynamic loader's `NVML_LIBRARY`; NVML is loaded at the
    /// first reading, not now.
    pub fn new() -> NvmlInventory {
        NvmlInventory {
            library: None,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// An NVML inventory of the library file at `path` (`[gpu] nvml_library`); loaded at
    /// the first reading, not now.
    pub fn with_library(path: &Path) -> NvmlInventory {
        NvmlInventory {
            library: Some(path.to_path_buf()),
            memory: Mutex::new(Memory::default()),
        }
    }
}

fn processes(list: Result<Vec<ProcessInfo>, NvmlError>) -> Vec<GpuProcess> {
    // NotSupported (and any other failure) reads as "none seen": the GPU itself is usable.
    let mut out: Vec<GpuProcess> = list
        .unwrap_or_default()
        .into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes,
                UsedGpuMemory::Unavailable => 0,
            },
            pool_id: None,
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

fn mig_devices(device: &Device<'_>, parent_index: u32) -> Vec<MigDevice> {
    let enabled = device
        .mig_mode()
        .map(|mode| mode.current == MIG_ENABLED)
        .unwrap_or(false);
    if !enabled {
        return Vec::new();
    }
    let count = device.mig_device_count().unwrap_or(0).min(MIG_DEVICES_MAX);
    let mut out = Vec::new();
    for i in 0..count {
        // Slots without a MIG device answer NotFound.
        let Ok(mig) = device.mig_device_by_index(i) else {
            continue;
        };
        let (Ok(uuid), Ok(memory)) = (mig.uuid(), mig.memory_info()) else {
            continue;
        };
        out.push(MigDevice {
            info: MigDeviceInfo {
                uuid,
                parent_index,
                name: mig.name().unwrap_or_else(|_| "MIG device".to_string()),
                vram_total_bytes: memory.total,
                vram_free_bytes: memory.free,
            },
            processes: processes(mig.running_compute_processes()),
        });
    }
    out
}

fn read_device(device: &Device<'_>, index: u32) -> Result<Gpu, NvmlError> {
    let uuid = device.uuid()?;
    let memory = device.memory_info()?;
    let name = device.name().unwrap_or_else(|_| "unknown".to_string());
    let compute_capability = device
        .cuda_compute_capability()
        .map(|c| format!("{}.{}", c.major, c.minor))
        .unwrap_or_else(|_| "unknown".to_string());
    let index = device.index().unwrap_or(index);
    Ok(Gpu {
        info: GpuInfo {
            index,
            uuid,
            name,
            compute_capability,
            vram_total_bytes: memory.total,
            vram_free_bytes: memory.free,
        },
        mig_devices: mig_devices(device, index),
        processes: processes(device.running_compute_processes()),
    })
}

impl Memory {
    fn problem(&mut self, problem: String) {
        if self.last_problem.as_ref() != Some(&problem) {
            tracing::warn!("{problem}");
            self.last_problem = Some(problem);
        }
    }

    fn make_sets(&mut self, nvml: &'static Nvml, count: u32) {
        self.sets_made = true;
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let Ok(uuid) = device.uuid() else { continue };
            let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
            let supported = device
                .supported_event_types()
                .unwrap_or(EventTypes::empty());
            let events = wanted & supported;
            if events.is_empty() {
                tracing::info!(gpu = %uuid, "NVML offers no Xid or ECC events for this GPU");
                continue;
            }
            let registered = nvml
                .create_event_set()
                .map_err(|e| e.to_string())
                .and_then(|set| {
                    device
                        .register_events(events, set)
                        .map_err(|e| e.to_string())
                });
            match registered {
                Ok(set) => self.sets.push((uuid, set)),
                Err(e) => tracing::warn!(
                    gpu = %uuid,
                    "cannot register for NVML Xid/ECC events ({e}); Xids of this GPU go unseen"
                ),
            }
        }
    }

    fn drain_events(&mut self, out: &mut Vec<GpuEvent>) {
        for (uuid, set) in &self.sets {
            for _ in 0..EVENTS_PER_GPU_MAX {
                match set.wait(0) {
                    Ok(data) => {
                        if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                            let xid = match data.event_data {
                                Some(XidError::Value(v)) => u32::try_from(v).unwrap_or(u32::MAX),
                                _ => 0,
                            };
                            out.push(GpuEvent::Xid {
                                gpu_uuid: uuid.clone(),
                                xid,
                            });
                        }
                        if data.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                            out.push(GpuEvent::Xid {
                                gpu_uuid: uuid.clone(),
                                xid: XID_DOUBLE_BIT_ECC,
                            });
                        }
                    }
                    Err(NvmlError::Timeout) => break,
                    Err(NvmlError::GpuLost) => {
                        if self.lost.insert(uuid.clone()) {
                            out.push(GpuEvent::DriverReset {
                                gpu_uuid: uuid.clone(),
                            });
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(gpu = %uuid, "NVML event wait: {e}");
                        break;
                    }
                }
            }
        }
    }
}

impl GpuInventory for NvmlInventory {
    fn source(&self) -> String {
        match &self.library {
            Some(path) => format!("NVML ({})", path.display()),
            None => format!("NVML ({NVML_LIBRARY})"),
        }
    }

    fn observe(&self) -> GpuReading {
        let library = self.library.as_deref();
        let nvml = nvml(library).map_err(|e| NoGpu::new(init_reason(&e, library)))?;
        let mut memory = match self.memory.lock() {
            Ok(memory) => memory,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = match nvml.device_count() {
            Ok(0) => {
                return Err(NoGpu::new(
                    "NVML lists no GPU (the NVIDIA driver is loaded but reports no device); \
                     check nvidia-smi, or run with --dev (require_gpu = false) for CPU-only \
                     engines",
                ))
            }
            Ok(count) => count.min(GPUS_MAX),
            Err(e) => {
                return Err(NoGpu::new(format!(
                    "NVML cannot count the GPUs ({e}); check nvidia-smi, or run with --dev \
                     (require_gpu = false) for CPU-only engines"
                )))
            }
        };
        if !memory.sets_made {
            memory.make_sets(nvml, count);
        }
        let mut gpus = Vec::with_capacity(count as usize);
        let mut events = std::mem::take(&mut memory.unreported);
        let mut last_error = None;
        for index in 0..count {
            let read = nvml
                .device_by_index(index)
                .and_then(|device| read_device(&device, index));
            match read {
                Ok(gpu) => {
                    memory.lost.remove(&gpu.info.uuid);
                    memory.uuids.insert(index, gpu.info.uuid.clone());
                    gpus.push(gpu);
                }
                Err(NvmlError::GpuLost) => {
                    if let Some(uuid) = memory.uuids.get(&index).cloned() {
                        if memory.lost.insert(uuid.clone()) {
                            events.push(GpuEvent::DriverReset { gpu_uuid: uuid });
                        }
                    }
                    last_error = Some(format!("GPU {index} is lost (fallen off the bus)"));
                }
                Err(e) => {
                    memory.problem(format!("NVML cannot read GPU {index}: {e}"));
                    last_error = Some(format!("GPU {index}: {e}"));
                }
            }
        }
        memory.drain_events(&mut events);
        gpus.sort_by_key(|g| g.info.index);
        if gpus.is_empty() {
            events.truncate(UNREPORTED_MAX);
            memory.unreported = events;
            return Err(NoGpu::new(format!(
                "NVML lists {count} GPU(s) but none can be read ({}); check nvidia-smi, or run \
                 with --dev (require_gpu = false) for CPU-only engines",
                last_error.unwrap_or_default()
            )));
        }
        Ok(GpuSnapshot { gpus, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reasons_say_what_is_missing_and_dev() {
        let reason = init_reason(&NvmlError::DriverNotLoaded, None);
        assert!(reason.contains("kernel driver"), "{reason}");
        assert!(reason.contains("--dev"), "{reason}");
        let reason = init_reason(&NvmlError::FailedToLoadSymbol("nvmlInit_v2".into()), None);
        assert!(reason.contains(NVML_LIBRARY), "{reason}");
    }

    /// A configured library that cannot be loaded is named, with the key that set it.
    #[test]
    fn a_configured_library_that_cannot_be_loaded_is_named() {
        let path = Path::new("/nonexistent/lib/libnvidia-ml.so.1");
        let inventory = NvmlInventory::with_library(path);
        assert_eq!(inventory.source(), format!("NVML ({})", path.display()));
        let reason = inventory.observe().unwrap_err().reason;
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(reason.contains("[gpu] nvml_library"), "{reason}");
        assert!(reason.contains("--dev"), "{reason}");
    }

    /// On a machine without NVIDIA software (CI) the reading is "no GPU" naming the library;
    /// on a GPU machine it lists the GPUs. Either way it never panics.
    #[test]
    fn a_reading_never_panics() {
        let inventory = NvmlInventory::new();
        match inventory.observe() {
            Ok(snapshot) => {
                assert!(!snapshot.gpus.is_empty());
                for gpu in &snapshot.gpus {
                    assert!(!gpu.info.uuid.is_empty());
                    assert!(gpu.info.vram_free_bytes <= gpu.info.vram_total_bytes);
                }
            }
            Err(no_gpu) => assert!(no_gpu.reason.contains("--dev"), "{}", no_gpu.reason),
        }
        // A second reading too (NVML kept, or retried).
        let _ = inventory.observe();
    }
}
