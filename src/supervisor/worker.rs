//! A pool's worker in one [`Lane`]: takes the effects of that pool and lane in order and runs
//! each one (files, timers, staging), handing starts, exits and stops to their rooms.
//!
//! Owns: the lane's engine watch, its health and probe tasks, its files (pid file, log, cgroup
//! leaf: [`Lane::suffix`]), and on lane A the pool's timers and staging. Never: runs two
//! effects of one pool and lane at once, or touches another lane's files.

use super::files::RuntimeDirs;
use super::{files, lock_workers, own, verify_engine, Job, Owned, Shared, Workers};
use pool_core::{Effect, Lane, Observation, PoolId, Timer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::exit::Engine;

pub(super) struct PoolWorker {
    pub(super) shared: Arc<Shared>,
    pub(super) pool_id: PoolId,
    /// The lane whose files and engine this worker has (`Effect::lane`).
    pub(super) lane: Lane,
    pub(super) engine: Option<Engine>,
    pub(super) health: Option<Owned>,
    pub(super) probe: Option<Owned>,
    pub(super) timers: HashMap<Timer, Owned>,
    pub(super) staging: Option<Owned>,
    pub(super) handoff_path: Option<PathBuf>,
    /// Whether a leftover engine may run unknown to this worker (see `leftover.rs`): true
    /// until the first scan of its life, and again after a spawn whose `EngineSpawned` was
    /// not reported.
    pub(super) leftover_possible: bool,
}

impl PoolWorker {
    pub(super) fn new(shared: Arc<Shared>, pool_id: PoolId, lane: Lane) -> PoolWorker {
        PoolWorker {
            shared,
            pool_id,
            lane,
            engine: None,
            health: None,
            probe: None,
            timers: HashMap::new(),
            staging: None,
            handoff_path: None,
            leftover_possible: true,
        }
    }

    /// Runs the lane's jobs in order. Once the pool's files are removed (its last effect) and
    /// nothing else is queued, the worker leaves the map and ends; a later effect of the same
    /// pool id and lane starts a new one. The map's lock is held while the queue is found empty, so no
    /// job can arrive between that check and the removal.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Job>,
        workers: Workers,
        number: u64,
    ) {
        while let Some(job) = rx.recv().await {
            let last = matches!(job.effect, Effect::RemovePoolFiles { .. });
            self.run_effect(job.cause, job.effect).await;
            for done in job.done {
                done();
            }
            if last {
                let mut map = lock_workers(&workers);
                let key = (self.pool_id.clone(), self.lane);
                if rx.is_empty() && map.get(&key).is_some_and(|w| w.number == number) {
                    map.remove(&key);
                    return;
                }
            }
        }
    }

    pub(super) fn dirs(&self) -> &RuntimeDirs {
        &self.shared.settings.dirs
    }

    /// The pid file of this worker's lane.
    pub(super) fn pid_path(&self) -> PathBuf {
        self.dirs().pid_path_in(self.pool_id.as_str(), self.lane)
    }

    /// The engine log of this worker's lane.
    pub(super) fn log_path(&self) -> PathBuf {
        self.dirs().log_path_in(self.pool_id.as_str(), self.lane)
    }

    pub(super) async fn run_effect(&mut self, cause: u64, effect: Effect) {
        // Remember the pool's handoff file while the pool exists (also one written before a
        // daemon restart), so that its removal can take the file with it.
        if let Some(path) = self
            .shared
            .registry
            .load()
            .state
            .pool(self.pool_id.as_str())
            .and_then(|pool| pool.handoff_path.clone())
        {
            self.handoff_path = Some(PathBuf::from(path));
        }
        tracing::debug!(pool_id = %self.pool_id, lane = ?self.lane, ?effect, cause, "effect");
        match effect {
            Effect::Spawn {
                engine,
                attempt,
                token,
                surge,
                ..
            } => self.spawn(cause, &engine, (attempt, token), surge).await,
            Effect::StartHealthWait {
                pid,
                token,
                deadline_at_ms,
                ..
            } => self.start_health_wait(cause, pid, token, deadline_at_ms),
            Effect::StartProbing { pid, .. } => self.start_probing(cause, pid),
            Effect::WatchProcess { pid, .. } => self.watch_foreign(cause, pid),
            effect @ Effect::VerifyEngine { .. } => {
                if let Some((_, recorded)) = super::Recorded::of(effect) {
                    self.verify(cause, &recorded).await;
                }
            }
            Effect::StopEngine {
                pid,
                grace_ms,
                reason,
                ..
            } => self.stop(cause, pid, grace_ms, &reason).await,
            Effect::WriteHandoff { pid, handoff, .. } => {
                self.write_handoff(cause, pid, handoff).await
            }
            Effect::RemovePidFile { .. } => {
                let path = self.pid_path();
                if let Err(e) = files::remove_if_exists(&path) {
                    tracing::warn!(pool_id = %self.pool_id, "{e}");
                }
            }
            Effect::RemovePoolFiles { .. } => self.remove_pool_files(),
            Effect::ArmTimer {
                timer,
                token,
                at_ms,
                ..
            } => self.arm_timer(cause, timer, token, at_ms),
            Effect::StageModel {
                model_ref,
                digest,
                token,
                ..
            } => self.stage_model(cause, model_ref, digest, token),
        }
    }

    /// Writes the pool's handoff file (ours: not re-ingested) and reports how it went.
    pub(super) async fn write_handoff(
        &mut self,
        cause: u64,
        pid: u32,
        handoff: pool_core::Handoff,
    ) {
        let observation = match self.dirs().handoff_path(self.pool_id.as_str(), &handoff.replica_id) {
            None => Observation::HandoffWriteFailed {
                pool_id: self.pool_id.clone(),
                pid,
                reason: format!(
                    "replica_id {:?} cannot be part of a file name (letters, digits, '.', '_', '-')",
                    handoff.replica_id
                ),
            },
            Some(path) => match write_blocking(&path, move |path| {
                files::write_handoff(path, &handoff)
            })
            .await
            {
                Ok(()) => {
                    self.handoff_path = Some(path.clone());
                    Observation::HandoffWritten {
                        pool_id: self.pool_id.clone(),
                        pid,
                        path: path.display().to_string(),
                    }
                }
                Err(e) => Observation::HandoffWriteFailed {
                    pool_id: self.pool_id.clone(),
                    pid,
                    reason: format!("cannot write the handoff file: {e}"),
                },
            },
        };
        self.shared.report(cause, observation).await;
    }

    /// The pool is gone: this lane's probes, timers and staging stop; its pid file, our
    /// handoff file and its cgroup leaf go.
    pub(super) fn remove_pool_files(&mut self) {
        self.health = None;
        self.probe = None;
        self.timers.clear();
        self.staging = None;
        self.shared.registry.forget_heartbeat(self.pool_id.as_str());
        let mut paths = vec![self.pid_path()];
        // Only a file in our engines folder: a handoff registered through the API
        // records the path "api", which is no file of ours.
        let engines = self.dirs().engines.clone();
        paths.extend(self.handoff_path.take().filter(|p| p.starts_with(&engines)));
        for path in paths {
            if let Err(e) = files::remove_if_exists(&path) {
                tracing::warn!(pool_id = %self.pool_id, "{e}");
            }
        }
        if let Some(cgroups) = &self.shared.settings.cgroups {
            if let Err(e) = cgroups.remove(self.pool_id.as_str(), self.lane) {
                tracing::warn!(pool_id = %self.pool_id, "the engine's cgroup stays: {e}; remove it once it is empty");
            }
        }
    }

    /// Reports `TimerFired` at `at_ms` (a timer of the same kind armed before is replaced).
    pub(super) fn arm_timer(&mut self, cause: u64, timer: Timer, token: u64, at_ms: u64) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        let task = own(async move {
            shared.settings.clock.sleep_until(at_ms).await;
            shared
                .report(
                    cause,
                    Observation::TimerFired {
                        pool_id,
                        timer,
                        token,
                    },
                )
                .await;
        });
        self.timers.insert(timer, task);
    }

    /// Stages the model of a reload off the worker and reports the outcome.
    pub(super) fn stage_model(
        &mut self,
        cause: u64,
        model_ref: String,
        digest: Option<String>,
        token: u64,
    ) {
        let shared = self.shared.clone();
        let pool_id = self.pool_id.clone();
        self.staging = Some(own(async move {
            let staged = tokio::task::spawn_blocking(move || {
                files::stage_model(&model_ref, digest.as_deref())
            })
            .await
            .unwrap_or_else(|e| Err(format!("staging task failed: {e}")));
            let observation = match staged {
                Ok((path, digest)) => Observation::ModelStaged {
                    pool_id,
                    token,
                    path,
                    digest,
                },
                Err(reason) => Observation::StagingFailed {
                    pool_id,
                    token,
                    reason,
                },
            };
            shared.report(cause, observation).await;
        }));
    }

    pub(super) async fn verify(&mut self, cause: u64, recorded: &super::Recorded) {
        let observation = verify_engine(&self.pool_id, recorded);
        self.shared.report(cause, observation).await;
    }
}

/// Runs a file write (which fsyncs) on a blocking thread, off the runtime's workers.
pub(super) async fn write_blocking(
    path: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
