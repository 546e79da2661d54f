//! The OpenAPI document against the running daemon (issue 8 item 5): `pool-managerd serve
//! --dev` as a child on a free port, then schemathesis (a property-based API tester from PyPI,
//! pinned in `.ci/run`) generates requests for every operation of `GET /openapi.json` and
//! fails on any 5xx (`not_a_server_error`) or any answer that breaks the document
//! (`response_schema_conformance`).
//!
//! Preload bodies name binaries to spawn: the daemon runs with `allowed_binaries` set to an
//! empty directory, so every fuzzed preload is refused with 403 `BINARY_NOT_ALLOWED` (a
//! documented answer) before anything is spawned.
//!
//! Excluded: `POST /v2/pools/{id}/handoff`, because the daemon probes the `url` of the body
//! (`{url}/health`): fuzzed bodies would send requests to arbitrary hosts, and this test sends
//! traffic to loopback only. Its schema is still checked by the document's unit tests
//! (`src/api/openapi.rs`) and its behaviour by `tests/handoff.rs`.
//!
//! Without schemathesis the test fails under `CI=true` and is skipped (with the reason
//! printed) elsewhere. `SCHEMATHESIS` names the executable; else `schemathesis` on `PATH` or
//! in `~/.local/bin`.

#[path = "support/process.rs"]
mod process;
#[path = "support/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serve::ServeCommand;

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");
/// Generated cases per operation and phase (the whole run stays well under two minutes on
/// two cores).
const EXAMPLES: &str = "60";
/// Fixed, so that a finding reproduces.
const SEED: &str = "20261123";

/// The schemathesis executable, with its version line.
fn schemathesis() -> Result<(PathBuf, String), String> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(PathBuf::from("schemathesis"));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/schemathesis"));
    }
    for candidate in &candidates {
        if let Ok(output) = Command::new(candidate).arg("--version").output() {
            if output.status.success() {
                let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
                return Ok((candidate.clone(), version));
            }
        }
    }
    Err(format!(
        "schemathesis not found (tried {candidates:?}); `bash .ci/run` installs it, or \
         `python3 -m pip install --user schemathesis`"
    ))
}

#[test]
fn the_daemon_conforms_to_its_openapi_document() {
    let (schemathesis, version) = match schemathesis() {
        Ok(found) => found,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    eprintln!("using {} ({version})", schemathesis.display());

    let dir = tempfile::tempdir().unwrap();
    let nothing_executable = dir.path().join("no-engines");
    std::fs::create_dir(&nothing_executable).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "allowed_binaries = [{:?}]\n",
            nothing_executable.display().to_string()
        ),
    )
    .unwrap();
    let mut child = ServeCommand::new(BIN, dir.path())
        .dev()
        .config(&config)
        .start();
    let base = child.base();
    let output = Command::new(&schemathesis)
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            // One worker: with several, hypothesis parses lambda sources with `ast` from
            // several threads at once, which CPython 3.11 can fail ("AST constructor recursion
            // depth mismatch"), a crash of the tester rather than a finding.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--exclude-path",
            "/v2/pools/{id}/handoff",
        ])
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}; seed {SEED}); the daemon's log:\n{}",
        output.status.code(),
        child.log_text()
    );
    assert!(
        report.contains("passed"),
        "schemathesis ran no test case: {report}"
    );
    assert!(
        child.guard.0.try_wait().unwrap().is_none(),
        "the daemon died"
    );
}
