//! Whether the GPU memory of a pool's last engine is free again, over one reading: the
//! verdict the supervisor waits on before it starts the pool's next engine on those GPUs
//! (a restart, a half-open trial, a reload). The hazard it closes: an engine's workers (or the
//! driver) still hold its memory when the next engine starts, which then fails with an
//! out-of-memory that looks like its own fault.
//!
//! Owns: [`ReleaseCheck`] (the inventory, the bound `[gpu] release_timeout_ms`, the slack
//! `[gpu] release_slack_bytes`), [`Baseline`] (what the GPUs showed when the wait began) and
//! [`still_held`] (the verdict).
//! Never: reads NVML off a blocking thread, or decides (the supervisor reports
//! `GpuMemoryReleased` or `GpuMemoryStuck`; the core fails the start).

use std::collections::BTreeMap;
use std::sync::Arc;

use pool_core::gpu::{mask_claims, ResolvedDevice};
use pool_core::Inventory;

use super::placement::SharedInventory;
use super::GpuSnapshot;

/// How often the inventory is read while the wait goes on.
pub const RELEASE_POLL_MS: u64 = 250;

/// What the supervisor needs to wait for a last engine's memory.
#[derive(Clone)]
pub struct ReleaseCheck {
    /// The node's inventory.
    pub inventory: Arc<SharedInventory>,
    /// The bound of the wait (`[gpu] release_timeout_ms`).
    pub timeout_ms: u64,
    /// Memory per GPU that may still show as used (`[gpu] release_slack_bytes`).
    pub slack_bytes: u64,
    /// How often it is read meanwhile ([`RELEASE_POLL_MS`]).
    pub poll_ms: u64,
}

/// Memory still held on one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The GPU.
    pub gpu_uuid: String,
    /// The last engine's processes listed on it.
    pub pids: Vec<u32>,
    /// The memory not back, in bytes.
    pub bytes: u64,
}

/// Per GPU of the mask (by uuid), when the wait began: its free memory plus what the last
/// engine's processes held of it; the memory is back when the GPU shows that much free.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    expected_free: BTreeMap<String, u64>,
}

/// The GPUs (index, uuid) that `mask` claims in `snapshot` (no mask: every GPU).
fn claimed(snapshot: &GpuSnapshot, mask: Option<&str>) -> Vec<(u32, String)> {
    let infos = snapshot.infos();
    let migs = snapshot.mig_infos();
    let inventory = Inventory {
        gpus: &infos,
        mig_devices: &migs,
    };
    let claims: Vec<ResolvedDevice> = mask_claims(mask, inventory);
    snapshot
        .gpus
        .iter()
        .filter(|gpu| claims.iter().any(|c| c.gpu_index == gpu.info.index))
        .map(|gpu| (gpu.info.index, gpu.info.uuid.clone()))
        .collect()
}

/// The processes of the last engine on GPU `index` (on it or on its MIG devices), with the
/// memory NVML says they use.
fn ours_on(snapshot: &GpuSnapshot, index: u32, ours: &impl Fn(u32) -> bool) -> (Vec<u32>, u64) {
    let Some(gpu) = snapshot.gpus.iter().find(|g| g.info.index == index) else {
        return (Vec::new(), 0);
    };
    let processes = gpu
        .processes
        .iter()
        .chain(gpu.mig_devices.iter().flat_map(|m| m.processes.iter()))
        .filter(|p| ours(p.pid));
    let mut pids = Vec::new();
    let mut bytes = 0u64;
    for process in processes {
        if !pids.contains(&process.pid) {
            pids.push(process.pid);
        }
        bytes = bytes.saturating_add(process.used_bytes);
    }
    (pids, bytes)
}

/// The free memory of GPU `index` in `snapshot`.
fn free_of(snapshot: &GpuSnapshot, index: u32) -> u64 {
    snapshot
        .gpus
        .iter()
        .find(|g| g.info.index == index)
        .map_or(0, |g| g.info.vram_free_bytes)
}

impl Baseline {
    /// What the GPUs of `mask` show at the wait's first reading.
    pub fn of(snapshot: &GpuSnapshot, mask: Option<&str>, ours: impl Fn(u32) -> bool) -> Baseline {
        let expected_free = claimed(snapshot, mask)
            .into_iter()
            .map(|(index, uuid)| {
                let (_, held) = ours_on(snapshot, index, &ours);
                (uuid, free_of(snapshot, index).saturating_add(held))
            })
            .collect();
        Baseline { expected_free }
    }
}

/// The first GPU of `mask` on which the last engine still holds memory: one of its processes
/// is listed, or the GPU's free memory is short of the baseline's by more than `slack_bytes`.
/// `None`: released.
pub fn still_held(
    snapshot: &GpuSnapshot,
    mask: Option<&str>,
    baseline: &Baseline,
    slack_bytes: u64,
    ours: impl Fn(u32) -> bool,
) -> Option<Held> {
    for (index, uuid) in claimed(snapshot, mask) {
        let (pids, used) = ours_on(snapshot, index, &ours);
        let expected = baseline.expected_free.get(&uuid).copied().unwrap_or(0);
        let short = expected.saturating_sub(free_of(snapshot, index));
        if !pids.is_empty() || short > slack_bytes {
            return Some(Held {
                gpu_uuid: uuid,
                pids,
                bytes: used.max(short),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{simulated_gpus, GpuProcess};

    const GIB: u64 = 1 << 30;

    fn snapshot(free: u64, processes: Vec<(u32, u64)>) -> GpuSnapshot {
        let mut gpus = simulated_gpus(2);
        gpus[0].info.vram_free_bytes = free;
        gpus[0].processes = processes
            .into_iter()
            .map(|(pid, used_bytes)| GpuProcess {
                pid,
                used_bytes,
                pool_id: None,
            })
            .collect();
        GpuSnapshot {
            gpus,
            events: Vec::new(),
        }
    }

    #[test]
    fn memory_is_back_once_no_process_of_the_engine_is_listed_and_it_shows_free() {
        let ours = |pid: u32| pid == 100 || pid == 101;
        let start = snapshot(10 * GIB, vec![(100, 4 * GIB), (101, 2 * GIB), (7, GIB)]);
        let baseline = Baseline::of(&start, Some("0"), ours);
        let held = still_held(&start, Some("0"), &baseline, 0, ours).unwrap();
        assert_eq!(held.pids, vec![100, 101]);
        assert_eq!(held.bytes, 6 * GIB);
        // The processes are gone but the driver has not given the memory back yet.
        let leaking = snapshot(12 * GIB, vec![(7, GIB)]);
        let held = still_held(&leaking, Some("0"), &baseline, 0, ours).unwrap();
        assert_eq!((held.pids.len(), held.bytes), (0, 4 * GIB));
        // Within the slack: back.
        let back = snapshot(16 * GIB - 100, vec![(7, GIB)]);
        assert_eq!(still_held(&back, Some("0"), &baseline, 256, ours), None);
        assert!(still_held(&back, Some("0"), &baseline, 0, ours).is_some());
    }

    #[test]
    fn only_the_gpus_of_the_mask_are_waited_for() {
        let ours = |pid: u32| pid == 100;
        let start = snapshot(10 * GIB, vec![(100, 4 * GIB)]);
        let baseline = Baseline::of(&start, Some("1"), ours);
        assert_eq!(still_held(&start, Some("1"), &baseline, 0, ours), None);
        let any = Baseline::of(&start, None, ours);
        assert!(still_held(&start, None, &any, 0, ours).is_some());
    }
}
