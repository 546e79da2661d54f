//! `decide` for the wait, before a spawn on the GPUs of a pool's last engine, for that
//! engine's GPU memory to be free again: recorded when it is (`GpuMemoryReleased`), and at its
//! bound a start failure naming the GPU, the processes and the bytes still held
//! (`GpuMemoryStuck`), so that the new engine is not blamed for an out-of-memory.
//!
//! Never: acts on an observation that is not for the pool's current start (its token, nothing
//! spawned yet).

use super::lifecycle::start_failed;
use super::*;
use crate::command::Observation;

/// The longest list of pids named in a failure.
const PIDS_NAMED_MAX: usize = 16;

/// Whether `token` is the pool's current start, nothing spawned for it yet.
pub(super) fn awaiting_spawn(d: &Decision<'_, '_>, pool_id: &PoolId, token: u64) -> bool {
    d.pool(pool_id).is_some_and(|pool| {
        matches!(pool.activity, Activity::Starting { .. })
            && pool.process.is_none()
            && pool.start_token == token
    })
}

pub(super) fn gpu_memory_released(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::GpuMemoryReleased {
        pool_id,
        token,
        after_ms,
    } = observation
    else {
        return;
    };
    if !awaiting_spawn(d, pool_id, *token) {
        return;
    }
    d.push(
        Some(pool_id),
        Event::GpuMemoryReleased {
            after_ms: *after_ms,
        },
    );
}

pub(super) fn gpu_memory_stuck(d: &mut Decision<'_, '_>, observation: &Observation) {
    let Observation::GpuMemoryStuck {
        pool_id,
        token,
        gpu_uuid,
        pids,
        bytes,
        after_ms,
    } = observation
    else {
        return;
    };
    if !awaiting_spawn(d, pool_id, *token) {
        return;
    }
    let pids: Vec<u32> = pids.iter().copied().take(PIDS_NAMED_MAX).collect();
    let held = if pids.is_empty() {
        "no process listed".to_string()
    } else {
        let named: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("pids {}", named.join(", "))
    };
    let reason = format!(
        "the last engine's GPU memory was not released: GPU {} still holds {bytes} bytes of it \
         ({held}) after {after_ms} ms; the engine was not started (an out-of-memory would not \
         be its fault). Find the holder with nvidia-smi and end it, or raise [gpu] \
         release_timeout_ms",
        tail(gpu_uuid, FIELD_LEN_MAX),
    );
    d.push(
        Some(pool_id),
        Event::GpuMemoryStuck {
            gpu_uuid: tail(gpu_uuid, FIELD_LEN_MAX),
            pids,
            bytes: *bytes,
        },
    );
    start_failed(
        d,
        pool_id,
        StartFailure::SpawnFailed,
        ExitReason::Unknown,
        format!("spawn failed: {reason}"),
        None,
    );
}
