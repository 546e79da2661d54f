//! Engine log rotation (`[logs] max_bytes`, `keep`): a log over `max_bytes` is copied to
//! `<log>.1` (the older parts shifted to `<log>.2` .. `<log>.<keep>`, the oldest dropped) and
//! then truncated in place.
//!
//! Why copy-truncate rather than rename-and-reopen: engines outlive the daemon (a daemon
//! restart adopts them again from the journal), so their stdout and stderr are the log file
//! itself, opened by the daemon before the spawn; a pipe through the daemon would break every
//! engine's output at the daemon's next restart. The daemon cannot make a running engine
//! reopen its log, so the file must stay where the engine's descriptor points. The log is
//! opened `O_APPEND`: after the truncate the engine's next write lands at the new end (offset
//! 0), with no sparse hole where the old content was.
//!
//! The window: bytes the engine writes between the last copy and the truncate are lost. It is
//! kept small: the bulk is copied first, then what was appended meanwhile is copied again,
//! and the truncate follows at once. A line the engine is writing then may be split between
//! `<log>.1` and the fresh log, and its next line may come before the mark of ours.
//!
//! Rotated parts get the owner and mode of the live log (0600, or 0640 and the logs group:
//! `files.rs`); where the group cannot be given, the part stays 0600. After a rotation the
//! fresh log starts with one line of ours ([`LOG_HEADER_PREFIX`]
//! `log rotated at <ts>, previous part in <name>.1 ====`).
//!
//! When: before each spawn's header line (in the pool's worker, so a start never races its
//! own log), and every [`ROTATE_EVERY_MS`] by one task per runtime directory
//! ([`spawn_rotation_task`]) that looks at every `logs/*.log`. One task rather than a timer in
//! each worker: a worker runs its lane's effects one at a time and is idle between them; a
//! rotation there would sit in the effects' queue, and adopted engines and a surge's lane B
//! log would need one each. The task's work is bounded: one pass over `logs/` per interval,
//! each copy at most the log's size. Rotations in this process are serialized (one lock), so
//! a worker's rotation and the task's never copy the same log at once.
//!
//! Never: deletes anything but `<log>.<keep>` (the oldest part), writes an engine line, or
//! touches files outside `logs/`.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use crate::config::LogsSettings;

use super::process::LOG_HEADER_PREFIX;

/// How often the rotation task looks at the logs.
pub const ROTATE_EVERY_MS: u64 = 5_000;

/// Serializes the rotations of this process.
static ROTATING: Mutex<()> = Mutex::new(());

/// `<log>.<n>`: the `n`th rotated part of `log` (1 is the newest).
pub fn rotated_path(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The line of ours a rotation leaves at the start of the fresh log.
pub fn rotated_line(log: &Path, now_ms: u64) -> String {
    let name = log
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!(
        "{LOG_HEADER_PREFIX} log rotated at {}, previous part in {name}.1 ====",
        crate::clock::format_ts_ms(now_ms)
    )
}

/// Rotates `log` when it is larger than `limits.max_bytes`; `Ok(true)` when it did. A missing
/// log is no error (`Ok(false)`). Errors name the file.
pub fn rotate_if_over(log: &Path, limits: LogsSettings, now_ms: u64) -> io::Result<bool> {
    let _one_at_a_time = ROTATING.lock().unwrap_or_else(|p| p.into_inner());
    let meta = match fs::metadata(log) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(named(e, log, "cannot read")),
    };
    if !meta.is_file() || meta.len() <= limits.max_bytes {
        return Ok(false);
    }
    shift_parts(log, limits.keep.max(1))?;
    let first = rotated_path(log, 1);
    copy_then_truncate(log, &first, &meta)?;
    let mut fresh = fs::OpenOptions::new()
        .append(true)
        .open(log)
        .map_err(|e| named(e, log, "cannot open"))?;
    writeln!(fresh, "{}", rotated_line(log, now_ms)).map_err(|e| named(e, log, "cannot write"))?;
    Ok(true)
}

/// Drops `<log>.<keep>` and renames each older part one up: `.keep-1` -> `.keep` .. `.1` ->
/// `.2`.
fn shift_parts(log: &Path, keep: u32) -> io::Result<()> {
    let oldest = rotated_path(log, keep);
    super::files::remove_if_exists(&oldest)?;
    for n in (1..keep).rev() {
        let from = rotated_path(log, n);
        match fs::rename(&from, rotated_path(log, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(named(e, &from, "cannot rename"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies `log` into a new `part` (owner and mode of `log` where they can be given), copies
/// again what was appended meanwhile, then truncates `log` to 0.
fn copy_then_truncate(log: &Path, part: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut source = File::open(log).map_err(|e| named(e, log, "cannot open"))?;
    let mut copy = pool_journal::private::file_options()
        .write(true)
        .create_new(true)
        .open(part)
        .map_err(|e| named(e, part, "cannot create"))?;
    give_owner_and_mode(&copy, part, meta);
    io::copy(&mut source, &mut copy).map_err(|e| named(e, part, "cannot copy into"))?;
    // What the engine wrote during the bulk copy; the window left is this read's end to the
    // truncate below.
    let mut tail = Vec::new();
    source
        .read_to_end(&mut tail)
        .map_err(|e| named(e, log, "cannot read"))?;
    fs::OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(|e| named(e, log, "cannot truncate"))?;
    copy.write_all(&tail)
        .map_err(|e| named(e, part, "cannot copy into"))?;
    copy.flush().map_err(|e| named(e, part, "cannot copy into"))
}

/// Gives `file` the owner and mode of the log (`meta`); a part whose group cannot be given
/// stays 0600 (logged).
fn give_owner_and_mode(file: &File, path: &Path, meta: &fs::Metadata) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mine = file.metadata().map(|m| (m.uid(), m.gid())).ok();
    if mine != Some((meta.uid(), meta.gid())) {
        if let Err(e) = std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!(path = %path.display(), error = %e, "cannot give a rotated log part the owner of its log; it stays the daemon's alone (0600)");
            return;
        }
    }
    let mode = meta.permissions().mode() & 0o7777;
    if let Err(e) = file.set_permissions(fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot give a rotated log part the mode of its log");
    }
}

fn named(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{what} {} while rotating an engine log: {e}; check the runtime directory's space and permissions",
            path.display()
        ),
    )
}

/// Rotates every `*.log` of `logs_dir` that is over the limit; returns how many were rotated.
/// Errors are logged per file and the pass goes on.
pub fn rotate_dir(logs_dir: &Path, limits: LogsSettings, now_ms: u64) -> usize {
    let Ok(entries) = fs::read_dir(logs_dir) else {
        return 0;
    };
    let mut rotated = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = path.extension().is_some_and(|ext| ext == "log")
            && entry.file_type().is_ok_and(|t| t.is_file());
        if !is_log {
            continue;
        }
        match rotate_if_over(&path, limits, now_ms) {
            Ok(true) => {
                rotated += 1;
                tracing::info!(path = %path.display(), max_bytes = limits.max_bytes, "engine log rotated");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    rotated
}

/// Starts the rotation task of `logs_dir`: every [`ROTATE_EVERY_MS`], [`rotate_dir`] on a
/// blocking thread. It ends when `alive` can no longer be upgraded (its supervisor is gone)
/// or its handle is aborted. `now_ms` gives the time of the rotated lines.
pub fn spawn_rotation_task(
    logs_dir: PathBuf,
    limits: LogsSettings,
    now_ms: impl Fn() -> u64 + Send + Sync + 'static,
    alive: Weak<()>,
) -> tokio::task::JoinHandle<()> {
    let now_ms = std::sync::Arc::new(now_ms);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(ROTATE_EVERY_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if alive.upgrade().is_none() {
                return;
            }
            let (dir, now_ms) = (logs_dir.clone(), now_ms.clone());
            let _ = tokio::task::spawn_blocking(move || rotate_dir(&dir, limits, now_ms())).await;
        }
    })
}

/// `log` and those of its rotated parts `.1` ..= `.keep` that exist, newest first.
pub fn parts_newest_first(log: &Path, keep: u32) -> Vec<PathBuf> {
    std::iter::once(log.to_path_buf())
        .chain((1..=keep).map(|n| rotated_path(log, n)))
        .filter(|p| p.exists())
        .collect()
}

#[cfg(test)]
mod tests;
