//! The daemon as its own process: `pool-managerd serve` (the real binary), started by a
//! scenario that needs to kill it for real (`kill -9`): the adoption feature. The in-process
//! daemon of `live.rs` can only be shut down cleanly; a process can be killed in the middle of
//! anything, as a crash or an OOM kill would.
//!
//! The process gets the scenario's configuration as a TOML file (`Config::to_toml`, which
//! `serve --config` reads back), a free loopback port chosen here, and the scenario's
//! directories; its standard error goes to `<dir>/daemon.log` (appended across starts), which
//! a failure message quotes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pool_managerd::config::Config;

use crate::serve::{Serve, ServeCommand};

/// The daemon binary built with the tests.
const DAEMON: &str = env!("CARGO_BIN_EXE_pool-managerd");
/// How long a started process may take to answer `GET /health`.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a SIGTERM may take before the clean-up sends SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(10);
/// The daemon's log, in the scenario's directory.
const LOG_FILE: &str = "daemon.log";
/// The most of the daemon's log a failure message quotes.
const LOG_TAIL_BYTES: usize = 4_000;

/// A running `pool-managerd serve` child.
pub struct DaemonProcess {
    serve: Serve,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `serve` with `config` (its address, directories and policies) and waits until it
    /// answers `GET /health`; returns it with its base URL.
    pub async fn start(config: &Config, dir: &Path, http: &reqwest::Client) -> (Self, String) {
        let config_path = dir.join("daemon.toml");
        std::fs::write(&config_path, config.to_toml())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let log = dir.join(LOG_FILE);
        let serve = ServeCommand::bare(DAEMON, config.addr.port(), log.clone())
            .config(&config_path)
            .spawn();
        let mut process = DaemonProcess { serve, log };
        let base = format!("http://{}", config.addr);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(response) = http.get(format!("{base}/health")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = process.serve.guard.0.try_wait() {
                panic!(
                    "pool-managerd serve exited ({status}) before answering:\n{}",
                    process.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pool-managerd serve did not answer GET /health within {START_WAIT:?}:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (process, base)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.serve.guard.0.id()
    }

    /// `kill -9`: the daemon gets no chance to do anything; waits until it is gone.
    pub fn kill_hard(mut self) {
        // `Child::kill` is SIGKILL.
        self.serve
            .guard
            .0
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL to the daemon (pid {}): {e}", self.pid()));
        let _ = self.serve.guard.0.wait();
    }

    /// SIGTERM, the clean shutdown `serve` handles; SIGKILL after [`TERM_WAIT`]. Returns how
    /// it ended, for the clean-up's report (`None`: it had to be killed).
    pub async fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        if kill(pid, Signal::SIGTERM).is_err() {
            return self.serve.guard.0.wait().ok();
        }
        let deadline = Instant::now() + TERM_WAIT;
        loop {
            if let Ok(Some(status)) = self.serve.guard.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.serve.guard.0.kill();
                let _ = self.serve.guard.0.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The end of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = text.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }
}

/// The whole log of the daemon processes of the scenario whose runtime directory is
/// `runtime_dir` (the log lives next to it).
pub fn read_log(runtime_dir: &Path) -> String {
    let log = runtime_dir
        .parent()
        .map(|dir| dir.join(LOG_FILE))
        .unwrap_or_else(|| panic!("the runtime directory has a parent"));
    let text = std::fs::read(&log)
        .unwrap_or_else(|e| panic!("{}: {e} (is the daemon in its own process?)", log.display()));
    String::from_utf8_lossy(&text).into_owned()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("a free loopback port: {e}"))
}
