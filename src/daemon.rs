//! The daemon assembled: node actor + supervisor + HTTP API on one listener. Used by
//! `serve`, `demo`, the integration tests and the feature suite alike, so that what is tested
//! is what runs.
//!
//! Owns: start-up order (GPU preflight: the first reading of the inventory; journal replay,
//! `DaemonStarted` and the preflight's verdict; the reading's observations; resume; the GPU
//! observation loop; listen) and shutdown order (stop listening, stop the GPU loop, optionally
//! stop engines, `DaemonStopped`, close the journal).
//! Never: parses the command line or reads the process environment (the caller loads the
//! [`Config`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pool_core::Command;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiSettings, ApiState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::gpu::{self, GpuInventory, GpuMonitor};
use crate::node::{Node, NodeHandle, NodeSettings, StartReport};
use crate::watch::GpuObserver;

/// The daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a stopping daemon waits for NATS to acknowledge the events of its stop.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(2);

/// A running daemon.
pub struct Daemon {
    addr: SocketAddr,
    node: Node,
    server: JoinHandle<std::io::Result<()>>,
    stop_server: oneshot::Sender<()>,
    stop_engines_on_shutdown: bool,
    stop_wait_ms: u64,
    // handoff watcher (SPEC 6, engines started by someone else)
    handoff_watcher: crate::watch::HandoffWatcher,
    gpu_observer: GpuObserver,
    /// The journal's publisher to NATS (`[cluster] nats_url`), if configured.
    publisher: Option<crate::cluster::Publisher>,
}

impl Daemon {
    /// Starts the daemon of `config` with `clock`; listens on `config.addr` (port 0 picks a
    /// free port: see [`Daemon::addr`]). The GPUs come from the inventory of `config.gpu`
    /// (the fixture if one is set, else NVML).
    pub async fn start(
        config: &Config,
        clock: SharedClock,
    ) -> anyhow::Result<(Daemon, StartReport)> {
        Self::start_with_gpus(config, clock, gpu::open_inventory(&config.gpu)).await
    }

    /// [`Daemon::start`] looking at the GPUs through `inventory` (tests pass a fixture or
    /// [`gpu::NoGpu`]).
    pub async fn start_with_gpus(
        config: &Config,
        clock: SharedClock,
        inventory: Arc<dyn GpuInventory>,
    ) -> anyhow::Result<(Daemon, StartReport)> {
        config.check_security()?;
        let listener = bind(config).await?;
        Self::start_on(config, clock, inventory, listener).await
    }

    /// Starts the daemon on a listener the caller bound (a socket handed over by systemd, a
    /// test's port): the GPU preflight, the node (journal replay, the start recorded, engines
    /// verified and resumed), the preflight's observations, the GPU loop and the handoff
    /// watcher, then the API. `config.addr` is not used.
    pub async fn start_on(
        config: &Config,
        clock: SharedClock,
        inventory: Arc<dyn GpuInventory>,
        listener: TcpListener,
    ) -> anyhow::Result<(Daemon, StartReport)> {
        config.check_security()?;
        let addr = listener.local_addr()?;
        // One reader for the observation loop and the placement checks (one reading at a
        // time; faults seen by a placement reading are reported by the loop).
        let shared_inventory = gpu::placement::SharedInventory::new(inventory);
        let inventory: Arc<dyn GpuInventory> = shared_inventory.clone();
        // The preflight: a first reading, before the journal opens. A missing GPU is a state
        // with a reason (preloads refused with GPU_REQUIRED when required), never an error.
        let source = inventory.source();
        let first = crate::watch::gpu::read(&inventory).await;
        let gpu = preflight_summary(&first, &source, config.require_gpu);
        let run_as = crate::supervisor::process::resolve_engine_user(&config.engine_user)?;
        let logs_gid = resolve_logs_group(&config.engines.logs_group)?;
        let admission = admission_of(config, run_as.is_none());
        let users = (run_as, logs_gid);
        let settings = node_settings(
            config,
            clock,
            &gpu,
            &shared_inventory,
            admission.clone(),
            users,
        )?;
        let hold = settings.retention_hold.clone();
        let (node, report) = Node::start(settings).await?;
        // The preflight reading's observations (inventory, engines on GPUs, faults), before
        // the API answers anyone; then the loop takes a reading every poll interval.
        let monitor = GpuMonitor::unobserved(config.require_gpu);
        let inbox = node.handle().inbox();
        crate::watch::gpu::apply(&inbox, &monitor, &source, first, config.require_gpu)
            .await
            .context("cannot record the GPU preflight in the journal")?;
        let gpu_observer = GpuObserver::spawn(
            inventory,
            inbox,
            monitor.clone(),
            config.gpu.poll_interval_ms,
            config.require_gpu,
        );
        let state = api_state(config, addr, node.handle(), admission, monitor);
        // handoff watcher (SPEC 6, engines started by someone else)
        let handoff_watcher = crate::watch::HandoffWatcher::spawn(
            node.handle().inbox(),
            node.handle().dirs().clone(),
        );
        let publisher = publisher_of(config, &node, hold);
        let (server, stop_server) = serve_api(config, &node, state, listener);
        let stop_wait_ms = config
            .stop
            .grace_ms
            .saturating_add(crate::supervisor::KILL_WAIT_MS)
            .saturating_add(1_000);
        let daemon = Daemon {
            addr,
            node,
            server,
            stop_server,
            stop_engines_on_shutdown: config.stop_engines_on_shutdown,
            stop_wait_ms,
            handoff_watcher,
            gpu_observer,
            publisher,
        };
        Ok((daemon, report))
    }

    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The handoff watcher's count of finished passes over `<runtime>/engines/`.
    pub fn handoff_passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.handoff_watcher.passes()
    }

    /// The last seq NATS acknowledged, as it changes; `None` without `[cluster] nats_url`.
    pub fn published(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.publisher
            .as_ref()
            .map(crate::cluster::Publisher::published)
    }

    /// The node.
    pub fn handle(&self) -> NodeHandle {
        self.node.handle()
    }

    /// Stops listening (in-flight requests finish), stops the engines if configured to, and
    /// journals `DaemonStopped{reason}`. By default engines keep running.
    pub async fn shutdown(self, reason: &str) {
        // Live event streams end first (`event: shutdown`): the server's graceful stop waits
        // for open responses.
        self.node.handle().registry().announce_stopping();
        let _ = self.stop_server.send(());
        self.handoff_watcher.stop().await; // handoff watcher
        self.gpu_observer.stop().await;
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!("the API server ended with an error: {e}"),
            Err(_) => tracing::warn!("the API server did not finish its requests within 10 s"),
            _ => {}
        }
        if self.stop_engines_on_shutdown {
            stop_all(&self.node.handle(), self.stop_wait_ms).await;
        }
        let cgroups = self.node.handle().cgroups().cloned();
        // The publisher publishes the events of the stop (engines stopped, `DaemonStopped`)
        // within a bounded wait, and lets its clone of the journal go before the node closes it.
        let journal = self.node.handle().journal();
        let publisher = self.publisher;
        let drain = async move {
            if let Some(publisher) = publisher {
                publisher
                    .drain_and_stop(journal.last_seq(), PUBLISH_DRAIN)
                    .await;
            }
        };
        self.node.shutdown_then(reason, drain).await;
        if let Some(cgroups) = cgroups {
            cgroups.remove_empty();
        }
    }
}

/// Binds `config.addr`, naming it when that fails.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.addr).await.with_context(|| {
        format!(
            "cannot listen on {} (addr); is another daemon running there?",
            config.addr
        )
    })
}

/// Runs the daemon of `config` on `listener` (the caller binds: a port of its choice, or a
/// socket systemd handed over) until `shutdown` resolves with the reason to record, then
/// shuts it down. The GPUs come from the inventory of `config.gpu`.
pub async fn run(
    config: &Config,
    clock: SharedClock,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = String>,
) -> anyhow::Result<StartReport> {
    let inventory = gpu::open_inventory(&config.gpu);
    let (daemon, report) = Daemon::start_on(config, clock, inventory, listener).await?;
    let reason = shutdown.await;
    daemon.shutdown(&reason).await;
    Ok(report)
}

/// What retention keeps for the journal's publisher to NATS, when `[cluster] nats_url` is set:
/// the events after its cursor (from 0 when the cursor is missing or unreadable: the publisher
/// reports an unreadable one), up to `[cluster] unpublished_bytes_max` beyond `[journal]
/// retain_bytes`.
fn retention_hold_of(config: &Config) -> Option<pool_journal::RetentionHold> {
    let cluster = &config.cluster;
    if cluster.nats_url.is_empty() {
        return None;
    }
    let cursor = crate::cluster::PublishSettings::of(cluster, &config.runtime_dir).cursor;
    let published = crate::cluster::read_cursor(&cursor).unwrap_or(0);
    Some(pool_journal::RetentionHold::new(
        published,
        cluster.unpublished_bytes_max,
    ))
}

/// The journal's publisher to NATS, when `[cluster] nats_url` is set; `hold` is what retention
/// keeps for it (it advances it as NATS acknowledges).
fn publisher_of(
    config: &Config,
    node: &Node,
    hold: Option<pool_journal::RetentionHold>,
) -> Option<crate::cluster::Publisher> {
    let cluster = &config.cluster;
    if cluster.nats_url.is_empty() {
        return None;
    }
    let settings = crate::cluster::PublishSettings::of(cluster, &config.runtime_dir);
    tracing::info!(url = %settings.nats_url, node_id = %settings.node_id, stream = %settings.stream, "publishing the journal to NATS JetStream");
    let handle = node.handle();
    Some(crate::cluster::Publisher::spawn(
        settings,
        handle.journal(),
        handle.registry().clone(),
        handle.shared_metrics(),
        hold,
    ))
}

/// The API server on `listener`, and the sender that stops it gracefully.
fn serve_api(
    config: &Config,
    node: &Node,
    state: ApiState,
    listener: TcpListener,
) -> (JoinHandle<std::io::Result<()>>, oneshot::Sender<()>) {
    let (stop_server, stopped) = oneshot::channel::<()>();
    let serve_settings = api::ServeSettings {
        metrics: Some(node.handle().shared_metrics()),
        ..api::ServeSettings::from_config(&config.api)
    };
    let server = tokio::spawn(api::serve(
        listener,
        api::router(state),
        serve_settings,
        async move {
            let _ = stopped.await;
        },
    ));
    (server, stop_server)
}

/// Asks every pool with an engine to stop and waits (bounded) until none has one.
pub async fn stop_all(node: &NodeHandle, wait_ms: u64) {
    let pools: Vec<_> = node
        .registry()
        .load()
        .state
        .pools
        .values()
        .filter(|p| p.pid().is_some() || p.second_pid().is_some())
        .map(|p| p.id.clone())
        .collect();
    for pool_id in pools {
        if let Err(e) = node
            .submit(Command::Stop {
                pool_id: pool_id.clone(),
            })
            .await
        {
            tracing::warn!(pool_id = %pool_id, "cannot stop the engine: {e}");
        }
    }
    let mut changes = node.registry().subscribe();
    let all_stopped = async {
        loop {
            let running = node
                .registry()
                .load()
                .state
                .pools
                .values()
                .any(|p| p.pid().is_some() || p.second_pid().is_some());
            if !running || changes.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_millis(wait_ms), all_stopped)
        .await
        .is_err()
    {
        tracing::warn!("engines still running {wait_ms} ms after the stop request");
    }
}

/// The GPU verdict of the preflight reading, logged.
fn preflight_summary(
    first: &gpu::GpuReading,
    source: &str,
    required: bool,
) -> crate::port::GpuSummary {
    let gpu = gpu::summary(first, required);
    match &gpu.reason {
        Some(reason) => tracing::warn!(gpus = %source, required, "no usable GPU: {reason}"),
        None => tracing::info!(gpus = %source, count = gpu.count, "GPUs found"),
    }
    gpu
}

/// What the node starts with, from the configuration.
fn node_settings(
    config: &Config,
    clock: SharedClock,
    gpu: &crate::port::GpuSummary,
    shared_inventory: &Arc<gpu::placement::SharedInventory>,
    admission: Arc<crate::supervisor::admission::Admission>,
    (run_as, logs_gid): (Option<crate::supervisor::process::RunAs>, Option<u32>),
) -> anyhow::Result<NodeSettings> {
    Ok(NodeSettings {
        journal_dir: config.journal_dir.clone(),
        runtime_dir: config.runtime_dir.clone(),
        policy: config.policy(),
        snapshot_every: config.journal.snapshot_every,
        journal: config.journal.clone(),
        clock,
        gpu: gpu.clone(),
        version: VERSION.to_string(),
        run_as,
        placement_check: config.require_gpu.then(|| {
            gpu::placement::PlacementCheck::new(
                shared_inventory.clone(),
                config.gpu.placement_timeout_ms,
            )
        }),
        release_check: Some(gpu::release::ReleaseCheck {
            inventory: shared_inventory.clone(),
            timeout_ms: config.gpu.release_timeout_ms,
            slack_bytes: config.gpu.release_slack_bytes,
            poll_ms: gpu::release::RELEASE_POLL_MS,
        }),
        allow_gpu_sharing: config.gpu.allow_sharing,
        admission,
        cgroups: engine_cgroups(config)?,
        logs_gid,
        retention_hold: retention_hold_of(config),
        surge_ports: config.reload.surge_range(),
        logs: config.logs,
    })
}

/// What may be started (`allowed_binaries`, `[engines] env_allow`), refusing every start as
/// root when no engine user is set (`no_engine_user`) unless `allow_root_engines`; what that
/// means is logged.
fn admission_of(
    config: &Config,
    no_engine_user: bool,
) -> Arc<crate::supervisor::admission::Admission> {
    let root_engines = no_engine_user && nix::unistd::geteuid().is_root();
    if root_engines && config.allow_root_engines {
        tracing::warn!(
            "running as root with no engine_user: engines run as root (allow_root_engines); set engine_user"
        );
    } else if root_engines {
        tracing::warn!(
            "running as root with no engine_user: every engine start is refused (SPAWN_FAILED); set engine_user, or allow_root_engines = true"
        );
    }
    let mut admission = crate::supervisor::admission::Admission::new(
        config.allowed_binaries.clone(),
        config.engines.env_allow.clone(),
    );
    if root_engines && !config.allow_root_engines {
        admission = admission.refusing_root_engines();
    }
    if admission.any_binary() {
        tracing::warn!(
            addr = %config.addr,
            "allowed_binaries is empty: any binary may be started by whoever reaches the API (loopback only); list the engines' binaries to narrow it"
        );
    }
    Arc::new(admission)
}

/// The API's state: the node, the token, what may be started, the browser guard, the GPUs.
/// The API's state. `addr` is where it really listens (a listener the caller bound may differ
/// from `config.addr`): the `Host` check applies on a loopback address.
fn api_state(
    config: &Config,
    addr: SocketAddr,
    node: NodeHandle,
    admission: Arc<crate::supervisor::admission::Admission>,
    monitor: GpuMonitor,
) -> ApiState {
    ApiState::new(
        node,
        ApiSettings {
            token: config.api_token.clone(),
            admission,
            guard: crate::api::guard::BrowserGuard {
                loopback: addr.ip().is_loopback(),
                allowed_origins: config.api.allowed_origins.clone(),
            },
            version: VERSION.to_string(),
            gpus: Some(monitor),
            handoff_check: crate::watch::handoff::checker(),
        },
    )
}

/// `engines.logs_group` as a group id (`None` when empty). An unknown group stops start-up.
fn resolve_logs_group(name: &str) -> anyhow::Result<Option<u32>> {
    if name.is_empty() {
        return Ok(None);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        Ok(None) => anyhow::bail!(
            "engines.logs_group: group '{name}' does not exist on this machine; create it (groupadd {name}) or set logs_group = \"\""
        ),
        Err(e) => anyhow::bail!("engines.logs_group: cannot look up group '{name}': {e}"),
    }
}

/// Sets up the engines' cgroup subtree (`engines.cgroup`): `None` when off, or when it is
/// `auto` and the host gives none (the reason is logged); an error when it is `required` and
/// the subtree or its memory and pids controllers are missing.
fn engine_cgroups(
    config: &Config,
) -> anyhow::Result<Option<Arc<crate::supervisor::cgroup::EngineCgroups>>> {
    use crate::config::CgroupMode;
    use crate::supervisor::cgroup;
    let required = config.engines.cgroup == CgroupMode::Required;
    if config.engines.cgroup == CgroupMode::Off {
        tracing::info!("engines.cgroup = \"off\": engines run in the daemon's cgroup");
        return Ok(None);
    }
    let set_up = std::fs::read_to_string("/proc/self/mountinfo")
        .and_then(|m| Ok((m, std::fs::read_to_string("/proc/self/cgroup")?)))
        .map_err(|e| format!("cannot read /proc/self/mountinfo or /proc/self/cgroup: {e}"))
        .and_then(|(mountinfo, own)| cgroup::locate(&mountinfo, &own))
        .and_then(|location| {
            let name = cgroup::subtree_name(&config.runtime_dir);
            // A systemd service must not empty its unit's cgroup (see the cgroup module).
            let may_move_self = std::env::var_os("INVOCATION_ID").is_none();
            cgroup::EngineCgroups::set_up(
                &location,
                &name,
                config.engines.pids_max,
                (std::process::id(), may_move_self),
            )
        });
    let set_up = match set_up {
        Ok(set_up) => set_up,
        Err(reason) if required => anyhow::bail!(
            "engines.cgroup = \"required\": {reason}; give the daemon a writable cgroup v2 tree (Delegate=yes in its unit) or set engines.cgroup = \"auto\""
        ),
        Err(reason) => {
            tracing::warn!("engines run without a cgroup of their own (no memory.max, pids.max or exact OOM count): {reason}; set engines.cgroup = \"off\" to silence this");
            return Ok(None);
        }
    };
    let mut cgroups = set_up.cgroups;
    match set_up.limits_missing {
        Some(reason) if required => anyhow::bail!(
            "engines.cgroup = \"required\": {reason}; boot the host with cgroup v2 only (systemd.unified_cgroup_hierarchy=1) or set engines.cgroup = \"auto\""
        ),
        Some(reason) => tracing::warn!(cgroup = %cgroups.base().display(), "each engine gets a cgroup of its own, without memory.max and pids.max: {reason}"),
        None => tracing::info!(cgroup = %cgroups.base().display(), pids_max = config.engines.pids_max, "each engine gets a cgroup of its own (memory.max from ram_required_bytes, pids.max)"),
    }
    cgroups.required = required;
    Ok(Some(Arc::new(cgroups)))
}
