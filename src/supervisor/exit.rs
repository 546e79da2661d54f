//! An engine's end: the exit watcher (a child we reap, or a pidfd for an engine we did not
//! spawn), the log watcher beside it, and the report of the exit with its reason and log tail.
//!
//! Never: reports an exit a stop under way reports itself.

use super::process::ExitInfo;
use super::worker::PoolWorker;
use super::{files, logwatch, process, session, Shared};
use pool_core::{ExitReason, Lane, Observation, PoolId};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use super::health::report_spillover;

/// The engine process a worker watches.
pub(super) struct Engine {
    pub(super) pid: u32,
    /// `Some` once it has ended.
    pub(super) exited: watch::Receiver<Option<ExitInfo>>,
    /// What its exit watcher, its log watcher, the health wait and a stop share.
    pub(super) watch: Arc<Coordination>,
    /// When it was spawned (for `after_ms`), by the decision clock.
    pub(super) spawned_at_ms: u64,
    /// Spawned by this daemon in its life (its child): signalled without a proof. An engine
    /// handed off or adopted is signalled only once [`proof::prove`](super::proof::prove)
    /// holds.
    pub(super) ours: bool,
}

/// What the watchers of one engine and a stop of it tell each other: who reports its end,
/// and what its log showed. Each field is written by one side and read by the others.
#[derive(Debug, Default)]
pub(super) struct Coordination {
    /// A stop is under way: the exit is reported by the stop, not by the exit watcher (set by
    /// the stop, or by a start that gave the engine up).
    stopping: AtomicBool,
    /// We sent SIGKILL (so a SIGKILL death is not an OOM kill).
    killed: AtomicBool,
    /// The first GPU fault line the log watcher found: it names the exit.
    fault: Mutex<Option<(ExitReason, String)>>,
    /// The first "no usable GPU" line its log showed while a GPU is required: the health
    /// wait then leaves the report to the log watcher.
    spilled: Mutex<Option<String>>,
    /// The processes of its session killed after it ended (written by the exit watcher).
    swept: Mutex<Vec<u32>>,
}

impl Coordination {
    /// The processes of the session killed after the engine ended.
    pub(super) fn swept(&self) -> Vec<u32> {
        self.swept.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A stop is under way: the stop reports the end.
    pub(super) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether a stop reports the end (the watchers stay silent).
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// SIGKILL is about to be sent by us.
    pub(super) fn note_kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// Whether we sent SIGKILL.
    pub(super) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// The log's first GPU fault line.
    fn note_fault(&self, reason: ExitReason, line: &str) {
        if let Ok(mut slot) = self.fault.lock() {
            *slot = Some((reason, line.to_string()));
        }
    }

    /// The GPU fault the log showed, if any.
    fn fault(&self) -> Option<(ExitReason, String)> {
        self.fault.lock().ok().and_then(|f| f.clone())
    }

    /// The log's first "no usable GPU" line (later ones are ignored).
    fn note_spill(&self, line: &str) {
        if let Ok(mut slot) = self.spilled.lock() {
            slot.get_or_insert_with(|| line.to_string());
        }
    }

    /// Whether the log said it found no usable GPU.
    pub(super) fn spilled(&self) -> bool {
        self.spilled.lock().is_ok_and(|line| line.is_some())
    }
}

/// Where an engine's log is followed from, and for which start.
#[derive(Debug, Clone)]
pub(super) struct LogFrom {
    /// The pool's engine log.
    pub(super) path: PathBuf,
    /// Its length when this engine started: only what it writes from there is its own.
    pub(super) offset: u64,
    /// With a GPU required, the start's token: a "no usable GPU" line is reported for it.
    pub(super) spill_token: Option<u64>,
}

/// The watchers of one engine: its pool, its pid, the effect that started them.
#[derive(Clone)]
struct Watched {
    shared: Arc<Shared>,
    pool_id: PoolId,
    lane: Lane,
    pid: u32,
    cause: u64,
    watch: Arc<Coordination>,
    /// The engine leads its own session (ours always do): what it leaves of the session is
    /// ended with it.
    leads_session: bool,
}

impl PoolWorker {
    /// Starts the exit watcher of a child we spawned: it owns the child and reaps it.
    pub(super) fn watch_child(
        &self,
        cause: u64,
        spawned: process::Spawned,
        at: LogFrom,
        gate: watch::Receiver<bool>,
        spawned_at_ms: u64,
    ) -> Engine {
        let mut child = spawned.child;
        // The memory cgroup's OOM-kill count before, to tell a host OOM kill at exit.
        let oom = process::oom_kill_counter(spawned.pid);
        let mut engine = self.watch_exit(cause, spawned.pid, at, gate, spawned_at_ms, async move {
            let mut info = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                        oom_killed: false,
                    }
                }
                Err(_) => ExitInfo::default(),
            };
            if let (Some((file, before)), Some(9)) = (oom, info.signal) {
                info.oom_killed = process::read_oom_kills(&file).is_some_and(|now| now > before);
            }
            info
        });
        engine.ours = true;
        engine
    }

    /// Watches an engine we did not spawn in this daemon's life (adopted or handed off)
    /// through a pidfd; its exit status is not ours to read.
    pub(super) fn watch_foreign(&mut self, cause: u64, pid: u32) {
        if self.engine.as_ref().is_some_and(|e| e.pid == pid) {
            return;
        }
        let log_path = self.log_path();
        // Only what it writes from now on: its earlier lines were read by the daemon before.
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        // An adopted engine may still be starting: its start's token, for "no usable GPU"
        // (a surge's new engine's is its second's).
        let spill_token = self.shared.settings.placement.as_ref().and_then(|_| {
            let published = self.shared.registry.load();
            let pool = published.state.pool(self.pool_id.as_str())?;
            if pool.lane == self.lane {
                Some(pool.start_token)
            } else {
                pool.second.as_ref().map(|second| second.token)
            }
        });
        let at = LogFrom {
            path: log_path,
            offset: log_offset,
            spill_token,
        };
        // Already known to the core (adopted or handed off): nothing to wait for.
        let (_, gate) = watch::channel(true);
        let engine = self.watch_exit(cause, pid, at, gate, self.shared.now_ms(), async move {
            process::wait_foreign(pid).await;
            ExitInfo::default()
        });
        self.engine = Some(engine);
    }

    /// Runs `exit` in a detached task (it must see the end even if the worker goes away) that
    /// publishes the exit to the returned [`Engine`] and reports it, unless a stop is under
    /// way (the stop reports it then). A second task follows the engine's log from
    /// `log.offset` and reports the first GPU fault line while the engine runs; with a start
    /// token (a GPU is required), also the first "no usable GPU" line, as `EngineNotOnGpu`.
    /// Neither reports before `gate` says the engine was announced.
    pub(super) fn watch_exit(
        &self,
        cause: u64,
        pid: u32,
        log: LogFrom,
        gate: watch::Receiver<bool>,
        spawned_at_ms: u64,
        exit: impl std::future::Future<Output = ExitInfo> + Send + 'static,
    ) -> Engine {
        let (tx, rx) = watch::channel(None);
        let watched = Watched {
            shared: self.shared.clone(),
            pool_id: self.pool_id.clone(),
            lane: self.lane,
            pid,
            cause,
            watch: Arc::new(Coordination::default()),
            leads_session: process::session_id(pid) == Some(pid),
        };
        tokio::spawn(
            watched
                .clone()
                .exit_watcher(exit, tx, gate.clone(), log.clone()),
        );
        tokio::spawn(watched.clone().log_watcher(log, rx.clone(), gate));
        Engine {
            pid,
            exited: rx,
            watch: watched.watch,
            spawned_at_ms,
            ours: false,
        }
    }
}

impl Watched {
    /// Awaits the end, ends what is left of the engine's session, publishes the end, and
    /// reports it once the engine was announced, unless a stop reports it.
    async fn exit_watcher(
        self,
        exit: impl std::future::Future<Output = ExitInfo>,
        tx: watch::Sender<Option<ExitInfo>>,
        mut gate: watch::Receiver<bool>,
        log: LogFrom,
    ) {
        let info = exit.await;
        if self.leads_session {
            // Before the end is published: nothing of this engine runs when the next starts.
            let swept = session::end_session(self.pool_id.as_str(), self.pid).await;
            if let Ok(mut slot) = self.watch.swept.lock() {
                *slot = swept;
            }
        }
        let _ = tx.send(Some(info));
        // An error means the start was given up (its sender dropped): the stop flag says.
        let _ = gate.wait_for(|announced| *announced).await;
        if self.watch.stopping() {
            return;
        }
        self.report_exit(info, &log).await;
    }

    /// Follows the log: reports a "no usable GPU" line (with a start token) and the first GPU
    /// fault line while the engine runs; a fault seen as it ends is left to the exit report.
    async fn log_watcher(
        self,
        log: LogFrom,
        exited: watch::Receiver<Option<ExitInfo>>,
        mut gate: watch::Receiver<bool>,
    ) {
        let mut follower =
            logwatch::LogFollower::new(log.path, log.offset, log.spill_token.is_some());
        let mut following = exited.clone();
        let mut spill_reported = false;
        let (reason, line) = loop {
            match follower.next(&mut following).await {
                None => return,
                Some(logwatch::LogFinding::Fault(reason, line)) => break (reason, line),
                Some(logwatch::LogFinding::Spillover(line)) => {
                    let Some(token) = log.spill_token.filter(|_| !spill_reported) else {
                        continue;
                    };
                    spill_reported = true;
                    self.watch.note_spill(&line);
                    let _ = gate.wait_for(|announced| *announced).await;
                    if exited.borrow().is_some() || self.watch.stopping() {
                        continue;
                    }
                    let at = (self.pid, token);
                    let pool = (&self.pool_id, self.lane);
                    report_spillover(&self.shared, self.cause, pool, at, &line).await;
                }
            }
        };
        self.watch.note_fault(reason, &line);
        let _ = gate.wait_for(|announced| *announced).await;
        if exited.borrow().is_some() || self.watch.stopping() {
            return; // the exit (or the stop) reports it, with this fault
        }
        tracing::warn!(pool_id = %self.pool_id, pid = self.pid, reason = reason.as_str(), %line, "GPU fault in the engine log");
        let observation = Observation::EngineLogFault {
            pool_id: self.pool_id,
            pid: self.pid,
            reason,
            line,
        };
        self.shared.report(self.cause, observation).await;
    }
}

/// Waits up to `ms` for the process to end; `true` when it did.
pub(super) async fn wait_exit(exited: &mut watch::Receiver<Option<ExitInfo>>, ms: u64) -> bool {
    if ms == 0 {
        return exited.borrow().is_some();
    }
    tokio::time::timeout(Duration::from_millis(ms), exited.wait_for(Option::is_some))
        .await
        .is_ok_and(|r| r.is_ok())
}

impl Watched {
    /// Reports the end with its reason: the GPU fault its log showed, else the exit as
    /// classified with this engine's own log tail.
    async fn report_exit(self, info: ExitInfo, log: &LogFrom) {
        let (pool_id, pid) = (self.pool_id, self.pid);
        // Only this engine's output: the log is appended across starts.
        let tail = files::log_tail_since(&log.path, log.offset, files::LOG_TAIL_BYTES);
        let reason = match (
            self.watch.fault(),
            info.code.is_none() && info.signal.is_none(),
        ) {
            // A GPU fault the log watcher saw names the exit, even if later output pushed it
            // out of the tail.
            (Some((reason, _)), _) => reason,
            (None, true) => process::classify_log(&tail).unwrap_or(ExitReason::Unknown),
            (None, false) => process::classify(info, self.watch.killed(), &tail),
        };
        let detail = if tail.is_empty() {
            format!("engine {}; its log is empty", info.describe())
        } else {
            format!("engine {}; log tail:\n{tail}", info.describe())
        };
        tracing::warn!(pool_id = %pool_id, pid, exit = %info.describe(), reason = reason.as_str(), "engine exited");
        let observation = Observation::EngineExited {
            pool_id,
            pid,
            exit_code: info.code,
            signal: info.signal,
            reason,
            detail,
        };
        self.shared.report(self.cause, observation).await;
    }
}
