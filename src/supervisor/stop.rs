//! Stopping an engine: SIGTERM, the grace period, SIGKILL, each signal only to an engine
//! spawned in this life or proven to be the pool's; and the verification of a recorded engine
//! at start-up.
//!
//! Never: signals a pid it cannot prove is the pool's engine.

use super::worker::PoolWorker;
use super::{process, proof, KILL_WAIT_MS};
use nix::sys::signal::Signal;
use pool_core::{Observation, PoolId, StopReason};

use super::exit::wait_exit;

impl PoolWorker {
    pub(super) async fn stop(&mut self, cause: u64, pid: u32, grace_ms: u64, reason: &StopReason) {
        self.health = None;
        self.probe = None;
        if self.engine.as_ref().is_none_or(|e| e.pid != pid) {
            // Not watched yet (an engine adopted and stopped at once): watch it now.
            self.watch_foreign(cause, pid);
        }
        let Some(engine) = &self.engine else { return };
        engine.watch.begin_stop();
        let (mut exited, killed, ours) = (engine.exited.clone(), engine.watch.clone(), engine.ours);
        if !self.may_signal(cause, pid, ours).await {
            return;
        }
        tracing::info!(pool_id = %self.pool_id, pid, grace_ms, ?reason, "stopping engine");
        let first = if grace_ms == 0 {
            killed.note_kill();
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let mut graceful = grace_ms > 0;
        match process::signal_engine(pid, first) {
            Ok(_) => {}
            Err(e) => tracing::warn!(pool_id = %self.pool_id, pid, "cannot signal the engine: {e}"),
        }
        let ended = wait_exit(&mut exited, grace_ms).await;
        if !ended {
            graceful = false;
            killed.note_kill();
            tracing::warn!(pool_id = %self.pool_id, pid, grace_ms, "engine did not stop within its grace period: SIGKILL");
            if !self.may_signal(cause, pid, ours).await {
                return;
            }
            let _ = process::signal_engine(pid, Signal::SIGKILL);
            if !wait_exit(&mut exited, KILL_WAIT_MS).await {
                tracing::error!(pool_id = %self.pool_id, pid, "engine still present {KILL_WAIT_MS} ms after SIGKILL (uninterruptible sleep?)");
            }
        }
        self.report_stopped(cause, pid, graceful).await;
    }

    /// [`proof::prove`] for this pool's engine `pid`, with what the registry knows of it.
    pub(super) fn prove(&self, pid: u32) -> Result<(), String> {
        let published = self.shared.registry.load();
        let state = &published.state;
        let pool = state.pool(self.pool_id.as_str());
        let claim = proof::Claim {
            port: pool.and_then(|p| {
                p.engine.as_ref().map(|e| e.port).or_else(|| {
                    let handoff = p.handoff.as_ref()?;
                    pool_core::handoff_url_host_port(&handoff.url)
                        .ok()
                        .map(|(_, port)| port)
                })
            }),
            start_time: pool.and_then(|p| p.process.as_ref()).map(|p| p.start_time),
            other_pools: state
                .pools
                .values()
                .filter(|p| p.id != self.pool_id)
                .filter_map(|p| p.process.as_ref().map(|process| process.pid))
                .collect(),
        };
        proof::prove(pid, &claim)
    }

    /// Whether `pid` may be signalled: always when `ours` (spawned in this life), else once
    /// [`Self::prove`] holds; when it does not, the pool forgets the engine ([`Self::forget`]).
    pub(super) async fn may_signal(&mut self, cause: u64, pid: u32, ours: bool) -> bool {
        if ours {
            return true;
        }
        match self.prove(pid) {
            Ok(()) => true,
            Err(why) => {
                self.forget(cause, pid, &why).await;
                false
            }
        }
    }

    /// The stop of an engine that cannot be proven to be this pool's: nothing is signalled,
    /// the pool lets it go (reported stopped), and the log says so.
    pub(super) async fn forget(&mut self, cause: u64, pid: u32, why: &str) {
        tracing::warn!(
            pool_id = %self.pool_id,
            pid,
            "not signalling pid {pid}: {why}; the pool forgets it and the process is left as it is (stop it yourself if it is the engine)"
        );
        self.engine = None;
        self.report_stopped(cause, pid, false).await;
    }

    /// Reports the end of a stop of `pid`.
    pub(super) async fn report_stopped(&self, cause: u64, pid: u32, graceful: bool) {
        self.shared
            .report(
                cause,
                Observation::EngineStopped {
                    pool_id: self.pool_id.clone(),
                    pid,
                    graceful,
                },
            )
            .await;
    }
}

/// Is `pid` still the engine the journal recorded? Alive, with the recorded start time
/// (`/proc/<pid>/stat`) and, when we spawned it, the recorded binary: `EngineAdopted`;
/// anything else (gone, a zombie, a reused pid): `EngineLost`. A recorded start time of 0
/// (unknown) never adopts: a reused pid must never be taken for our engine.
pub fn verify_engine(
    pool_id: &PoolId,
    pid: u32,
    start_time: u64,
    binary_path: Option<&str>,
) -> Observation {
    let alive_start = if process::is_gone(pid) {
        None
    } else {
        process::start_time(pid)
    };
    let same_start = matches!(alive_start, Some(actual) if start_time != 0 && actual == start_time);
    let same_binary = match binary_path {
        None => true,
        Some(recorded) => {
            let exe = process::exe(pid).map(|exe| {
                let exe = exe.display().to_string();
                exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string()
            });
            let recorded = process::resolve_binary(recorded).map(|p| p.display().to_string());
            matches!((exe, recorded), (Some(a), Some(b)) if a == b)
        }
    };
    if same_start && same_binary {
        tracing::info!(pool_id = %pool_id, pid, "engine from before the restart is alive: adopting it");
        Observation::EngineAdopted {
            pool_id: pool_id.clone(),
            pid,
        }
    } else {
        tracing::warn!(pool_id = %pool_id, pid, alive = alive_start.is_some(), same_start, same_binary, "recorded engine is gone (or its pid now belongs to another program)");
        Observation::EngineLost {
            pool_id: pool_id.clone(),
            pid,
        }
    }
}
