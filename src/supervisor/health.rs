//! A starting engine's health wait: probed until it answers healthy, its port's owner (the
//! engine's session) and, where a GPU is required, its placement proven; or its deadline.
//! Also what a start's failure to be placed says (`EngineNotOnGpu`).
//!
//! Never: reports a start healthy before the socket on its port is proven the engine's
//! session's, nor before its placement is proven where a GPU is required.

use super::probe::Health;
use super::process::ExitInfo;
use super::start::next_retry_ms;
use super::worker::PoolWorker;
use super::{own, port, probe, process, procfs, Shared};
use crate::gpu::placement::{self, PlacementCheck};
use pool_core::{Lane, Observation, PoolId, PreparedEngine};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::exit::Coordination;

/// How long an engine whose port is not its session's may take to be seen exiting: one that
/// closed its socket on the way out is an exit, not an impostor on its port.
const EXIT_SETTLE_MS: u64 = 250;

impl PoolWorker {
    /// Starts the health wait of this lane's starting engine `pid` (start `token`), which
    /// gives up at `deadline_at_ms`.
    pub(super) fn start_health_wait(
        &mut self,
        cause: u64,
        pid: u32,
        token: u64,
        deadline_at_ms: u64,
    ) {
        let (exited, spawned_at_ms, watch) = match &self.engine {
            Some(engine) if engine.pid == pid => (
                engine.exited.clone(),
                engine.spawned_at_ms,
                engine.watch.clone(),
            ),
            _ => {
                // Not ours to watch (after a restart the adoption's watcher covers it).
                let (_tx, rx) = watch::channel(None);
                (rx, self.shared.now_ms(), Arc::new(Coordination::default()))
            }
        };
        let wait = HealthWait {
            shared: self.shared.clone(),
            pool_id: self.pool_id.clone(),
            lane: self.lane,
            cause,
            pid,
            token,
            deadline_at_ms,
            spawned_at_ms,
            exited,
            watch,
        };
        self.probe = None;
        self.health = Some(own(wait.run()));
    }
}

/// The wait for a starting engine to answer healthy (and, where a GPU is required, to be
/// seen on its GPUs) before its deadline; it reports one of `HealthPassed`,
/// `EngineNotOnGpu` or `PreloadTimedOut`, or nothing when the engine exits meanwhile (its
/// exit watcher reports) or the log watcher reports a spillover.
struct HealthWait {
    shared: Arc<Shared>,
    pool_id: PoolId,
    /// The engine's lane: its prepared engine (and port) is the one the registry holds for it.
    lane: Lane,
    cause: u64,
    pid: u32,
    token: u64,
    deadline_at_ms: u64,
    spawned_at_ms: u64,
    exited: watch::Receiver<Option<ExitInfo>>,
    watch: Arc<Coordination>,
}

impl HealthWait {
    async fn run(mut self) {
        let Some(engine) = self.shared.engine_in(&self.pool_id, self.lane) else {
            return;
        };
        let interval_ms = self.shared.settings.policy.health.preload_interval_ms;
        let mut retry_ms = None;
        let mut last_probe = String::new();
        loop {
            if self.exited.borrow().is_some() {
                return; // the exit watcher reports
            }
            if self.shared.now_ms() >= self.deadline_at_ms {
                break;
            }
            let health = self
                .shared
                .prober
                .health(&engine, probe::PROBE_TIMEOUT_MS)
                .await;
            if health == Health::Healthy {
                return self.healthy(&engine).await;
            }
            last_probe = health.describe();
            let wait_ms = next_retry_ms(retry_ms, interval_ms);
            retry_ms = Some(wait_ms);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                () = self.shared.settings.clock.sleep_until(self.deadline_at_ms) => break,
                _ = self.exited.changed() => return,
            }
        }
        if self.exited.borrow().is_some() {
            return;
        }
        let observation = Observation::PreloadTimedOut {
            pool_id: self.pool_id,
            pid: self.pid,
            last_probe,
        };
        self.shared.report(self.cause, observation).await;
    }

    /// Whether the engine is ending, after its port was found not to be its session's: an
    /// engine that exits right after answering closes its socket before its exit is reaped,
    /// so the exit (awaited up to [`EXIT_SETTLE_MS`]) is the failure, not the port.
    async fn ends_meanwhile(&mut self, pid: u32) -> bool {
        let ended = |exited: &watch::Receiver<Option<ExitInfo>>| {
            exited.borrow().is_some() || procfs::stat(pid).is_none_or(|stat| stat.ended())
        };
        if ended(&self.exited) || self.watch.spilled() {
            return true;
        }
        let settle = tokio::time::sleep(Duration::from_millis(EXIT_SETTLE_MS));
        tokio::select! {
            () = settle => {}
            _ = self.exited.changed() => {}
        }
        ended(&self.exited) || self.watch.spilled()
    }

    /// The engine answered healthy: the socket on its port must be its session's (else
    /// someone else answered: `PortInUse`); with a GPU required, its placement is proven.
    async fn healthy(mut self, engine: &PreparedEngine) {
        let after_ms = self.shared.now_ms().saturating_sub(self.spawned_at_ms);
        let (pool_id, pid) = (self.pool_id.clone(), self.pid);
        if let Err(detail) = port::check_owned(engine.port, pid) {
            if self.ends_meanwhile(pid).await {
                return; // the exit or log watcher reports
            }
            tracing::warn!(pool_id = %pool_id, pid, "engine start fails (PORT_IN_USE): {detail}");
            let (pid, token) = (Some(pid), self.token);
            let observation = Observation::PortInUse {
                pool_id,
                token,
                pid,
                detail,
            };
            return self.shared.report(self.cause, observation).await;
        }
        if let Some(check) = &self.shared.settings.placement {
            let mask = engine.device_mask.as_deref();
            match prove_placement(check, pid, mask, &mut self.exited).await {
                Proof::Placed(device) => {
                    tracing::info!(pool_id = %pool_id, pid, %device, "engine seen on its GPU");
                }
                Proof::Exited => return, // the exit watcher reports
                Proof::NotSeen(seen) => {
                    let detail = not_on_gpu(check, pid, mask, &seen);
                    tracing::warn!(pool_id = %pool_id, pid, "{detail}");
                    let token = self.token;
                    let observation = Observation::EngineNotOnGpu {
                        pool_id,
                        token,
                        pid,
                        detail,
                    };
                    return self.shared.report(self.cause, observation).await;
                }
            }
            if self.watch.spilled() {
                return; // its log said "no usable GPU": the log watcher reports
            }
        }
        let observation = health_passed(&self.shared, engine, pool_id, pid, after_ms).await;
        self.shared.report(self.cause, observation).await;
    }
}

/// How a placement proof ended.
pub(super) enum Proof {
    /// Listed on this device (of its mask).
    Placed(String),
    /// Not listed within the wait: what the last reading showed instead.
    NotSeen(String),
    /// The engine exited meanwhile (its exit watcher reports).
    Exited,
}

/// Reads the inventory (on a blocking thread) at once and every `check.poll_ms` until the
/// engine `pid` or a process of its session is listed on a device of `mask`, it exits, or
/// `check.timeout_ms` has passed.
pub(super) async fn prove_placement(
    check: &PlacementCheck,
    pid: u32,
    mask: Option<&str>,
    exited: &mut watch::Receiver<Option<ExitInfo>>,
) -> Proof {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(check.timeout_ms);
    let poll = Duration::from_millis(check.poll_ms.max(1));
    loop {
        let inventory = check.inventory.clone();
        let owned_mask = mask.map(str::to_string);
        let verdict =
            tokio::task::spawn_blocking(move || match inventory.observe_for_placement() {
                Ok(snapshot) => {
                    placement::placement(&snapshot, pid, owned_mask.as_deref(), process::session_id)
                }
                Err(no_gpu) => Err(format!("no usable GPU ({})", no_gpu.reason)),
            })
            .await
            .unwrap_or_else(|e| Err(format!("no reading (the GPU reading failed: {e})")));
        let seen = match verdict {
            Ok(device) => return Proof::Placed(device),
            Err(seen) => seen,
        };
        if exited.borrow().is_some() {
            return Proof::Exited;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Proof::NotSeen(seen);
        }
        tokio::select! {
            () = tokio::time::sleep_until((now + poll).min(deadline)) => {}
            // A closed channel (an engine not watched here) only disables this branch.
            Ok(()) = exited.changed() => {}
        }
    }
}

/// A healthy engine's `HealthPassed`: its slots (as prepared, else `/props`, else
/// `--parallel`) and version, with a first heartbeat.
pub(super) async fn health_passed(
    shared: &Shared,
    engine: &PreparedEngine,
    pool_id: PoolId,
    pid: u32,
    after_ms: u64,
) -> Observation {
    let props = if engine.slots_total.is_some() {
        probe::Props::default()
    } else {
        shared.prober.props(engine).await
    };
    let slots_total = engine
        .slots_total
        .or(props.total_slots)
        .or_else(|| probe::parallel_flag(&engine.flags));
    shared.registry.heartbeat(pool_id.as_str(), shared.now_ms());
    // Read now, once it serves: a launcher has `exec`ed the engine by then.
    let exe = process::exe(pid).map(|exe| {
        let exe = exe.display().to_string();
        exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string()
    });
    Observation::HealthPassed {
        pool_id,
        pid,
        after_ms,
        engine_version: props.build_info,
        slots_total,
        exe,
    }
}

/// Reports that an engine's log says it found no usable GPU and would serve on the CPU
/// (`EngineNotOnGpu`), naming its mask and what to check.
pub(super) async fn report_spillover(
    shared: &Shared,
    cause: u64,
    (pool_id, lane): (&PoolId, Lane),
    (pid, token): (u32, u64),
    line: &str,
) {
    let mask = shared.engine_in(pool_id, lane).and_then(|e| e.device_mask);
    tracing::warn!(pool_id = %pool_id, pid, %line, "the engine found no usable GPU");
    let detail = format!(
        "engine pid {pid} with {} logged {:?} while starting: it found no usable GPU and would \
         serve on the CPU; check the device mask, CUDA_VISIBLE_DEVICES (set from the mask: \
         {:?}) and that the engine is a CUDA build, not a CPU-only one",
        placement::describe_mask(mask.as_deref()),
        line.trim(),
        mask.as_deref()
            .map(process::cuda_visible_devices)
            .unwrap_or_default(),
    );
    let observation = Observation::EngineNotOnGpu {
        pool_id: pool_id.clone(),
        token,
        pid,
        detail,
    };
    shared.report(cause, observation).await;
}

/// The `last_error` of an engine NVML never listed on its GPUs: which pid, which mask, what
/// NVML showed, and what to check.
pub(super) fn not_on_gpu(
    check: &PlacementCheck,
    pid: u32,
    mask: Option<&str>,
    seen: &str,
) -> String {
    use crate::gpu::GpuInventory as _;
    format!(
        "engine pid {pid} with {} answered healthy, but NVML ({}) did not list it or a process \
         of its session on a GPU of its mask within {} ms; NVML showed {seen}. It is probably \
         serving on the CPU: check the device mask, CUDA_VISIBLE_DEVICES (set from the mask: \
         {:?}) and that the engine is a CUDA build, not a CPU-only one",
        placement::describe_mask(mask),
        check.inventory.source(),
        check.timeout_ms,
        mask.map(process::cuda_visible_devices).unwrap_or_default(),
    )
}
