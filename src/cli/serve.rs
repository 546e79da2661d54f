//! `pool-managerd serve`: the daemon.
//!
//! Owns: loading the configuration (file < environment < flags), the runtime, signal handling
//! (SIGTERM / ctrl-c: clean shutdown; engines keep running unless `stop_engines_on_shutdown`).
//! Never: holds daemon logic; `daemon::Daemon` does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::config::{relevant_env, Config, Overrides, Sources};
use crate::daemon::Daemon;

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
    let (daemon, report) = Daemon::start(&config, Arc::new(SystemClock)).await?;
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
    notify_systemd("READY=1");
    let reason = wait_for_signal().await;
    notify_systemd("STOPPING=1");
    tracing::info!(
        reason,
        "shutting down; engines keep running unless stop_engines_on_shutdown"
    );
    daemon.shutdown(reason).await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT, naming which.
pub async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    match (terminate, interrupt) {
        (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        },
        _ => {
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
}
