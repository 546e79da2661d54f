//! Stopping an engine: SIGTERM (to its group and its whole session), the grace period,
//! SIGKILL, each signal only to an engine spawned in this life or proven to be the pool's; and
//! the verification of a recorded engine at start-up.
//!
//! Never: signals a pid it cannot prove is the pool's engine.

use super::worker::PoolWorker;
use super::{process, proof, session, KILL_WAIT_MS};
use nix::sys::signal::Signal;
use pool_core::{Effect, Observation, PoolId, StopReason};

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
        // Its session's processes in groups of their own too (the rest is SIGKILLed once the
        // engine has ended: see session.rs).
        session::signal_session(pid, first);
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

    /// [`proof::prove`] for this pool's engine `pid`, with what the registry knows of it: the
    /// pool's engine, or its second engine (a surge's new one, or the old one retiring) when
    /// `pid` is the second's.
    pub(super) fn prove(&self, pid: u32) -> Result<(), String> {
        let published = self.shared.registry.load();
        let state = &published.state;
        let pool = state.pool(self.pool_id.as_str());
        let second = pool
            .and_then(|p| p.second.as_ref())
            .filter(|second| second.pid() == Some(pid));
        let (engine, process) = match second {
            Some(second) => (Some(&second.engine), second.process.as_ref()),
            None => (
                pool.and_then(|p| p.engine.as_ref()),
                pool.and_then(|p| p.process.as_ref()),
            ),
        };
        let handoff_port = || {
            let handoff = pool?.handoff.as_ref()?;
            pool_core::handoff_url_host_port(&handoff.url)
                .ok()
                .map(|(_, port)| port)
        };
        let claim = proof::Claim {
            port: engine.map(|e| e.port).or_else(handoff_port),
            start_time: process.map(|p| p.start_time),
            boot_id: process.and_then(|p| p.boot_id.clone()),
            other_pools: proof::recorded_pids(state, Some((self.pool_id.as_str(), pid))),
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

/// What the journal recorded of an engine (`Effect::VerifyEngine`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Its pid.
    pub pid: u32,
    /// Its start time ticks (0 = unknown: never adopted).
    pub start_time: u64,
    /// The boot it was spawned in (`None`: a record before format version 4).
    pub boot_id: Option<String>,
    /// The binary it was prepared with, if we spawned it.
    pub binary_path: Option<String>,
    /// The executable it ran once it served, if recorded.
    pub exe: Option<String>,
}

impl Recorded {
    /// The pool and the record of a `VerifyEngine` effect; `None` for any other effect.
    pub fn of(effect: Effect) -> Option<(PoolId, Recorded)> {
        let Effect::VerifyEngine {
            pool_id,
            pid,
            start_time,
            binary_path,
            boot_id,
            exe,
            ..
        } = effect
        else {
            return None;
        };
        let recorded = Recorded {
            pid,
            start_time,
            boot_id,
            binary_path,
            exe,
        };
        Some((pool_id, recorded))
    }
}

/// Is `pid` still the engine the journal recorded? Alive with the recorded start time and in
/// the recorded boot ([`proof::same_engine`]): `EngineAdopted`; anything else (gone, a zombie,
/// a reused pid, another boot): `EngineLost`. A recorded start time of 0 (unknown) never
/// adopts: a reused pid must never be taken for our engine. A record without a boot id (older
/// than format version 4) adopts by pid and start time, with a warning. The executable is
/// compared and a change logged, never refused: a launcher `exec`s the engine (its
/// `/proc/<pid>/exe` is the engine, not the binary prepared), an upgrade retargets a symlink.
pub fn verify_engine(pool_id: &PoolId, recorded: &Recorded) -> Observation {
    let pid = recorded.pid;
    let proven = proof::same_engine(pid, recorded.start_time, recorded.boot_id.as_deref());
    match proven {
        Ok(proven) => {
            if proven == proof::Proven::BootUnknown {
                tracing::warn!(pool_id = %pool_id, pid, "the engine's boot was not recorded (a journal record older than format version 4): adopted by its pid and start time alone");
            }
            note_changed_exe(pool_id, recorded);
            tracing::info!(pool_id = %pool_id, pid, "engine from before the restart is alive: adopting it");
            Observation::EngineAdopted {
                pool_id: pool_id.clone(),
                pid,
            }
        }
        Err(why) => {
            tracing::warn!(pool_id = %pool_id, pid, "the recorded engine is lost: {why}");
            Observation::EngineLost {
                pool_id: pool_id.clone(),
                pid,
            }
        }
    }
}

/// Logs an engine that runs another executable than recorded: the one read once it served,
/// else its prepared binary (symlinks resolved).
fn note_changed_exe(pool_id: &PoolId, recorded: &Recorded) {
    let pid = recorded.pid;
    let Some(now) = process::exe(pid).map(|exe| {
        let exe = exe.display().to_string();
        exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string()
    }) else {
        return;
    };
    let was = recorded.exe.clone().or_else(|| {
        let binary = recorded.binary_path.as_deref()?;
        process::resolve_binary(binary).map(|p| p.display().to_string())
    });
    match was {
        Some(was) if was != now => {
            tracing::warn!(pool_id = %pool_id, pid, recorded = %was, running = %now, "the adopted engine runs another executable than recorded (a launcher's exec, or its binary was upgraded or replaced): adopted all the same, as its pid, start time and boot match");
        }
        _ => {}
    }
}
