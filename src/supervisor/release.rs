//! The wait, before a spawn, for the GPU memory of the pool's last engine to be free again on
//! the GPUs the new engine will use (the verdict is `gpu::release`). A restart, a half-open
//! trial or a reload waits here, bounded by `[gpu] release_timeout_ms`; a first start has no
//! last engine and does not. The wait is reported either way: `GpuMemoryReleased` (and the
//! spawn goes ahead) or `GpuMemoryStuck` (and nothing is spawned: the core fails the start,
//! naming the GPU, the processes and the bytes).
//!
//! Owns: which processes are the last engine's (its pid, the processes its session sweep
//! killed, any process still in its session), the polling and the bound.
//! Never: signals anything (the session sweep did); waits on a node with no GPU reading.

use super::process;
use super::worker::PoolWorker;
use crate::gpu::release::{still_held, Baseline, Held, ReleaseCheck};
use crate::gpu::GpuSnapshot;
use pool_core::{Observation, PreparedEngine};
use std::time::Duration;

/// What one reading says: no GPU to read, released, or still held.
enum Verdict {
    NoGpu,
    Released,
    Held(Held),
}

/// Reads the inventory on a blocking thread and judges it against `baseline` (taken from this
/// very reading when there is none yet).
async fn read(
    check: &ReleaseCheck,
    mask: Option<String>,
    baseline: &mut Option<Baseline>,
    ours: impl Fn(u32) -> bool + Clone + Send + 'static,
) -> Verdict {
    let inventory = check.inventory.clone();
    let reading = tokio::task::spawn_blocking(move || inventory.observe_for_placement()).await;
    let snapshot: GpuSnapshot = match reading {
        Ok(Ok(snapshot)) => snapshot,
        _ => return Verdict::NoGpu,
    };
    let base =
        baseline.get_or_insert_with(|| Baseline::of(&snapshot, mask.as_deref(), ours.clone()));
    match still_held(&snapshot, mask.as_deref(), base, check.slack_bytes, ours) {
        None => Verdict::Released,
        Some(held) => Verdict::Held(held),
    }
}

impl PoolWorker {
    /// Before spawning `engine` for start `token`: waits for the last engine's GPU memory.
    /// `true`: go ahead (released, recorded; or nothing to wait for); `false`: still held at
    /// the bound, reported as `GpuMemoryStuck`, and nothing may be spawned.
    pub(super) async fn await_gpu_release(
        &self,
        cause: u64,
        engine: &PreparedEngine,
        token: u64,
    ) -> bool {
        let (Some(check), Some(last)) = (&self.shared.settings.release, &self.engine) else {
            return true;
        };
        if last.exited.borrow().is_none() {
            return true; // not ended: not this engine's memory to wait for (never by contract)
        }
        let (last_pid, swept) = (last.pid, last.watch.swept());
        let ours = move |pid: u32| {
            pid == last_pid || swept.contains(&pid) || process::session_id(pid) == Some(last_pid)
        };
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(check.timeout_ms);
        let poll = Duration::from_millis(check.poll_ms.max(1));
        let mask = engine.device_mask.clone();
        let mut baseline = None;
        loop {
            let held = match read(check, mask.clone(), &mut baseline, ours.clone()).await {
                Verdict::NoGpu => return true,
                Verdict::Released => None,
                Verdict::Held(held) => Some(held),
            };
            let after_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match held {
                None => return self.released(cause, token, after_ms).await,
                Some(held) if tokio::time::Instant::now() >= deadline => {
                    return self.stuck(cause, token, held, after_ms).await;
                }
                Some(_) => tokio::time::sleep(poll).await,
            }
        }
    }

    async fn released(&self, cause: u64, token: u64, after_ms: u64) -> bool {
        tracing::info!(pool_id = %self.pool_id, after_ms, "the last engine's GPU memory is free");
        let observation = Observation::GpuMemoryReleased {
            pool_id: self.pool_id.clone(),
            token,
            after_ms,
        };
        self.shared.report(cause, observation).await;
        true
    }

    async fn stuck(&self, cause: u64, token: u64, held: Held, after_ms: u64) -> bool {
        tracing::error!(pool_id = %self.pool_id, gpu = %held.gpu_uuid, pids = ?held.pids, bytes = held.bytes, after_ms, "the last engine's GPU memory is still held: the engine is not started");
        let observation = Observation::GpuMemoryStuck {
            pool_id: self.pool_id.clone(),
            token,
            gpu_uuid: held.gpu_uuid,
            pids: held.pids,
            bytes: held.bytes,
            after_ms,
        };
        self.shared.report(cause, observation).await;
        false
    }
}
