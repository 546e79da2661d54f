//! The GPU observation loop (SPEC section 10, "Observation"): every `[gpu] poll_interval_ms`
//! it takes a reading of the inventory on a blocking thread, shows it in the [`GpuMonitor`]
//! (`GET /v2/gpus`, `/health`), and reports to the node what the core needs to decide on:
//!
//! - `GpuInventory { gpus }` when the GPUs differ from the state's (a GPU added, removed or
//!   changed, or its free VRAM moved by at least [`FREE_VRAM_RESOLUTION_BYTES`]: the reading's
//!   resolution, so that the journal does not record every allocation of every process), or
//!   when GPUs are back while a preflight error stands; `GpuInventory { gpus: [] }` when they
//!   are gone; likewise `MigInventory { devices }` for the MIG devices;
//! - `PreflightFailed { reason }` when no GPU is usable and `require_gpu` (the core refuses
//!   preloads with `GPU_REQUIRED` until GPUs are back);
//! - `VramObserved { pool_id, pid, used_bytes }` per pool whose engine is seen on a GPU (its
//!   pid, or a process of its session), summed over its GPUs; 0 once it is seen on none after
//!   it was;
//! - `DeviceMaskViolation { pool_id, pid, gpu_uuid }` when an engine is seen on a GPU (or MIG
//!   device) that its device mask does not cover (`pool_core::gpu::mask_covers_in`; a process
//!   on a MIG device is covered by a mask naming the device or its whole GPU);
//! - `GpuXid { gpu_uuid, xid }` and `DriverReset { gpu_uuid }` for each fault of the reading.
//!
//! The core filters what it has already recorded (an unchanged VRAM figure, a violation
//! already recorded, an unchanged inventory or preflight reason) and decides what follows
//! (pools on a GPU with an Xid are handled as crashes with reason `driver_error`).
//!
//! Owns: the loop's timing, the pid-to-pool mapping, and the translation of readings into
//! observations.
//! Never: blocks the actor or an async worker on NVML (one reading at a time, on a blocking
//! thread; a slow one is logged, never duplicated), or decides anything about a pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pool_core::gpu::mask_covers_in;
use pool_core::policy::VRAM_DELTA_MIN_BYTES;
use pool_core::{GpuInfo, Inventory, MigDeviceInfo, Observation, State};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::gpu::{summary, Gpu, GpuEvent, GpuInventory, GpuMonitor, GpuReading, GpuView, NoGpu};
use crate::port::Inbox;

/// A GPU's free VRAM must move by this much for a new inventory to be reported.
pub const FREE_VRAM_RESOLUTION_BYTES: u64 = VRAM_DELTA_MIN_BYTES;
/// A reading that takes longer than this is logged (and still waited for: never two at once).
const READING_SLOW_MS: u64 = 10_000;

/// Takes one reading of `inventory` on a blocking thread. A panic of the inventory (a bug) is
/// a "no GPU" reading naming it, never a crash of the caller.
pub async fn read(inventory: &Arc<dyn GpuInventory>) -> GpuReading {
    let inventory = inventory.clone();
    let source = inventory.source();
    let reading = tokio::task::spawn_blocking(move || inventory.observe());
    tokio::pin!(reading);
    let slow = tokio::time::sleep(Duration::from_millis(READING_SLOW_MS));
    tokio::pin!(slow);
    let joined = tokio::select! {
        joined = &mut reading => joined,
        () = &mut slow => {
            tracing::warn!(
                "a GPU reading from {source} takes more than {READING_SLOW_MS} ms; the next \
                 waits for it"
            );
            reading.await
        }
    };
    joined.unwrap_or_else(|e| {
        Err(NoGpu::new(format!(
            "the GPU reading from {source} failed ({e}); run with --dev (require_gpu = false) \
             for CPU-only engines"
        )))
    })
}

/// The running loop.
pub struct GpuObserver {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl GpuObserver {
    /// Starts the loop: a reading every `interval_ms` (the first one `interval_ms` from now;
    /// the daemon applies the start-up reading itself with [`apply`]).
    pub fn spawn(
        inventory: Arc<dyn GpuInventory>,
        node: Inbox,
        monitor: GpuMonitor,
        interval_ms: u64,
        required: bool,
    ) -> GpuObserver {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let interval = Duration::from_millis(interval_ms.max(1));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let reading = read(&inventory).await;
                if let Err(e) = apply(&node, &monitor, &inventory.source(), reading, required).await
                {
                    tracing::debug!("GPU observations not recorded: {e}");
                    if matches!(e, crate::port::NodeError::ShuttingDown) {
                        return;
                    }
                }
            }
        });
        GpuObserver { stop, task }
    }

    /// Stops the loop (a reading under way finishes on its own thread).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Which pool each GPU process belongs to: the engine's own pid, or a process whose session
/// is the engine's (engines run in their own session, so their workers share it).
fn pools_of(state: &State, pids: impl Iterator<Item = u32>) -> HashMap<u32, String> {
    let engines: HashMap<u32, String> = state
        .pools
        .values()
        .filter_map(|pool| pool.pid().map(|pid| (pid, pool.id.to_string())))
        .collect();
    let mut out = HashMap::new();
    for pid in pids {
        if let Some(pool) = engines.get(&pid) {
            out.insert(pid, pool.clone());
        } else if let Some(pool) = session_of(pid).and_then(|sid| engines.get(&sid)) {
            out.insert(pid, pool.clone());
        }
    }
    out
}

/// The session id of `pid` (`/proc/<pid>/stat`, field 6), if it runs.
fn session_of(pid: u32) -> Option<u32> {
    crate::supervisor::procfs::stat(pid).map(|stat| stat.session)
}

/// Whether the reading's MIG devices should be reported (as [`inventory_changed`]).
fn mig_inventory_changed(recorded: &[MigDeviceInfo], seen: &[MigDeviceInfo]) -> bool {
    recorded.len() != seen.len()
        || recorded.iter().zip(seen).any(|(a, b)| {
            a.uuid != b.uuid
                || a.parent_index != b.parent_index
                || a.name != b.name
                || a.vram_total_bytes != b.vram_total_bytes
                || a.vram_free_bytes.abs_diff(b.vram_free_bytes) >= FREE_VRAM_RESOLUTION_BYTES
        })
}

/// Whether the reading's GPUs should be reported: a GPU added, removed or changed, or its
/// free VRAM moved by at least [`FREE_VRAM_RESOLUTION_BYTES`].
fn inventory_changed(recorded: &[GpuInfo], seen: &[GpuInfo]) -> bool {
    recorded.len() != seen.len()
        || recorded.iter().zip(seen).any(|(a, b)| {
            a.index != b.index
                || a.uuid != b.uuid
                || a.name != b.name
                || a.compute_capability != b.compute_capability
                || a.vram_total_bytes != b.vram_total_bytes
                || a.vram_free_bytes.abs_diff(b.vram_free_bytes) >= FREE_VRAM_RESOLUTION_BYTES
        })
}

/// Where one engine pid is seen: per GPU (or MIG device) UUID, and its VRAM.
#[derive(Debug, Default)]
struct Sighting {
    used_bytes: u64,
    /// UUIDs it is seen on that its mask does not cover.
    outside_mask: Vec<String>,
}

/// What the pools' engines do on the GPUs of `gpus` (pool id -> sighting).
fn sightings(
    state: &State,
    gpus: &[Gpu],
    pools: &HashMap<u32, String>,
) -> BTreeMap<String, Sighting> {
    let infos: Vec<GpuInfo> = gpus.iter().map(|g| g.info.clone()).collect();
    let migs: Vec<MigDeviceInfo> = gpus
        .iter()
        .flat_map(|g| g.mig_devices.iter().map(|m| m.info.clone()))
        .collect();
    let inventory = Inventory {
        gpus: &infos,
        mig_devices: &migs,
    };
    let mask_of = |pool_id: &str| {
        state
            .pool(pool_id)
            .and_then(|p| p.device_mask().map(str::to_string))
    };
    let mut out: BTreeMap<String, Sighting> = BTreeMap::new();
    for gpu in gpus {
        // Per pool on this GPU: bytes seen on the GPU as a whole, and on its MIG devices (NVML
        // may list a MIG process on both: the larger counts, never the sum).
        let mut whole: BTreeMap<&str, u64> = BTreeMap::new();
        let mut sliced: BTreeMap<&str, u64> = BTreeMap::new();
        for process in &gpu.processes {
            let Some(pool_id) = pools.get(&process.pid) else {
                continue;
            };
            *whole.entry(pool_id.as_str()).or_default() += process.used_bytes;
            let mask = mask_of(pool_id);
            if !mask_covers_in(mask.as_deref(), &gpu.info.uuid, inventory) {
                out.entry(pool_id.clone())
                    .or_default()
                    .outside_mask
                    .push(gpu.info.uuid.clone());
            }
        }
        for mig in &gpu.mig_devices {
            for process in &mig.processes {
                let Some(pool_id) = pools.get(&process.pid) else {
                    continue;
                };
                *sliced.entry(pool_id.as_str()).or_default() += process.used_bytes;
                let mask = mask_of(pool_id);
                let covered = mask_covers_in(mask.as_deref(), &mig.info.uuid, inventory)
                    || mask_covers_in(mask.as_deref(), &gpu.info.uuid, inventory);
                if !covered {
                    out.entry(pool_id.clone())
                        .or_default()
                        .outside_mask
                        .push(mig.info.uuid.clone());
                }
            }
        }
        let on_gpu: std::collections::BTreeSet<&str> =
            whole.keys().chain(sliced.keys()).copied().collect();
        for pool_id in on_gpu {
            let bytes = whole
                .get(pool_id)
                .copied()
                .unwrap_or(0)
                .max(sliced.get(pool_id).copied().unwrap_or(0));
            let sighting = out.entry(pool_id.to_string()).or_default();
            sighting.used_bytes = sighting.used_bytes.saturating_add(bytes);
        }
    }
    for sighting in out.values_mut() {
        sighting.outside_mask.dedup();
    }
    out
}

/// Shows `reading` in `monitor` and submits what it means to the node (see the module doc).
/// `source` names the inventory; `required` is `require_gpu`.
pub async fn apply(
    node: &Inbox,
    monitor: &GpuMonitor,
    source: &str,
    reading: GpuReading,
    required: bool,
) -> Result<(), crate::port::NodeError> {
    let published = node.registry().load();
    let state = &published.state;
    let verdict = summary(&reading, required);
    let (gpus, events) = match reading {
        Ok(snapshot) => (snapshot.gpus, snapshot.events),
        Err(no_gpu) => {
            monitor.store(GpuView {
                source: source.to_string(),
                summary: verdict,
                gpus: Vec::new(),
            });
            no_gpu_observed(node, state, no_gpu.reason, required).await?;
            return Ok(());
        }
    };
    let pids = gpus.iter().flat_map(|g| {
        g.processes
            .iter()
            .chain(g.mig_devices.iter().flat_map(|m| m.processes.iter()))
            .map(|p| p.pid)
    });
    let pools = pools_of(state, pids);
    let mut shown = gpus.clone();
    for gpu in &mut shown {
        let processes = gpu.processes.iter_mut().chain(
            gpu.mig_devices
                .iter_mut()
                .flat_map(|m| m.processes.iter_mut()),
        );
        for process in processes {
            process.pool_id = pools.get(&process.pid).cloned();
        }
    }
    monitor.store(GpuView {
        source: source.to_string(),
        summary: verdict,
        gpus: shown,
    });

    let infos: Vec<GpuInfo> = gpus.iter().map(|g| g.info.clone()).collect();
    if inventory_changed(&state.node.gpus, &infos) || state.node.preflight_error.is_some() {
        node.submit(Observation::GpuInventory { gpus: infos })
            .await?;
    }
    let migs: Vec<MigDeviceInfo> = gpus
        .iter()
        .flat_map(|g| g.mig_devices.iter().map(|m| m.info.clone()))
        .collect();
    if mig_inventory_changed(&state.node.mig_devices, &migs) {
        node.submit(Observation::MigInventory { devices: migs })
            .await?;
    }
    vram_observed(node, state, &gpus, &pools).await?;
    faults_observed(node, events).await?;
    Ok(())
}

/// No usable GPU: the inventories empty, and the preflight's reason when a GPU is required.
async fn no_gpu_observed(
    node: &Inbox,
    state: &State,
    reason: String,
    required: bool,
) -> Result<(), crate::port::NodeError> {
    if !state.node.gpus.is_empty() {
        node.submit(Observation::GpuInventory { gpus: Vec::new() })
            .await?;
    }
    if !state.node.mig_devices.is_empty() {
        node.submit(Observation::MigInventory {
            devices: Vec::new(),
        })
        .await?;
    }
    if required && state.node.preflight_error.as_ref() != Some(&reason) {
        node.submit(Observation::PreflightFailed { reason }).await?;
    }
    Ok(())
}

/// Each pool's engine seen on the GPUs: its VRAM, and any GPU outside its mask; an engine no
/// longer seen has its VRAM set back to 0.
async fn vram_observed(
    node: &Inbox,
    state: &State,
    gpus: &[Gpu],
    pools: &HashMap<u32, String>,
) -> Result<(), crate::port::NodeError> {
    let seen = sightings(state, gpus, pools);
    for pool in state.pools.values() {
        let Some(pid) = pool.pid() else { continue };
        let pool_id = pool.id.clone();
        match seen.get(pool.id.as_str()) {
            Some(sighting) => {
                node.submit(Observation::VramObserved {
                    pool_id: pool_id.clone(),
                    pid,
                    used_bytes: sighting.used_bytes,
                })
                .await?;
                for gpu_uuid in &sighting.outside_mask {
                    node.submit(Observation::DeviceMaskViolation {
                        pool_id: pool_id.clone(),
                        pid,
                        gpu_uuid: gpu_uuid.clone(),
                    })
                    .await?;
                }
            }
            None if pool.vram_used_bytes.is_some_and(|used| used > 0) => {
                node.submit(Observation::VramObserved {
                    pool_id,
                    pid,
                    used_bytes: 0,
                })
                .await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Xid errors and driver resets, logged and reported.
async fn faults_observed(
    node: &Inbox,
    events: Vec<GpuEvent>,
) -> Result<(), crate::port::NodeError> {
    for event in events {
        let observation = match event {
            GpuEvent::Xid { gpu_uuid, xid } => {
                tracing::warn!(gpu = %gpu_uuid, xid, "NVML reports an Xid error");
                Observation::GpuXid { gpu_uuid, xid }
            }
            GpuEvent::DriverReset { gpu_uuid } => {
                tracing::warn!(gpu = %gpu_uuid, "the GPU was lost or reset");
                Observation::DriverReset { gpu_uuid }
            }
        };
        node.submit(observation).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpuProcess, MigDevice};

    fn info(index: u32, uuid: &str, free: u64) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.to_string(),
            name: "G".to_string(),
            compute_capability: "9.0".to_string(),
            vram_total_bytes: 80 << 30,
            vram_free_bytes: free,
        }
    }

    #[test]
    fn small_free_vram_moves_are_below_the_resolution() {
        let a = [info(0, "GPU-a", 40 << 30)];
        assert!(!inventory_changed(&a, &a));
        assert!(!inventory_changed(
            &a,
            &[info(0, "GPU-a", (40 << 30) - 1024)]
        ));
        assert!(inventory_changed(&a, &[info(0, "GPU-a", 30 << 30)]));
        assert!(inventory_changed(&a, &[info(0, "GPU-b", 40 << 30)]));
        assert!(inventory_changed(&a, &[]));
        assert!(inventory_changed(&[], &a));
    }

    #[test]
    fn session_of_this_process_is_read() {
        let me = std::process::id();
        let sid = session_of(me).unwrap();
        assert_eq!(
            i64::from(sid),
            i64::from(nix::unistd::getsid(None).unwrap().as_raw())
        );
        assert_eq!(session_of(u32::MAX), None);
    }

    fn process(pid: u32, used_bytes: u64) -> GpuProcess {
        GpuProcess {
            pid,
            used_bytes,
            pool_id: None,
        }
    }

    #[test]
    fn mig_processes_count_once_and_masks_cover_their_parent() {
        let state = State::default();
        let pools: HashMap<u32, String> = [(7, "p".to_string())].into();
        let gpus = vec![Gpu {
            info: info(0, "GPU-a", 1),
            mig_devices: vec![MigDevice {
                info: MigDeviceInfo {
                    uuid: "MIG-a1".into(),
                    parent_index: 0,
                    name: "1g.10gb".into(),
                    vram_total_bytes: 10,
                    vram_free_bytes: 1,
                },
                processes: vec![process(7, 5)],
            }],
            processes: vec![process(7, 5)],
        }];
        let seen = sightings(&state, &gpus, &pools);
        // No pool "p" in the state: no mask, which covers everything.
        assert_eq!(seen["p"].used_bytes, 5);
        assert!(seen["p"].outside_mask.is_empty());
    }
}
