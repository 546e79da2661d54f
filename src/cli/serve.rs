//! `pool-managerd serve`: the daemon.
//!
//! Owns: loading the configuration (file < environment < flags), the runtime, signal handling
//! (SIGTERM / ctrl-c: clean shutdown; engines keep running unless `stop_engines_on_shutdown`),
//! and systemd's notification protocol (`Type=notify`): `READY=1` once the journal is replayed
//! and the API listens, `WATCHDOG=1` every half `WATCHDOG_USEC` while the node actor answers,
//! `STOPPING=1` at shutdown (see `packaging/pool-managerd.service`).
//! Never: holds daemon logic; `daemon::Daemon` does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::config::{relevant_env, Config, Overrides, Sources};
use crate::daemon::Daemon;
use crate::node::{NodeError, NodeHandle};

/// `serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; SPEC section 11). Without it, the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (token redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Loads the configuration of `args` from the file, the process environment and the flags.
pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let env = relevant_env(std::env::vars_os())?;
    let config = Config::load(&Sources {
        file: args.config.clone(),
        env,
        flags: args.overrides.clone(),
    })?;
    Ok(config)
}

/// Runs the daemon until SIGTERM or ctrl-c.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let mut signals = StopSignals::catch().context("cannot catch SIGTERM and SIGINT")?;
    // The daemon serves on the listener it is given: bound here (the seam where a socket
    // handed over by systemd would come in).
    let listener = crate::daemon::bind(&config).await?;
    let inventory = crate::gpu::open_inventory(&config.gpu);
    let clock = Arc::new(SystemClock);
    let (daemon, report) = Daemon::start_on(&config, clock, inventory, listener).await?;
    tracing::info!(
        addr = %daemon.addr(),
        journal = %config.journal_dir.display(),
        runtime = %config.runtime_dir.display(),
        replayed_to_seq = report.replayed_to_seq,
        events_folded = report.events_folded,
        snapshot_seq = ?report.from_snapshot_seq,
        replay_ms = report.replay_ms,
        pools = report.pools,
        require_gpu = config.require_gpu,
        "pool-managerd listening"
    );
    if report.quarantined > 0 {
        tracing::warn!(
            records = report.quarantined,
            "damaged records at the journal's tail were quarantined (see the journal's quarantine/ folder)"
        );
    }
    // `Daemon::start` returns once the journal is replayed (snapshot + tail), the start-up
    // events are durable and the listener is bound: the API answers from here on.
    notify_systemd(&format!(
        "READY=1\nSTATUS=listening on {}, journal at seq {}",
        daemon.addr(),
        report.replayed_to_seq
    ));
    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
    .map(|every| {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "systemd watchdog: pinging while the node actor answers"
        );
        tokio::spawn(watchdog(daemon.handle(), every))
    });
    let reason = signals.first().await;
    notify_systemd("STOPPING=1");
    if let Some(task) = watchdog {
        task.abort();
    }
    tracing::info!(
        reason,
        "shutting down; engines keep running unless stop_engines_on_shutdown"
    );
    daemon.shutdown(reason).await;
    Ok(ExitCode::SUCCESS)
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (sd_watchdog_enabled(3)), when it is
/// set, positive, and `WATCHDOG_PID` is unset or names this process (the unit may mean
/// another process of it).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Sends `WATCHDOG=1` every `every`, but only after a round trip through the node actor
/// answered within `every`: a stuck actor (the loop that owns the state) stops the pings, and
/// systemd restarts the daemon, as it does when the whole process hangs.
async fn watchdog(node: NodeHandle, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(every, actor_answers(&node)).await {
            Ok(true) => notify_systemd("WATCHDOG=1"),
            Ok(false) => {
                tracing::error!("systemd watchdog: the node actor is gone; no more pings");
                return;
            }
            Err(_) => tracing::warn!(
                waited_ms = every.as_millis() as u64,
                "systemd watchdog: the node actor did not answer in time; ping withheld"
            ),
        }
    }
}

/// A cheap round trip through the node actor: the release of a lease id that the daemon
/// never grants (granted ids are `lease-<16 hex digits>`), which `decide` refuses with
/// `POOL_NOT_FOUND` / `LEASE_NOT_FOUND`, journaling nothing. Any answer means the actor's
/// loop runs (a journal failure too: the daemon is alive, and says so in `/health`); only a
/// closed inbox means it is gone.
async fn actor_answers(node: &NodeHandle) -> bool {
    let (Ok(pool_id), Ok(lease_id)) = (
        pool_core::PoolId::new("systemd-watchdog"),
        pool_core::LeaseId::new("systemd-watchdog-probe"),
    ) else {
        return false;
    };
    !matches!(
        node.submit(pool_core::Command::ReleaseLease { pool_id, lease_id })
            .await,
        Err(NodeError::ShuttingDown)
    )
}

/// SIGTERM and SIGINT, caught from the moment this is made: made before the daemon answers
/// anyone, so that a stop asked for as soon as it is ready (`READY=1`, or a first `/health`)
/// is a clean shutdown, never the default action of the signal.
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn catch() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT, naming which.
    pub async fn first(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Resolves on SIGTERM or SIGINT, naming which (handlers installed now: see [`StopSignals`]).
pub async fn wait_for_signal() -> &'static str {
    match StopSignals::catch() {
        Ok(mut signals) => signals.first().await,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state through `$NOTIFY_SOCKET`, when set;
/// a no-op elsewhere. Failures are logged, never fatal.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!("sd_notify: cannot create a socket: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY of the test: this is the only test in this binary that sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify_systemd("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let half = Some(Duration::from_millis(1500));
        assert_eq!(watchdog_interval(Some("3000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("3000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("3000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("3000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }
}
