//! The binary, end to end: `pool-managerd journal {import,export,verify,stats,show,repair}`,
//! `replay` and `explain --journal-dir` on the recorded journals of `replay-tests/journals/`, in temp dirs, and every
//! error an operator can meet (missing or foreign directory, bad import, corruption, a torn
//! tail, a journal in use), each with its exit code and a message that names the path or the
//! seq and what to do.
//!
//! Damage is done through the journal crate's raw store (`SledStore::put_raw`) after the CLI
//! has exited, as `journal/tests/recovery.rs` does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_journal::{JournalConfig, SledStore, Store};
use pool_managerd::schema::PoolJournal;
use pool_managerd::table::format_ts_ms;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// No command may take longer (a hang on a lock must fail the test, not block CI).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// What a run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    fn failed(self) -> Run {
        assert_ne!(self.code, 0, "expected a failure, got {self:#?}");
        assert!(
            self.stderr.contains("error: "),
            "a failure says 'error: ' on stderr: {self:#?}"
        );
        self
    }

    /// A failure that need not say `error:` (verify's exit 1 lists problems on stdout).
    fn failed_quietly(self) -> Run {
        assert_ne!(self.code, 0, "expected a failure, got {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `pool-managerd args..` in the repository root, with no journal dir in the environment.
fn run(args: &[&str]) -> Run {
    run_with(args, &[])
}

fn run_with(args: &[&str], env: &[(&str, &Path)]) -> Run {
    run_in(Path::new(ROOT), args, env)
}

/// Runs `pool-managerd args..` in `cwd` with `env` added.
fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let started = Instant::now();
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("POOL_MANAGERD_JOURNAL_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn pool-managerd");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pool-managerd") {
            break status;
        }
        if started.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pool-managerd {args:?} did not finish within {COMMAND_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        took: started.elapsed(),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn recorded_journals() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("replay-tests/journals");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 4,
        "expected the recorded journals in {}",
        dir.display()
    );
    paths
}

fn recorded(name: &str) -> PathBuf {
    Path::new(ROOT)
        .join("replay-tests/journals")
        .join(format!("{name}.ndjson"))
}

/// The export lines of an NDJSON file, parsed.
fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("an export line is JSON"))
        .collect()
}

/// A new temp dir and the journal dir inside it (not created yet).
fn journal_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("journal");
    (tmp, dir)
}

/// Imports `file` into the journal at `dir` with the CLI.
fn import(file: &Path, dir: &Path) -> Run {
    run(&[
        "journal",
        "import",
        path_str(file),
        "--journal-dir",
        path_str(dir),
    ])
}

/// Runs `f` on the raw live store of the (closed) journal at `dir`, then syncs.
fn with_store(dir: &Path, f: impl FnOnce(&SledStore)) {
    let store = SledStore::open(&pool_journal::live_store_dir(dir), 8 * 1024 * 1024)
        .expect("raw store open");
    f(&store);
    store.sync().expect("sync");
}

fn pools_of(lines: &[Value]) -> Vec<String> {
    let mut pools: Vec<String> = lines
        .iter()
        .filter_map(|line| line["pool_id"].as_str().map(str::to_string))
        .collect();
    pools.sort();
    pools.dedup();
    pools
}

// ---- the recorded journals through every read command ---------------------------------------

#[test]
fn every_recorded_journal_imports_verifies_exports_and_replays() {
    for file in recorded_journals() {
        let name = file.display().to_string();
        let lines = lines_of(&file);
        let records = lines.len() as u64;
        let (_tmp, dir) = journal_dir();
        let d = path_str(&dir);

        let imported = import(&file, &dir).ok();
        assert!(
            imported
                .stderr
                .contains(&format!("imported {records} event(s)")),
            "{name}: {imported:#?}"
        );

        let verified = run(&["journal", "verify", "--journal-dir", d]).ok();
        assert!(
            verified
                .stdout
                .contains(&format!("{records} record(s) checked, seq 1..={records}")),
            "{name}: {verified:#?}"
        );
        assert!(verified.stdout.contains("ok: "), "{name}: {verified:#?}");

        // Export: the very bytes that were imported, on stdout and with -o.
        let original = std::fs::read_to_string(&file).expect("read the journal file");
        let exported = run(&["journal", "export", "--journal-dir", d]).ok();
        assert!(
            exported.stdout == original,
            "{name}: the export differs from the imported file"
        );
        let out_file = dir.with_file_name("export.ndjson");
        run(&[
            "journal",
            "export",
            "--journal-dir",
            d,
            "-o",
            path_str(&out_file),
        ])
        .ok();
        assert_eq!(
            std::fs::read_to_string(&out_file).expect("read -o file"),
            original,
            "{name}: export -o"
        );

        // Stats: text and JSON; the counts per kind add up to the records.
        let stats = run(&["journal", "stats", "--journal-dir", d]).ok();
        assert!(
            stats.stdout.contains(&format!("events:       {records}")),
            "{name}: {stats:#?}"
        );
        let stats = run(&["journal", "stats", "--journal-dir", d, "--json"])
            .ok()
            .json();
        assert_eq!(stats["records"], records, "{name}: {stats}");
        assert_eq!(stats["first_seq"], 1, "{name}: {stats}");
        assert_eq!(stats["last_seq"], records, "{name}: {stats}");
        let by_kind = stats["by_kind"].as_object().expect("by_kind is an object");
        let sum: u64 = by_kind.values().map(|n| n.as_u64().expect("a count")).sum();
        assert_eq!(sum, records, "{name}: {stats}");
        for line in &lines {
            let kind = line["event"]["kind"].as_str().expect("kind");
            assert!(by_kind.contains_key(kind), "{name}: {kind} not in {stats}");
        }
        assert_eq!(stats["first_ts_ms"], lines[0]["ts_ms"], "{name}");
        assert_eq!(
            stats["last_ts_ms"],
            lines[lines.len() - 1]["ts_ms"],
            "{name}"
        );

        // Show: one line per event; --json is the export format itself.
        let shown = run(&["journal", "show", "--journal-dir", d]).ok();
        assert_eq!(shown.stdout.lines().count() as u64, records, "{name}");
        assert!(shown.stdout.starts_with("#1 "), "{name}: {}", shown.stdout);
        let shown_json = run(&["journal", "show", "--journal-dir", d, "--json"]).ok();
        assert!(
            shown_json.stdout == original,
            "{name}: show --json differs from the export format"
        );

        // Per pool: show and replay.
        for pool in pools_of(&lines) {
            let expected = lines
                .iter()
                .filter(|line| line["pool_id"].as_str() == Some(pool.as_str()))
                .count();
            let shown = run(&["journal", "show", "--journal-dir", d, "--pool", &pool]).ok();
            assert_eq!(shown.stdout.lines().count(), expected, "{name} {pool}");
            for line in shown.stdout.lines() {
                assert_eq!(
                    line.split_whitespace().nth(2),
                    Some(pool.as_str()),
                    "{name}: a line of another pool in show --pool {pool}: {line}"
                );
            }
            let removed = lines
                .iter()
                .rev()
                .find(|line| line["pool_id"].as_str() == Some(pool.as_str()))
                .is_some_and(|line| line["event"]["kind"] == "PoolRemoved");
            if removed {
                // A pool removed by the end of the journal is not in its registry.
                let gone = run(&["replay", "--journal-dir", d, "--pool", &pool]).failed();
                assert!(gone.stderr.contains("not in the registry"), "{gone:#?}");
                continue;
            }
            let replayed = run(&["replay", "--journal-dir", d, "--pool", &pool, "--json"])
                .ok()
                .json();
            let pools = replayed["pools"].as_array().expect("pools");
            assert_eq!(pools.len(), 1, "{name}: {replayed}");
            assert_eq!(pools[0]["pool_id"], pool.as_str(), "{name}");
            let table = run(&["replay", "--journal-dir", d, "--pool", &pool]).ok();
            assert_eq!(table.stdout.lines().count(), 3, "{name}: {}", table.stdout);
        }

        // Replay: the table, JSON to the end, and JSON to seq 3.
        let table = run(&["replay", "--journal-dir", d]).ok();
        assert!(
            table
                .stdout
                .starts_with(&format!("registry as of seq {records} (")),
            "{name}: {}",
            table.stdout
        );
        assert!(table.stdout.contains("POOL"), "{name}: {}", table.stdout);
        let end = run(&["replay", "--journal-dir", d, "--json"]).ok().json();
        assert_eq!(end["as_of_seq"], records, "{name}");
        assert_eq!(
            end["as_of_ts_ms"],
            lines[lines.len() - 1]["ts_ms"],
            "{name}"
        );
        let removed_at_end = pools_of(&lines)
            .iter()
            .filter(|pool| {
                lines
                    .iter()
                    .rev()
                    .find(|line| line["pool_id"].as_str() == Some(pool.as_str()))
                    .is_some_and(|line| line["event"]["kind"] == "PoolRemoved")
            })
            .count();
        assert_eq!(
            end["pools"].as_array().expect("pools").len(),
            pools_of(&lines).len() - removed_at_end,
            "{name}: {end}"
        );
        let at_3 = run(&["replay", "--until-seq", "3", "--journal-dir", d, "--json"])
            .ok()
            .json();
        assert_eq!(at_3["as_of_seq"], 3, "{name}");
        assert_eq!(at_3["as_of_ts_ms"], lines[2]["ts_ms"], "{name}");
        let table = run(&["replay", "--until-seq", "3", "--journal-dir", d]).ok();
        assert!(
            table.stdout.starts_with("registry as of seq 3 ("),
            "{name}: {}",
            table.stdout
        );
        assert!(
            table
                .stdout
                .contains(&format!("journal last seq {records}")),
            "{name}: {}",
            table.stdout
        );
    }
}

/// README's quick start: import the crash loop, replay it, and replay it to seq 3 (the first
/// backoff after a failed spawn).
#[test]
fn the_readme_quick_start_shows_the_crash_loop_and_its_first_backoff() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("crash-loop"), &dir).ok();
    let end = run(&["replay", "--journal-dir", d]).ok();
    let row = end.stdout.lines().nth(2).expect("a pool row");
    assert!(row.starts_with("chat-13b  ready"), "{}", end.stdout);
    let at_3 = run(&["replay", "--journal-dir", d, "--until-seq", "3"]).ok();
    let row = at_3.stdout.lines().nth(2).expect("a pool row");
    assert!(row.starts_with("chat-13b  backoff"), "{}", at_3.stdout);
    assert!(row.contains("spawn failed"), "{}", at_3.stdout);
}

#[test]
fn replay_until_a_time_stops_at_the_last_event_at_or_before_it() {
    let file = recorded("crash-loop");
    let lines = lines_of(&file);
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&file, &dir).ok();
    let ts = |i: usize| lines[i]["ts_ms"].as_u64().expect("ts_ms");
    let last_at_or_before = |t: u64| {
        lines
            .iter()
            .filter(|line| line["ts_ms"].as_u64().expect("ts_ms") <= t)
            .map(|line| line["seq"].as_u64().expect("seq"))
            .max()
            .unwrap_or(0)
    };
    // Exactly at an event's time (with milliseconds), between two events (whole seconds), and
    // without the zone (taken as UTC).
    let at_event = ts(9);
    let between = (ts(13) + ts(14)) / 2 / 1000 * 1000;
    for (until, t) in [
        (format_ts_ms(at_event), at_event),
        (format_ts_ms(between).replace(".000Z", "Z"), between),
        (format_ts_ms(between).replace(".000Z", ""), between),
    ] {
        let replayed = run(&["replay", "--journal-dir", d, "--until", &until, "--json"])
            .ok()
            .json();
        let expected = last_at_or_before(t);
        assert_eq!(
            replayed["as_of_seq"], expected,
            "--until {until}: {replayed}"
        );
        assert!(replayed["as_of_ts_ms"].as_u64().expect("as_of_ts_ms") <= t);
    }
    // Before the first event: the empty registry.
    let before = format_ts_ms(ts(0) - 60_000);
    let replayed = run(&["replay", "--journal-dir", d, "--until", &before, "--json"])
        .ok()
        .json();
    assert_eq!(replayed["as_of_seq"], 0, "{replayed}");
    assert_eq!(replayed["pools"], serde_json::json!([]), "{replayed}");
    let table = run(&["replay", "--journal-dir", d, "--until", &before]).ok();
    assert!(table.stdout.contains("(no pools)"), "{}", table.stdout);
    // Not a time.
    let bad = run(&["replay", "--journal-dir", d, "--until", "yesterday"]).failed();
    assert!(bad.stderr.contains("--until 'yesterday'"), "{bad:#?}");
    assert!(bad.stderr.contains("RFC 3339"), "{bad:#?}");
}

/// The README's post-mortem: the crash loop explained offline at seq 27, where its breaker had
/// just opened; the same as JSON; errors that name the pool, the seq and the directory.
#[test]
fn explain_tells_the_crash_loop_at_its_breaker_offline() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("crash-loop"), &dir).ok();
    let at_27 = run(&["explain", "chat-13b", "--journal-dir", d, "--at-seq", "27"]).ok();
    let text = &at_27.stdout;
    assert!(
        text.starts_with("pool chat-13b: circuit open since"),
        "{text}"
    );
    assert!(text.contains("5 consecutive"), "{text}");
    assert!(text.contains("seqs 2, 8, 14, 20, 26"), "{text}");
    assert!(
        text.contains("half-open trial at 2026-03-03T02:07:16.843Z"),
        "{text}"
    );
    assert!(
        text.contains("POST /v2/pools/chat-13b/breaker/reset"),
        "{text}"
    );
    let json = run(&[
        "explain",
        "chat-13b",
        "--journal-dir",
        d,
        "--at-seq",
        "27",
        "--json",
    ])
    .ok();
    let body: Value = serde_json::from_str(&json.stdout).expect("explain --json prints JSON");
    assert_eq!(body["phase"], "circuit_open", "{body}");
    assert_eq!(body["as_of_seq"], 27, "{body}");
    assert_eq!(body["since"]["seq"], 27, "{body}");
    let now = run(&["explain", "chat-13b", "--journal-dir", d]).ok();
    assert!(now.stdout.starts_with("pool chat-13b: ready"), "{now:#?}");
    let past = run(&["explain", "chat-13b", "--journal-dir", d, "--at-seq", "99"]).failed();
    assert!(past.stderr.contains("--at-seq 99"), "{past:#?}");
    assert!(past.stderr.contains("(seq 32)"), "{past:#?}");
    let unknown = run(&["explain", "ghost", "--journal-dir", d]).failed();
    assert!(
        unknown.stderr.contains("pool ghost does not exist"),
        "{unknown:#?}"
    );
    assert!(unknown.stderr.contains(d), "{unknown:#?}");
}

#[test]
fn replay_past_the_end_or_of_an_unknown_pool_is_an_error() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("preload-ok"), &dir).ok();
    let records = lines_of(&recorded("preload-ok")).len();
    let past = run(&["replay", "--journal-dir", d, "--until-seq", "9999"]).failed();
    assert!(past.stderr.contains("--until-seq 9999"), "{past:#?}");
    assert!(
        past.stderr.contains(&format!("last seq {records}")),
        "{past:#?}"
    );
    assert!(past.stderr.contains(d), "{past:#?}");
    assert!(
        past.stderr.contains(&format!("pass a seq up to {records}")),
        "{past:#?}"
    );
    // The last seq itself is fine.
    run(&[
        "replay",
        "--journal-dir",
        d,
        "--until-seq",
        &records.to_string(),
    ])
    .ok();
    let unknown = run(&["replay", "--journal-dir", d, "--pool", "no-such-pool"]).failed();
    assert!(unknown.stderr.contains("'no-such-pool'"), "{unknown:#?}");
    assert!(unknown.stderr.contains("without --pool"), "{unknown:#?}");
}

#[test]
fn show_honours_since_and_limit_and_says_when_it_stopped() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("crash-loop"), &dir).ok();
    let shown = run(&[
        "journal",
        "show",
        "--journal-dir",
        d,
        "--since",
        "5",
        "--limit",
        "3",
    ])
    .ok();
    let seqs: Vec<&str> = shown
        .stdout
        .lines()
        .map(|line| line.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(seqs, ["#5", "#6", "#7"], "{shown:#?}");
    assert!(shown.stderr.contains("--since 8"), "{shown:#?}");
    let tail = run(&["journal", "show", "--journal-dir", d, "--since", "30"]).ok();
    assert_eq!(tail.stdout.lines().count(), 3, "{tail:#?}");
    assert!(!tail.stderr.contains("stopped after"), "{tail:#?}");
    let none = run(&["journal", "show", "--journal-dir", d, "--pool", "nope"]).ok();
    assert_eq!(none.stdout, "");
    assert!(
        none.stderr.contains("no events of pool 'nope'"),
        "{none:#?}"
    );
}

#[test]
fn the_journal_dir_can_come_from_the_environment() {
    let (_tmp, dir) = journal_dir();
    import(&recorded("preload-ok"), &dir).ok();
    let replayed = run_with(
        &["replay", "--json"],
        &[("POOL_MANAGERD_JOURNAL_DIR", dir.as_path())],
    )
    .ok()
    .json();
    assert_eq!(replayed["as_of_seq"], 11, "{replayed}");
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn a_missing_journal_dir_is_an_error_that_names_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("no-such-journal");
    let m = path_str(&missing);
    for args in [
        vec!["replay", "--journal-dir", m],
        vec!["journal", "show", "--journal-dir", m],
        vec!["journal", "export", "--journal-dir", m],
        vec!["journal", "verify", "--journal-dir", m],
        vec!["journal", "stats", "--journal-dir", m],
        vec!["journal", "repair", "--journal-dir", m],
    ] {
        let failed = run(&args).failed();
        assert!(failed.stderr.contains(m), "{args:?}: {failed:#?}");
        assert!(
            failed.stderr.contains("does not exist"),
            "{args:?}: {failed:#?}"
        );
        assert!(
            failed.stderr.contains("--journal-dir"),
            "{args:?}: {failed:#?}"
        );
        // Nothing was created on the way.
        assert!(!missing.exists(), "{args:?} created {m}");
    }
    // The default directory is relative to the working directory.
    let default = run_in(tmp.path(), &["replay"], &[]).failed();
    assert!(default.stderr.contains(".runtime/journal"), "{default:#?}");
    assert!(default.stderr.contains("does not exist"), "{default:#?}");
}

#[test]
fn a_directory_or_file_that_is_not_a_journal_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "not a journal").expect("write");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a journal").expect("write");
    for dir in [&empty, &foreign] {
        let d = path_str(dir);
        for args in [
            vec!["replay", "--journal-dir", d],
            vec!["journal", "show", "--journal-dir", d],
            vec!["journal", "verify", "--journal-dir", d],
        ] {
            let failed = run(&args).failed();
            assert!(failed.stderr.contains(d), "{args:?}: {failed:#?}");
            assert!(
                failed.stderr.contains("holds no journal"),
                "{args:?}: {failed:#?}"
            );
        }
        // Read commands never create a database there.
        assert!(!dir.join("db").exists() && !dir.join("conf").exists());
    }
    let f = path_str(&file);
    let failed = run(&["replay", "--journal-dir", f]).failed();
    assert!(failed.stderr.contains("not a directory"), "{failed:#?}");
    // Import creates a journal only in a new or empty directory.
    let failed = import(&recorded("preload-ok"), &foreign).failed();
    assert!(failed.stderr.contains(path_str(&foreign)), "{failed:#?}");
    assert!(
        failed.stderr.contains("holds files but no journal"),
        "{failed:#?}"
    );
    assert!(
        !foreign.join("db").exists(),
        "import wrote into a foreign dir"
    );
    let failed = import(&recorded("preload-ok"), &file).failed();
    assert!(failed.stderr.contains("not a directory"), "{failed:#?}");
    import(&recorded("preload-ok"), &empty).ok();
    run(&["journal", "verify", "--journal-dir", path_str(&empty)]).ok();
}

#[test]
fn import_into_a_journal_that_holds_events_is_refused() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("preload-ok"), &dir).ok();
    let failed = import(&recorded("crash-loop"), &dir).failed();
    assert!(failed.stderr.contains("is not empty"), "{failed:#?}");
    assert!(failed.stderr.contains(d), "{failed:#?}");
    assert!(failed.stderr.contains("--journal-dir"), "{failed:#?}");
    // The journal is untouched.
    let exported = run(&["journal", "export", "--journal-dir", d]).ok();
    assert_eq!(
        exported.stdout,
        std::fs::read_to_string(recorded("preload-ok")).expect("read")
    );
}

#[test]
fn import_of_a_bad_file_names_the_line_and_imports_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let original = std::fs::read_to_string(recorded("drain-with-leases")).expect("read");
    let lines: Vec<&str> = original.lines().collect();

    // A gap: line 5 (seq 5) left out, so line 5 holds seq 6.
    let gap = tmp.path().join("gap.ndjson");
    let with_gap: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, line)| *line)
        .collect();
    std::fs::write(&gap, with_gap.join("\n") + "\n").expect("write");
    // Bad JSON on line 7.
    let bad_json = tmp.path().join("bad.ndjson");
    let mut broken: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    broken[6] = broken[6].replacen('}', "", 1);
    std::fs::write(&bad_json, broken.join("\n") + "\n").expect("write");
    // An unknown event kind on line 2.
    let bad_kind = tmp.path().join("kind.ndjson");
    let mut unknown: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    unknown[1] = unknown[1].replace("\"kind\":\"PreloadRequested\"", "\"kind\":\"Teleported\"");
    std::fs::write(&bad_kind, unknown.join("\n") + "\n").expect("write");

    for (file, line, what) in [
        (&gap, 5, "seq 6, expected 5"),
        (&bad_json, 7, "bad JSON"),
        (&bad_kind, 2, "Teleported"),
    ] {
        let dir = tmp.path().join(format!("journal-{line}"));
        let d = path_str(&dir);
        let failed = import(file, &dir).failed();
        assert!(
            failed.stderr.contains(&format!("import line {line}:")),
            "{failed:#?}"
        );
        assert!(failed.stderr.contains(what), "{failed:#?}");
        assert!(
            failed.stderr.contains(path_str(file)),
            "the error names the file: {failed:#?}"
        );
        assert!(
            failed.stderr.contains("nothing was imported"),
            "{failed:#?}"
        );
        // Nothing was imported: the journal is empty and a good import then works.
        let stats = run(&["journal", "stats", "--journal-dir", d, "--json"])
            .ok()
            .json();
        assert_eq!(stats["records"], 0, "{stats}");
        import(&recorded("drain-with-leases"), &dir).ok();
        run(&["journal", "verify", "--journal-dir", d]).ok();
    }

    let missing = tmp.path().join("missing.ndjson");
    let failed = import(&missing, &tmp.path().join("journal-missing")).failed();
    assert!(failed.stderr.contains(path_str(&missing)), "{failed:#?}");
    assert!(
        !tmp.path().join("journal-missing").exists(),
        "a failed read created the journal"
    );
}

#[test]
fn a_damaged_acknowledged_record_is_refused_and_repair_accept_loss_keeps_the_rest() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    let file = recorded("drain-with-leases");
    let records = lines_of(&file).len() as u64;
    assert!(records >= 20);
    import(&file, &dir).ok();
    // Flip a byte of record 2's payload in sled's file, in every copy of it there: its CRC no
    // longer matches and nothing can read it again.
    let mut record = Vec::new();
    with_store(&dir, |store| {
        record = store.get(2).expect("get").expect("present").to_vec()
    });
    let db = pool_journal::live_store_dir(&dir).join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    let mut copies = 0;
    for start in 0..bytes.len().saturating_sub(record.len()) {
        if bytes[start..start + record.len()] == record[..] {
            bytes[start + record.len() - 1] ^= 0x40;
            copies += 1;
        }
    }
    assert!(copies > 0, "sled keeps the record's bytes as they are");
    std::fs::write(&db, &bytes).expect("write db");
    let accept = format!("pool-managerd journal repair --journal-dir {d} --accept-loss");

    for args in [
        vec!["replay", "--journal-dir", d],
        vec!["replay", "--journal-dir", d, "--until-seq", "1"],
        vec!["journal", "show", "--journal-dir", d],
        vec!["journal", "stats", "--journal-dir", d],
    ] {
        let failed = run(&args).failed();
        assert!(
            failed.stderr.contains("is damaged"),
            "{args:?}: {failed:#?}"
        );
        assert!(failed.stderr.contains(d), "{args:?}: {failed:#?}");
        assert!(failed.stderr.contains(&accept), "{args:?}: {failed:#?}");
    }

    // Export saves what can be read before the damage (how much depends on how much of its
    // log sled can still read), then fails naming the damage.
    let exported = run(&["journal", "export", "--journal-dir", d]).failed();
    let original = std::fs::read_to_string(&file).expect("read");
    assert!(original.starts_with(&exported.stdout), "{exported:#?}");
    assert!(exported.stderr.contains("is damaged"), "{exported:#?}");

    let verified = run(&["journal", "verify", "--journal-dir", d]);
    assert_eq!(verified.code, 1, "{verified:#?}");
    assert!(verified.stdout.contains(&accept), "{verified:#?}");

    // Without --accept-loss, repair changes nothing and says what is lost.
    let refused = run(&["journal", "repair", "--journal-dir", d]).failed();
    assert!(refused.stderr.contains("seqs 2..=2"), "{refused:#?}");
    assert!(refused.stderr.contains(&accept), "{refused:#?}");
    run(&["journal", "verify", "--journal-dir", d]).failed_quietly();

    let repaired = run(&["journal", "repair", "--journal-dir", d, "--accept-loss"]).ok();
    assert!(
        repaired.stdout.contains("lost: seqs 2..=2"),
        "{repaired:#?}"
    );
    assert!(
        repaired.stdout.contains("the replaced files are in "),
        "{repaired:#?}"
    );

    let verified = run(&["journal", "verify", "--journal-dir", d]).ok();
    assert!(verified.stdout.contains("ok: "), "{verified:#?}");
    let replayed = run(&["replay", "--journal-dir", d, "--json"]).ok().json();
    assert_eq!(replayed["as_of_seq"], records, "{replayed}");
    // Every other event is kept as it was; seq 2 is the loss, recorded as an event.
    let exported = run(&["journal", "export", "--journal-dir", d]).ok();
    let lines: Vec<&str> = exported.stdout.lines().collect();
    let originals: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), originals.len());
    for (i, (got, want)) in lines.iter().zip(&originals).enumerate() {
        if i == 1 {
            let loss: Value = serde_json::from_str(got).expect("json");
            assert_eq!(loss["seq"], 2);
            assert_eq!(loss["event"]["kind"], "JournalLossAccepted", "{got}");
            assert_eq!(loss["event"]["from_seq"], 2, "{got}");
            assert_eq!(loss["event"]["to_seq"], 2, "{got}");
        } else {
            assert_eq!(got, want, "line {}", i + 1);
        }
    }
    // The explanation of a pool whose story the loss cut into says so.
    let explained = run(&["explain", "chat-a", "--journal-dir", d, "--at-seq", "3"]).ok();
    assert!(
        explained
            .stdout
            .contains("journal events 2..=2 were lost (accepted at seq 2)"),
        "{explained:#?}"
    );
    assert!(
        explained.stdout.contains("the loss accepted (") && explained.stdout.contains("seq      2"),
        "{explained:#?}"
    );
}

#[test]
fn an_unacknowledged_torn_record_is_listed_and_dropped_by_repair() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    let file = recorded("drain-with-leases");
    let records = lines_of(&file).len() as u64;
    import(&file, &dir).ok();
    // A record past the last acknowledged one, torn: what a crash in the middle of a write
    // leaves.
    with_store(&dir, |store| {
        let mut value = store.get(records).expect("get").expect("present").to_vec();
        value.truncate(value.len() / 2);
        store.put_raw(records + 1, &value).expect("put_raw");
    });

    let verified = run(&["journal", "verify", "--journal-dir", d]);
    assert_eq!(verified.code, 1, "{verified:#?}");
    assert!(
        verified.stdout.contains(&format!("seq {}: ", records + 1)),
        "{verified:#?}"
    );
    assert!(
        verified.stdout.contains("never acknowledged"),
        "{verified:#?}"
    );
    // Read-only commands show the acknowledged history.
    let replayed = run(&["replay", "--journal-dir", d, "--json"]).ok();
    assert_eq!(replayed.json()["as_of_seq"], records);
    // repair drops it (nothing acknowledged is lost), keeping it in quarantine.
    let repaired = run(&["journal", "repair", "--journal-dir", d]).ok();
    assert!(!repaired.stdout.contains("lost: "), "{repaired:#?}");
    run(&["journal", "verify", "--journal-dir", d]).ok();
    let exported = run(&["journal", "export", "--journal-dir", d]).ok();
    let original = std::fs::read_to_string(&file).expect("read");
    assert_eq!(exported.stdout, original);
}

#[test]
fn read_only_commands_work_beside_a_running_daemon_and_writers_are_refused() {
    let (_tmp, dir) = journal_dir();
    let d = path_str(&dir);
    import(&recorded("preload-ok"), &dir).ok();
    let expected_export = run(&["journal", "export", "--journal-dir", d]).ok().stdout;
    // This process holds the journal, as a running daemon would; the CLI runs as another one.
    let (held, _) = PoolJournal::open(JournalConfig::new(&dir)).expect("hold the journal");
    for args in [
        vec!["replay", "--journal-dir", d],
        vec!["journal", "show", "--journal-dir", d],
        vec!["journal", "verify", "--journal-dir", d],
        vec!["journal", "stats", "--journal-dir", d],
    ] {
        run(&args).ok();
    }
    let exported = run(&["journal", "export", "--journal-dir", d]).ok();
    assert_eq!(exported.stdout, expected_export);
    let failed = run(&["journal", "repair", "--journal-dir", d]).failed();
    assert!(failed.stderr.contains("is in use"), "{failed:#?}");
    assert!(failed.stderr.contains(d), "{failed:#?}");
    assert!(failed.stderr.contains("stop that process"), "{failed:#?}");
    assert!(
        failed.took < Duration::from_secs(10),
        "repair took {:?}: an in-use journal must fail at once",
        failed.took
    );
    let failed = import(&recorded("crash-loop"), &dir).failed();
    assert!(failed.stderr.contains("is in use"), "{failed:#?}");
    // Nothing was changed while it was held; released, it works again.
    assert_eq!(held.last_seq(), 11);
    held.close().expect("close");
    drop(held);
    let replayed = run(&["replay", "--journal-dir", d, "--json"]).ok().json();
    assert_eq!(replayed["as_of_seq"], 11, "{replayed}");
}

/// The README's main job: the demo finishes by itself, exit 0, with its story, the registry
/// and the timeline, and leaves no engine behind.
#[test]
fn the_demo_runs_its_story_and_cleans_up() {
    let demo = run(&["demo"]).ok();
    for expected in [
        "POST /v2/pools/chat-a/preload -> 200",
        "429 SLOTS_EXHAUSTED",
        "-> 500 ENGINE_EXITED",
        "crashing after 150 ms",
        "Registry before cleanup",
        "Journal timeline",
        "PoolReady",
        "PoolRemoved",
        "DaemonStopped",
        // The crash loop: a restart at once, backoff, breaker open, reset, healthy restart.
        "restarts: 0 ms,",
        "503 CIRCUIT_OPEN (Retry-After: ",
        " s, until the breaker half-opens)",
        "RestartScheduled",
        "CircuitOpened",
        "CircuitReset",
        // ... and explained: the failures by seq, the half-open trial's time, the reset.
        "GET /v2/pools/flaky/explain -> 200",
        "4 consecutive",
        "half-open trial at ",
        "POST /v2/pools/flaky/breaker/reset",
        "the restart is healthy: phase \"ready\"",
        // Drain, reload (success, rollback), a daemon restart that adopts its engines.
        "409 POOL_DRAINING",
        "DrainCompleted, graceful",
        "(a good model) -> 200",
        "strategy surge (the new engine fits beside the old one",
        "500 RELOAD_FAILED rolled_back true",
        "ReloadRolledBack",
        "(adopted, not restarted)",
        "EngineAdopted",
        "every engine stopped, every pool removed",
    ] {
        assert!(
            demo.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            demo.stdout
        );
    }
    let pids: Vec<&str> = demo
        .stdout
        .lines()
        .filter(|l| l.contains("EngineSpawned"))
        .filter_map(|l| l.split("\"pid\":").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .collect();
    assert!(pids.len() >= 3, "{}", demo.stdout);
    for pid in pids {
        // Gone, a zombie, or the pid reused by something that is not an engine-sim.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_engine = String::from_utf8_lossy(&cmdline).contains("engine-sim");
        assert!(
            stat.is_empty() || state.starts_with('Z') || !is_engine,
            "engine {pid} still runs: {stat}"
        );
    }
}

/// The demo on a node whose GPUs come from a fixture of 2 GPUs: its pools take the GPUs in
/// turn as device masks and share them (`[gpu] allow_sharing`), so that every pool the plain
/// demo runs is placed (none refused with INVALID_DEVICE_MASK) and the story completes.
#[test]
fn the_demo_completes_on_a_fixture_of_two_gpus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = dir.path().join("gpus.json");
    std::fs::write(
        &fixture,
        serde_json::to_vec(&pool_managerd::gpu::simulated_gpus(2)).expect("fixture JSON"),
    )
    .expect("write the fixture");
    let demo = run(&["demo", "--gpu-fixture", &fixture.display().to_string()]).ok();
    for expected in [
        "GPUs from the fixture (GET /v2/gpus):",
        "GPU-00000000-0000-0000-0000-000000000001",
        "[gpu] allow_sharing = true lets the demo's 5 pools share them",
        "POST /v2/pools/chat-a/preload -> 200",
        "device_mask GPU0",
        "POST /v2/pools/chat-b/preload -> 200",
        "device_mask GPU1",
        "-> 500 ENGINE_EXITED",
        "the restart is healthy: phase \"ready\"",
        "(a good model) -> 200",
        "strategy surge (the new engine fits beside the old one",
        "(adopted, not restarted)",
        "every engine stopped, every pool removed",
    ] {
        assert!(
            demo.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            demo.stdout
        );
    }
    assert!(
        !demo.stdout.contains("INVALID_DEVICE_MASK"),
        "{}",
        demo.stdout
    );
}
