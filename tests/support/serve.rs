//! `pool-managerd serve` as a child process, one way for every test and bench that needs the
//! real binary (signals, systemd, limits, a SIGKILL): its runtime and journal under one
//! directory, its log captured to a file, the caller's `POOL_MANAGERD_*` and `LLORCH_*`
//! variables removed (so that the developer's shell cannot change a test), a bounded wait for
//! `/health`, and SIGTERM then SIGKILL on drop (a [`ChildGuard`]).
//!
//! Include it beside `process.rs` (`#[path = "support/serve.rs"] mod serve;` after
//! `#[path = "support/process.rs"] mod process;`).
#![allow(dead_code)] // each test crate uses its own part of this file

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{free_port, wait_healthy, ChildGuard};

/// How long a started daemon has to answer `/health` (a loaded machine runs the whole suite).
pub const START_WAIT: Duration = Duration::from_secs(60);

/// A `serve` command being prepared.
pub struct ServeCommand {
    command: Command,
    port: u16,
    log: PathBuf,
}

impl ServeCommand {
    /// `bin serve --addr 127.0.0.1:<a free port> --runtime-dir <dir>/runtime --journal-dir
    /// <dir>/journal`, its stdout and stderr to `<dir>/serve-<port>.log`, `RUST_LOG=info`.
    pub fn new(bin: impl AsRef<OsStr>, dir: &Path) -> ServeCommand {
        ServeCommand::on_port(bin, dir, free_port())
    }

    /// [`ServeCommand::new`] on a given port (a restart on the same address).
    pub fn on_port(bin: impl AsRef<OsStr>, dir: &Path, port: u16) -> ServeCommand {
        let log = dir.join(format!("serve-{port}.log"));
        ServeCommand::bare(bin, port, log)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-dir")
            .arg(dir.join("runtime"))
            .arg("--journal-dir")
            .arg(dir.join("journal"))
    }

    /// `bin serve` with nothing else (the caller's `--config` names the address, on `port`,
    /// and the directories), its output appended to `log`.
    pub fn bare(bin: impl AsRef<OsStr>, port: u16, log: PathBuf) -> ServeCommand {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .stdin(Stdio::null())
            .env("RUST_LOG", "info");
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let ours = key.starts_with("POOL_MANAGERD_") || key.starts_with("LLORCH_");
            if ours || key == "NOTIFY_SOCKET" || key.starts_with("WATCHDOG_") {
                command.env_remove(key);
            }
        }
        ServeCommand { command, port, log }
    }

    /// `--dev` (no GPU required, engines may run as root).
    pub fn dev(self) -> ServeCommand {
        self.arg("--dev")
    }

    /// `--config <path>`.
    pub fn config(self, path: &Path) -> ServeCommand {
        self.arg("--config").arg(path)
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ServeCommand {
        self.command.arg(arg);
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServeCommand {
        self.command.env(key, value);
        self
    }

    /// Its log (stdout and stderr) to `path` instead of `<dir>/serve-<port>.log`.
    pub fn log_to(mut self, path: PathBuf) -> ServeCommand {
        self.log = path;
        self
    }

    /// The command itself, for anything else (a `pre_exec`).
    pub fn command(&mut self) -> &mut Command {
        &mut self.command
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it without waiting.
    pub fn spawn(mut self) -> Serve {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let out = log.try_clone().expect("a second descriptor of the log");
        self.command.stdout(out).stderr(log);
        let child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.command));
        Serve {
            guard: ChildGuard(child),
            port: self.port,
            log: self.log,
        }
    }

    /// Starts it and waits until `/health` answers 200 (within [`START_WAIT`]); panics with the
    /// daemon's log otherwise.
    pub fn start(self) -> Serve {
        let mut serve = self.spawn();
        serve.wait_healthy(START_WAIT);
        serve
    }
}

/// A running `serve`; SIGTERM, then SIGKILL, on drop.
pub struct Serve {
    /// The child.
    pub guard: ChildGuard,
    /// Where it listens (`127.0.0.1`).
    pub port: u16,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Serve {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` answers 200, `within` at most; panics with the log otherwise.
    pub fn wait_healthy(&mut self, within: Duration) {
        if let Err(why) = wait_healthy(&mut self.guard, self.port, within) {
            panic!("{why}; its log:\n{}", self.log_text());
        }
    }
}
