//! The placement proof (OC-POOL-3012): with `require_gpu`, an engine that answered healthy
//! becomes ready only once NVML lists it among the running compute processes of a GPU (or MIG
//! device) of its mask: its own pid, or any process of its session (engines are started with
//! `setsid`, so the session id is the engine's pid; vLLM-like engines hold the GPU in a worker
//! child). The hazard it closes, seen on an H100: a CUDA build of llama-server started with a
//! mask naming no usable device logs `no CUDA-capable device is detected` and `warning: no
//! usable GPU found, --gpu-layers option will be ignored`, then serves on the CPU with
//! `/health` 200.
//!
//! Owns:
//! - [`SharedInventory`]: the node's one reader of its [`GpuInventory`], shared by the
//!   observation loop and the placement checks: one reading at a time, and the faults (Xid,
//!   resets) that a placement check's reading consumed are handed to the loop's next reading,
//!   so that none is lost.
//! - [`PlacementCheck`]: what the supervisor needs to take the proof (the inventory, the bounded
//!   wait `[gpu] placement_timeout_ms`, the poll interval [`PLACEMENT_POLL_MS`]).
//! - [`placement`]: the verdict over one reading (pure but for the session lookup it is given).
//!
//! Never: decides (the supervisor reports `Observation::EngineNotOnGpu`, the core fails the
//! start with `CPU_SPILLOVER`); reads NVML off a blocking thread.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pool_core::gpu::{mask_claims, DeviceKind, ResolvedDevice};
use pool_core::Inventory;

use super::{GpuEvent, GpuInventory, GpuReading, GpuSnapshot};

/// How often a placement check reads the inventory while it waits.
pub const PLACEMENT_POLL_MS: u64 = 250;
/// Faults of placement readings kept for the observation loop, at most (the oldest are kept).
pub const PENDING_EVENTS_MAX: usize = 4096;
/// Processes named in a "what NVML showed" description, at most.
const SHOWN_PROCESSES_MAX: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The node's inventory, read by the observation loop (through [`GpuInventory::observe`]) and
/// by placement checks (through [`SharedInventory::observe_for_placement`]), one reading at a
/// time. Blocking, like every inventory: call it from a blocking thread.
pub struct SharedInventory {
    inner: Arc<dyn GpuInventory>,
    /// Held for the length of a reading.
    reading: Mutex<()>,
    /// Faults seen by placement readings, for the loop's next reading.
    pending: Mutex<Vec<GpuEvent>>,
}

impl SharedInventory {
    /// Shares `inner`.
    pub fn new(inner: Arc<dyn GpuInventory>) -> Arc<SharedInventory> {
        Arc::new(SharedInventory {
            inner,
            reading: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// A reading for a placement check. Its faults are not in it: they are kept for the
    /// observation loop's next reading (which reports them to the core).
    pub fn observe_for_placement(&self) -> GpuReading {
        let _one = lock(&self.reading);
        let mut reading = self.inner.observe();
        if let Ok(snapshot) = &mut reading {
            let events = std::mem::take(&mut snapshot.events);
            if !events.is_empty() {
                let mut pending = lock(&self.pending);
                let room = PENDING_EVENTS_MAX.saturating_sub(pending.len());
                if events.len() > room {
                    tracing::warn!(
                        dropped = events.len() - room,
                        "too many GPU faults waiting for the observation loop; the newest are dropped"
                    );
                }
                pending.extend(events.into_iter().take(room));
            }
        }
        reading
    }
}

impl GpuInventory for SharedInventory {
    fn source(&self) -> String {
        self.inner.source()
    }

    fn observe(&self) -> GpuReading {
        let _one = lock(&self.reading);
        let reading = self.inner.observe();
        let mut pending = lock(&self.pending);
        match reading {
            Ok(mut snapshot) => {
                if !pending.is_empty() {
                    let mut events = std::mem::take(&mut *pending);
                    events.append(&mut snapshot.events);
                    snapshot.events = events;
                }
                Ok(snapshot)
            }
            // Kept for a reading that has GPUs.
            Err(no_gpu) => Err(no_gpu),
        }
    }
}

/// What the supervisor needs to prove that a starting engine is on its GPUs. Present only
/// with `require_gpu` (on a `--dev` node CPU-only engines are allowed and nothing is checked).
#[derive(Clone)]
pub struct PlacementCheck {
    /// The node's inventory.
    pub inventory: Arc<SharedInventory>,
    /// How long NVML may take to list the engine after its health passed
    /// (`[gpu] placement_timeout_ms`).
    pub timeout_ms: u64,
    /// How often it is read meanwhile ([`PLACEMENT_POLL_MS`]).
    pub poll_ms: u64,
}

impl PlacementCheck {
    /// A check over `inventory` waiting up to `timeout_ms`, polling every
    /// [`PLACEMENT_POLL_MS`].
    pub fn new(inventory: Arc<SharedInventory>, timeout_ms: u64) -> PlacementCheck {
        PlacementCheck {
            inventory,
            timeout_ms,
            poll_ms: PLACEMENT_POLL_MS,
        }
    }
}

/// The mask as written, or what no mask means, for messages.
pub fn describe_mask(mask: Option<&str>) -> String {
    match mask {
        Some(mask) => format!("device mask {mask:?}"),
        None => "no device mask (any GPU)".to_string(),
    }
}

/// Where one reading shows the engine `pid`: `Ok` with the device (a GPU or MIG device its
/// `mask` covers) it is listed on, or `Err` with what the reading showed instead (the
/// engine's processes outside the mask, or none of them, with the compute processes listed).
/// A process is the engine's when it is `pid` or `session_of` it is `pid`.
///
/// Coverage: the mask's devices ([`mask_claims`]; no mask = every GPU). A process listed on a
/// whole GPU counts when the mask claims that GPU or a MIG device of it (NVML may list a MIG
/// process on its parent); one listed on a MIG device counts when the mask claims that device
/// or its whole GPU.
pub fn placement(
    snapshot: &GpuSnapshot,
    pid: u32,
    mask: Option<&str>,
    session_of: impl Fn(u32) -> Option<u32>,
) -> Result<String, String> {
    let infos = snapshot.infos();
    let migs = snapshot.mig_infos();
    let inventory = Inventory {
        gpus: &infos,
        mig_devices: &migs,
    };
    let claims = mask_claims(mask, inventory);
    let ours = |p: u32| p == pid || session_of(p) == Some(pid);
    let claims_gpu = |index: u32| claims.iter().any(|c: &ResolvedDevice| c.gpu_index == index);
    let claims_mig = |index: u32, uuid: &str| {
        claims.iter().any(|c| {
            c.gpu_index == index && (c.kind == DeviceKind::Gpu || c.uuid.eq_ignore_ascii_case(uuid))
        })
    };
    let mut outside: Vec<String> = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    for gpu in &snapshot.gpus {
        let label = format!("GPU {} ({})", gpu.info.index, gpu.info.uuid);
        for process in &gpu.processes {
            if ours(process.pid) {
                if claims_gpu(gpu.info.index) {
                    return Ok(format!("{label}, pid {}", process.pid));
                }
                outside.push(format!("pid {} on {label}", process.pid));
            }
            listed.push(format!("pid {} on GPU {}", process.pid, gpu.info.index));
        }
        for mig in &gpu.mig_devices {
            let label = format!("MIG device {} on GPU {}", mig.info.uuid, gpu.info.index);
            for process in &mig.processes {
                if ours(process.pid) {
                    if claims_mig(gpu.info.index, &mig.info.uuid) {
                        return Ok(format!("{label}, pid {}", process.pid));
                    }
                    outside.push(format!("pid {} on {label}", process.pid));
                }
                listed.push(format!("pid {} on {label}", process.pid));
            }
        }
    }
    Err(not_placed(
        &outside,
        &listed,
        claims.is_empty(),
        mask,
        snapshot.gpus.len(),
    ))
}

/// What a reading showed instead of the engine on its mask: its processes outside the mask,
/// or the compute processes listed (at most [`SHOWN_PROCESSES_MAX`] of each), and why the mask
/// claims nothing when it does not.
fn not_placed(
    outside: &[String],
    listed: &[String],
    claims_nothing: bool,
    mask: Option<&str>,
    gpus: usize,
) -> String {
    let claimed = match (claims_nothing, mask) {
        (false, _) => String::new(),
        (true, Some(_)) => "; the mask names no device of this node".to_string(),
        (true, None) => "; NVML lists no GPU".to_string(),
    };
    let shown = |items: &[String]| {
        let mut text = items
            .iter()
            .take(SHOWN_PROCESSES_MAX)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > SHOWN_PROCESSES_MAX {
            text.push_str(&format!(" and {} more", items.len() - SHOWN_PROCESSES_MAX));
        }
        text
    };
    if !outside.is_empty() {
        format!(
            "its processes only outside the mask: {}{claimed}",
            shown(outside)
        )
    } else if listed.is_empty() {
        format!("no compute process on any of its {gpus} GPU(s){claimed}")
    } else {
        format!(
            "none of its processes; compute processes: {}{claimed}",
            shown(listed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{simulated_gpus, GpuProcess, MigDevice, NoGpu};
    use pool_core::MigDeviceInfo;

    fn process(pid: u32) -> GpuProcess {
        GpuProcess {
            pid,
            used_bytes: 1 << 30,
            pool_id: None,
        }
    }

    fn two_gpus() -> GpuSnapshot {
        GpuSnapshot {
            gpus: simulated_gpus(2),
            events: Vec::new(),
        }
    }

    const NO_SESSION: fn(u32) -> Option<u32> = |_| None;

    #[test]
    fn the_engine_or_its_session_on_a_gpu_of_its_mask_is_placed() {
        let mut snapshot = two_gpus();
        assert!(placement(&snapshot, 10, Some("0"), NO_SESSION)
            .unwrap_err()
            .contains("no compute process"));
        snapshot.gpus[0].processes.push(process(10));
        let on = placement(&snapshot, 10, Some("0"), NO_SESSION).unwrap();
        assert!(on.starts_with("GPU 0"), "{on}");
        assert!(placement(&snapshot, 10, None, NO_SESSION).is_ok());
        // A worker of its session.
        snapshot.gpus[0].processes = vec![process(11)];
        assert!(placement(&snapshot, 10, Some("GPU0"), |p| (p == 11).then_some(10)).is_ok());
        let other = placement(&snapshot, 10, Some("0"), NO_SESSION).unwrap_err();
        assert!(other.contains("pid 11 on GPU 0"), "{other}");
    }

    #[test]
    fn a_gpu_outside_the_mask_does_not_count() {
        let mut snapshot = two_gpus();
        snapshot.gpus[1].processes.push(process(10));
        let err = placement(&snapshot, 10, Some("0"), NO_SESSION).unwrap_err();
        assert!(err.contains("outside the mask"), "{err}");
        assert!(err.contains("GPU 1"), "{err}");
        let uuid1 = snapshot.gpus[1].info.uuid.clone();
        assert!(placement(&snapshot, 10, Some(&uuid1), NO_SESSION).is_ok());
        let gone = placement(&snapshot, 10, Some("7"), NO_SESSION).unwrap_err();
        assert!(gone.contains("names no device"), "{gone}");
        let none = GpuSnapshot::default();
        assert!(placement(&none, 10, None, NO_SESSION)
            .unwrap_err()
            .contains("NVML lists no GPU"));
    }

    #[test]
    fn mig_devices_count_for_their_mask() {
        let mut snapshot = two_gpus();
        let mig = |uuid: &str| MigDevice {
            info: MigDeviceInfo {
                uuid: uuid.to_string(),
                parent_index: 0,
                name: "1g.10gb".into(),
                vram_total_bytes: 10 << 30,
                vram_free_bytes: 10 << 30,
            },
            processes: Vec::new(),
        };
        snapshot.gpus[0].mig_devices = vec![mig("MIG-a"), mig("MIG-b")];
        snapshot.gpus[0].mig_devices[1].processes.push(process(10));
        assert!(placement(&snapshot, 10, Some("MIG-b"), NO_SESSION).is_ok());
        assert!(placement(&snapshot, 10, Some("0"), NO_SESSION).is_ok());
        let err = placement(&snapshot, 10, Some("MIG-a"), NO_SESSION).unwrap_err();
        assert!(err.contains("outside the mask"), "{err}");
    }

    struct Faulty;
    impl GpuInventory for Faulty {
        fn source(&self) -> String {
            "faulty".into()
        }
        fn observe(&self) -> GpuReading {
            Ok(GpuSnapshot {
                gpus: simulated_gpus(1),
                events: vec![GpuEvent::DriverReset {
                    gpu_uuid: "GPU-x".into(),
                }],
            })
        }
    }

    #[test]
    fn faults_of_placement_readings_go_to_the_loop() {
        let shared = SharedInventory::new(Arc::new(Faulty));
        assert!(shared.observe_for_placement().unwrap().events.is_empty());
        assert!(shared.observe_for_placement().unwrap().events.is_empty());
        // The loop's reading: two held back, one of its own.
        assert_eq!(shared.observe().unwrap().events.len(), 3);
        assert_eq!(shared.observe().unwrap().events.len(), 1);
        let none = SharedInventory::new(Arc::new(NoGpu::new("none here")));
        assert!(none.observe_for_placement().is_err());
        assert_eq!(none.source(), "none");
    }
}
