//! Engines as the scenarios see them from outside the daemon: the prepared engines they send
//! (engine-sim, the workspace's test engine, and Python's `http.server`, a plain HTTP server
//! with a health route), free ports, and what `/proc` says about a running engine.
//!
//! An engine is named by its pid *and* its start time (`/proc/<pid>/stat` field 22, as the
//! daemon records it in `EngineSpawned`), so that a reused pid is never taken for our engine:
//! not when a step checks that an engine is gone, and not when the clean-up kills a survivor.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The test engine binary of the workspace.
pub const ENGINE_SIM: &str = env!("CARGO_BIN_EXE_engine-sim");

/// The engine version a prepared engine-sim announces (the engine's `/props` refines it).
pub const PREPARED_VERSION: &str = "engine-sim-prepared";

pub use crate::process::free_port;

/// The model path a scenario's pool serves (the file need not exist for engine-sim).
pub fn model_path(pool: &str) -> String {
    format!("/models/{pool}.gguf")
}

/// A prepared engine (SPEC section 5) that runs engine-sim for `pool` on `port`, with
/// `extra` flags (whitespace-separated) after `--port` and `-m`.
pub fn engine_sim(pool: &str, port: u16, extra: &str) -> Value {
    let mut flags = vec![
        "--port".to_string(),
        port.to_string(),
        "-m".to_string(),
        model_path(pool),
    ];
    flags.extend(extra.split_whitespace().map(str::to_string));
    json!({
        "binary_path": ENGINE_SIM,
        "flags": flags,
        "host": "127.0.0.1",
        "port": port,
        "model_path": model_path(pool),
        "engine_version": PREPARED_VERSION,
        "pool_id": pool,
        "replica_id": "r0",
        "engine": "engine-sim",
    })
}

/// The first `python3` binary on `PATH`, if there is one. Wrapper scripts (pyenv's shims)
/// are passed over: the engine's `/proc/<pid>/exe` must be the binary it was started as.
pub fn python3() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| {
            let mut magic = [0u8; 4];
            std::fs::File::open(candidate)
                .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
                .is_ok_and(|()| &magic == b"\x7fELF")
        })
}

/// A prepared engine that runs `python3 -m http.server` on `port`, serving `root`: an HTTP
/// server that is no inference engine at all, with `/` as its health route (a directory
/// listing, 200), no `/props` and no `--parallel` flag.
pub fn python_http_server(pool: &str, port: u16, root: &Path) -> Value {
    let python = python3().unwrap_or_else(|| {
        panic!("python3 is not on PATH: install it (Debian: apt-get install python3)")
    });
    json!({
        "binary_path": python.display().to_string(),
        "flags": [
            "-m", "http.server",
            "--bind", "127.0.0.1",
            "--directory", root.display().to_string(),
            port.to_string(),
        ],
        "host": "127.0.0.1",
        "port": port,
        "model_path": model_path(pool),
        "engine_version": "python3-http.server",
        "pool_id": pool,
        "replica_id": "r0",
        "engine": "python-http.server",
        "health_path": "/",
    })
}

/// One engine process, as the daemon recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineProcess {
    /// Its pid.
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 when it was spawned.
    pub start_time: u64,
}

impl EngineProcess {
    /// Reads `/proc/<pid>/<what>` of this engine; `None` once it is gone.
    fn proc_file(&self, what: &str) -> Option<Vec<u8>> {
        std::fs::read(format!("/proc/{}/{what}", self.pid)).ok()
    }

    /// `/proc/<pid>/stat` after the command name (which may hold spaces): field 3 onwards.
    fn stat_fields(&self) -> Option<Vec<String>> {
        let stat = String::from_utf8(self.proc_file("stat")?).ok()?;
        let after = stat.get(stat.rfind(')')? + 1..)?;
        Some(after.split_whitespace().map(str::to_string).collect())
    }

    /// Whether this very process still runs: its pid exists, with the recorded start time,
    /// and it is not a zombie.
    pub fn is_running(&self) -> bool {
        let Some(fields) = self.stat_fields() else {
            return false;
        };
        let state = fields.first().map(String::as_str);
        let start_time = fields.get(19).and_then(|t| t.parse::<u64>().ok());
        state != Some("Z") && state != Some("X") && start_time == Some(self.start_time)
    }

    /// The process group and session ids (`/proc/<pid>/stat` fields 5 and 6).
    pub fn group_and_session(&self) -> (u32, u32) {
        let fields = self
            .stat_fields()
            .unwrap_or_else(|| panic!("engine pid {} is gone", self.pid));
        let field = |i: usize| -> u32 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("/proc/{}/stat field {}: {fields:?}", self.pid, i + 3))
        };
        (field(2), field(3))
    }

    /// The command line (`/proc/<pid>/cmdline`): the program and its arguments.
    pub fn cmdline(&self) -> Vec<String> {
        split_nul(
            &self
                .proc_file("cmdline")
                .unwrap_or_else(|| panic!("engine pid {} is gone", self.pid)),
        )
    }

    /// The environment the engine was started with (`/proc/<pid>/environ`), as name/value.
    pub fn environment(&self) -> Vec<(String, String)> {
        split_nul(
            &self
                .proc_file("environ")
                .unwrap_or_else(|| panic!("engine pid {} is gone", self.pid)),
        )
        .into_iter()
        .map(|entry| match entry.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (entry, String::new()),
        })
        .collect()
    }

    /// Where a file descriptor of the engine points (`readlink /proc/<pid>/fd/<fd>`).
    pub fn fd_target(&self, fd: u32) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/fd/{fd}", self.pid))
            .unwrap_or_else(|e| panic!("readlink /proc/{}/fd/{fd}: {e}", self.pid))
    }

    /// The binary the engine runs (`/proc/<pid>/exe`).
    pub fn exe(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.pid))
            .unwrap_or_else(|e| panic!("readlink /proc/{}/exe: {e}", self.pid))
    }

    /// Sends `signal` to this engine's process group, if it is still this engine. Returns
    /// whether it was running.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) -> bool {
        if !self.is_running() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        if pid <= 1 {
            return false;
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal).is_ok()
    }
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// A prepared engine that runs engine-sim for `pool` on `port` with the flags read from
/// `flags_file` at each start: `/bin/sh` reads the file and execs engine-sim (same pid), so a
/// scenario decides what the *next* start of a crash-looping pool does (crash, print a CUDA
/// error, serve) by rewriting the file, without a new preload.
pub fn switchable_engine_sim(pool: &str, port: u16, flags_file: &Path) -> Value {
    json!({
        "binary_path": "/bin/sh",
        "flags": [
            "-c",
            r#"flags=$(cat "$1") || exit 97; shift; exec "$@" $flags"#,
            "engine-switch",
            flags_file.display().to_string(),
            ENGINE_SIM,
            "--port", port.to_string(),
            "-m", model_path(pool),
        ],
        "host": "127.0.0.1",
        "port": port,
        "model_path": model_path(pool),
        "engine_version": PREPARED_VERSION,
        "pool_id": pool,
        "replica_id": "r0",
        "engine": "engine-sim",
    })
}
