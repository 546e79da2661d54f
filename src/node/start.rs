//! Start-up: the journal opened and replayed, the supervisor built, the start recorded, the
//! recorded engines verified and the runtime directory reconciled with `/proc`.
//!
//! Owns: the order of start-up (verify, reconcile, then resume). Never: serves anyone before the
//! recorded engines are verified.

use std::sync::Arc;

use pool_core::{Command, Effect, Observation, PoolId, State};
use pool_journal::{JournalConfig, JournalError};

use super::{NodeHandle, NodeSettings, StartError};
use crate::port::{Committed, NodeError, Registry, Reporter};
use crate::projection::{self, ReplayLimit};
use crate::schema::PoolJournal;
use crate::supervisor::files::RuntimeDirs;
use crate::supervisor::{Supervisor, SupervisorSettings};

/// Start-up's reconciliation of the runtime directory with `/proc` (`supervisor::reconcile`):
/// engines of ours that the registry does not know are adopted (a handoff file names them) or
/// stopped and recorded, so that none is left running unknown (after an accepted journal loss,
/// or a daemon that died between starting an engine and recording it).
pub(super) async fn reconcile_runtime(handle: &NodeHandle, dirs: &RuntimeDirs) {
    use crate::supervisor::reconcile::{self, Found};
    let state = handle.registry().load().state.clone();
    for found in reconcile::scan(&state, dirs) {
        match found {
            Found::Stale { pid_file, why } => {
                tracing::info!(pid_file = %pid_file.display(), why = %why, "stale pid file removed");
                let _ = crate::supervisor::files::remove_if_exists(&pid_file);
            }
            Found::Adopt {
                pool_id,
                handoff,
                path,
            } => {
                tracing::warn!(pool_id = %pool_id, pid = ?handoff.pid, file = %path.display(), "an engine of ours ran unknown to the journal: adopting it from its handoff file");
                let Ok(id) = PoolId::new(&pool_id) else {
                    continue;
                };
                let command = Command::RegisterHandoff {
                    pool_id: id,
                    handoff,
                    path: path.display().to_string(),
                };
                if let Err(e) = handle.submit(command).await {
                    tracing::error!(pool_id = %pool_id, error = %e, "cannot adopt the engine from its handoff file");
                }
            }
            Found::Stop {
                pool_id,
                pid,
                pid_file,
            } => {
                tracing::warn!(pool_id = %pool_id, pid, "an engine of ours ran unknown to the journal and no handoff file names it: stopping it");
                let gone =
                    crate::supervisor::reconcile::stop(pid, handle.policy().stop.grace_ms).await;
                if gone {
                    let _ = crate::supervisor::files::remove_if_exists(&pid_file);
                }
                let reason = format!(
                    "engine {pid} (pid file {}) ran unknown to the journal; {}",
                    pid_file.display(),
                    if gone {
                        "stopped"
                    } else {
                        "still present after SIGKILL"
                    }
                );
                let observation = Observation::UntrackedEngineStopped {
                    pool_id,
                    pid,
                    reason,
                };
                if let Err(e) = handle.submit(observation).await {
                    if !matches!(e, NodeError::JournalUnavailable(_)) {
                        tracing::error!(pid, error = %e, "cannot record the stop of an untracked engine");
                    }
                }
            }
        }
    }
}

/// A start-up replay that needs events retention dropped: no snapshot of this build's state
/// version covers them (snapshots written by another version are ignored).
pub(super) fn explain_replay_error(journal: &PoolJournal, error: JournalError) -> JournalError {
    match error {
        JournalError::HistoryExpired { earliest, .. } => JournalError::InvalidArgument {
            what: format!(
                "the registry cannot be rebuilt: retention dropped the events before seq \
                 {earliest} and no snapshot of this build's state version ({}) covers them \
                 (snapshots at seqs {:?} are of another version, or damaged). Run the version of \
                 pool-managerd that wrote them, or restore the journal directory from a backup",
                pool_core::STATE_SNAPSHOT_VERSION,
                journal.snapshot_seqs()
            ),
        },
        other => other,
    }
}

/// A start-up observation refused because the journal cannot take writes is kept by the actor
/// (recorded once it can): not a failed start.
pub(super) fn queued_while_unavailable(error: NodeError) -> Result<Committed, NodeError> {
    match error {
        NodeError::JournalUnavailable(_) => Ok(Committed {
            envelopes: Vec::new(),
            state: Arc::new(State::default()),
        }),
        other => Err(other),
    }
}

/// The journal's options from the node's settings: retention and segment size from
/// `[journal]`, retention's clock the node's decision clock, the cluster publisher's hold.
pub(super) fn journal_config(settings: &NodeSettings) -> JournalConfig {
    let mut config = JournalConfig::new(&settings.journal_dir);
    config.retain_bytes = settings.journal.retain_bytes;
    config.retain_ms = settings.journal.retain_ms;
    config.segment_records = usize::try_from(settings.journal.segment_records)
        .unwrap_or(pool_journal::config::DEFAULT_SEGMENT_RECORDS)
        .max(1);
    let clock = settings.clock.clone();
    config.clock = pool_journal::JournalClock(Arc::new(move || clock.now_ms()));
    config.hold = settings.retention_hold.clone();
    config
}

/// Opens the journal and replays it (snapshot + tail) on a blocking thread.
pub(super) async fn open_and_replay(
    settings: &NodeSettings,
) -> Result<
    (
        PoolJournal,
        pool_journal::OpenReport,
        projection::Replayed,
        usize,
    ),
    StartError,
> {
    let journal_config = journal_config(settings);
    tokio::task::spawn_blocking(move || {
        let config = journal_config;
        let max_batch = config.max_batch_records;
        let (journal, report) = PoolJournal::open(config)?;
        let replayed = projection::replay(&journal, ReplayLimit::default())
            .map_err(|e| explain_replay_error(&journal, e))?;
        Ok::<_, JournalError>((journal, report, replayed, max_batch))
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))?
    .map_err(|source| StartError::Journal {
        dir: settings.journal_dir.clone(),
        source,
    })
}

/// The supervisor of a node with `settings`, reporting through `reporter`.
pub(super) fn supervisor_of(
    settings: &NodeSettings,
    dirs: RuntimeDirs,
    reporter: Reporter,
    registry: &Registry,
) -> Supervisor {
    let mut supervisor_settings =
        SupervisorSettings::new(dirs, settings.policy.clone(), settings.clock.clone());
    supervisor_settings.run_engines_as(settings.run_as);
    supervisor_settings.admission = settings.admission.clone();
    supervisor_settings.placement = settings.placement_check.clone();
    supervisor_settings.release = settings.release_check.clone();
    supervisor_settings.cgroups = settings.cgroups.clone();
    supervisor_settings.logs = settings.logs;
    Supervisor::new(supervisor_settings, reporter, registry.clone())
}

/// Journals a start-up observation; one refused because the journal cannot take writes now
/// is kept by the actor (not a failed start).
pub(super) async fn record(
    handle: &NodeHandle,
    observation: Observation,
    what: &'static str,
) -> Result<(), StartError> {
    handle
        .submit(observation)
        .await
        .or_else(queued_while_unavailable)
        .map(drop)
        .map_err(|source| StartError::Record { what, source })
}

/// Journals the start (`DaemonStarted`, the preflight's verdict) and verifies the recorded
/// engines before the node serves anyone (so the API never shows a ready engine that is
/// gone). Returns the other resume effects, for the actor once the runtime is reconciled.
pub(super) async fn record_start(
    handle: &NodeHandle,
    settings: &NodeSettings,
    resume: Vec<Effect>,
) -> Result<Vec<Effect>, StartError> {
    let started = Observation::DaemonStarted {
        version: settings.version.clone(),
        pid: std::process::id(),
    };
    record(handle, started, "the daemon's start").await?;
    if settings.gpu.required && !settings.gpu.available {
        let reason = settings
            .gpu
            .reason
            .clone()
            .unwrap_or_else(|| "no usable GPU".to_string());
        let failed = Observation::PreflightFailed { reason };
        record(handle, failed, "the GPU preflight").await?;
    }
    // Recorded engines are verified before the node serves anyone, so the API never
    // shows an engine as ready that is gone (a quick `/proc` check per engine).
    let (verify, rest): (Vec<_>, Vec<_>) = resume
        .into_iter()
        .partition(|e| matches!(e, Effect::VerifyEngine { .. }));
    let findings = verify_all(verify);
    record_all(handle, findings, "the engines found at start-up").await?;
    Ok(rest)
}

/// Every recorded engine verified (adopted or lost), all of them before any finding is
/// recorded: a restart started by the first finding never delays the verification of the
/// others (`/proc` reads only).
fn verify_all(verify: Vec<Effect>) -> Vec<Observation> {
    verify
        .into_iter()
        .filter_map(crate::supervisor::Recorded::of)
        .map(|(pool_id, recorded)| crate::supervisor::verify_engine(&pool_id, &recorded))
        .collect()
}

/// Journals start-up observations, all submitted at once and in order, so that the actor
/// takes them in as few batches (durable appends) as it can; the first failure is returned
/// (one refused because the journal cannot take writes now is kept by the actor, as with
/// [`record`]).
pub(super) async fn record_all(
    handle: &NodeHandle,
    observations: Vec<Observation>,
    what: &'static str,
) -> Result<(), StartError> {
    let submits = observations
        .into_iter()
        .map(|observation| handle.submit(observation));
    for outcome in futures_util::future::join_all(submits).await {
        outcome
            .or_else(queued_while_unavailable)
            .map_err(|source| StartError::Record { what, source })?;
    }
    Ok(())
}
