//! The runtime directory: engine logs, pid files and handoff files, and model staging.
//!
//! Layout under `runtime_dir`: `logs/<pool_id>.log`, `pids/<pool_id>.pid`,
//! `engines/<pool_id>-<replica_id>.json`. Pool ids are validated (`PoolId`), so they are safe
//! file names; replica ids are checked here before they become part of a path.
//!
//! Owns: paths, atomic writes (temp file + fsync + rename), log tails, model staging checks.
//! Never: decides anything; never deletes outside the runtime directory.

use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use pool_core::{Handoff, Lane};
use sha2::{Digest as _, Sha256};

/// The most bytes of an engine log kept in `last_error` and exit details.
pub const LOG_TAIL_BYTES: u64 = 2_048;

/// The runtime directory and its three sub-directories.
#[derive(Debug, Clone)]
pub struct RuntimeDirs {
    /// The root (`runtime_dir`).
    pub root: PathBuf,
    /// `logs/`.
    pub logs: PathBuf,
    /// `pids/`.
    pub pids: PathBuf,
    /// `engines/` (handoff files).
    pub engines: PathBuf,
    /// The group that may read the engine logs (`engines.logs_group`), if any.
    pub logs_gid: Option<u32>,
}

/// The mode of the runtime directory when a group may read the logs (search only).
pub const SHARED_ROOT_MODE: u32 = 0o710;
/// The mode of `logs/` when a group may read the logs.
pub const SHARED_LOGS_MODE: u32 = 0o750;
/// The mode of a log file when a group may read the logs.
pub const SHARED_LOG_MODE: u32 = 0o640;

impl RuntimeDirs {
    /// Creates the directories under `root` when missing, mode 0700 whatever the umask, and
    /// takes group and other access away from what is there already (logged per path).
    pub fn create(root: &Path) -> io::Result<RuntimeDirs> {
        RuntimeDirs::create_sharing_logs(root, None)
    }

    /// [`RuntimeDirs::create`]; with `logs_gid`, that group may read the engine logs: the
    /// root becomes 0710 and `logs/` 0750, each log 0640, all owned by that group. Anything
    /// else stays the daemon user's alone.
    pub fn create_sharing_logs(root: &Path, logs_gid: Option<u32>) -> io::Result<RuntimeDirs> {
        let dirs = RuntimeDirs {
            root: root.to_path_buf(),
            logs: root.join("logs"),
            pids: root.join("pids"),
            engines: root.join("engines"),
            logs_gid,
        };
        for dir in [&dirs.root, &dirs.logs, &dirs.pids, &dirs.engines] {
            pool_journal::private::create_dir_all(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create runtime directory {}: {e}; check the path and its permissions (runtime_dir)",
                        dir.display()
                    ),
                )
            })?;
        }
        // With a logs group, its read and search bits are kept where set under the root and in
        // logs/; pids/ and engines/ are tightened after the root, so nothing else keeps them.
        let keep = if logs_gid.is_some() { 0o050 } else { 0 };
        for (dir, keep) in [
            (&dirs.root, keep),
            (&dirs.logs, keep),
            (&dirs.pids, 0),
            (&dirs.engines, 0),
        ] {
            if let Err(e) = pool_journal::private::tighten_tree_keeping(dir, keep) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot tighten the runtime directory's modes; check its owner");
            }
        }
        if let Some(gid) = logs_gid {
            share(&dirs.root, gid, SHARED_ROOT_MODE)?;
            share(&dirs.logs, gid, SHARED_LOGS_MODE)?;
            for entry in fs::read_dir(&dirs.logs)?.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    share(&entry.path(), gid, SHARED_LOG_MODE)?;
                }
            }
        }
        Ok(dirs)
    }

    /// Creates the log file at `path` when missing (0600, or 0640 owned by the logs group),
    /// so that an engine's output never lands in a file others may read.
    pub fn prepare_log(&self, path: &Path) -> io::Result<()> {
        pool_journal::private::file_options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))?;
        match self.logs_gid {
            Some(gid) => share(path, gid, SHARED_LOG_MODE),
            None => Ok(()),
        }
    }

    /// `logs/<pool_id>.log`: the log of lane A ([`Self::log_path_in`]).
    pub fn log_path(&self, pool_id: &str) -> PathBuf {
        self.log_path_in(pool_id, Lane::A)
    }

    /// `pids/<pool_id>.pid`: the pid file of lane A ([`Self::pid_path_in`]).
    pub fn pid_path(&self, pool_id: &str) -> PathBuf {
        self.pid_path_in(pool_id, Lane::A)
    }

    /// The log of `pool_id`'s engine in `lane`: `logs/<pool_id>.log` (A) or
    /// `logs/<pool_id>@b.log` (B).
    pub fn log_path_in(&self, pool_id: &str, lane: Lane) -> PathBuf {
        self.logs.join(format!("{pool_id}{}.log", lane.suffix()))
    }

    /// The pid file of `pool_id`'s engine in `lane`: `pids/<pool_id>.pid` (A) or
    /// `pids/<pool_id>@b.pid` (B).
    pub fn pid_path_in(&self, pool_id: &str, lane: Lane) -> PathBuf {
        self.pids.join(format!("{pool_id}{}.pid", lane.suffix()))
    }

    /// `engines/<pool_id>-<replica_id>.json`; `None` when the replica id is not a safe file
    /// name part.
    pub fn handoff_path(&self, pool_id: &str, replica_id: &str) -> Option<PathBuf> {
        let safe = !replica_id.is_empty()
            && replica_id.len() <= 64
            && replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !replica_id.starts_with('.');
        safe.then(|| self.engines.join(format!("{pool_id}-{replica_id}.json")))
    }
}

/// Gives `path` to group `gid` with `mode` (logged when it changes); the error names the path
/// and the key.
fn share(path: &Path, gid: u32, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = fs::symlink_metadata(path)?;
    let named = |e: io::Error, what: &str| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot {what} {} for engines.logs_group (gid {gid}): {e}; the daemon's user must be root or a member of that group",
                path.display()
            ),
        )
    };
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid))
            .map_err(|e| named(e, "change the group of"))?;
    }
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| named(e, "change the mode of"))?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), gid, "shared with the logs group");
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync of the
/// directory. A reader sees the old file or the new one, never half of one. The error names
/// the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    pool_journal::layout::write_atomic(path, bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Writes the pid file (plain text: the pid and a newline).
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// Reads a pid file.
pub fn read_pid_file(path: &Path) -> io::Result<u32> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a pid: {:?}", path.display(), text.trim()),
        )
    })
}

/// Writes a handoff file (pretty JSON).
pub fn write_handoff(path: &Path, handoff: &Handoff) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(handoff).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Removes `path`; a missing file is fine.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("cannot remove {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// The last `max_bytes` of a log file, starting at a line boundary; empty when unreadable.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    log_tail_since(path, 0, max_bytes)
}

/// [`log_tail`], never before `since` (the offset where the current engine's output began,
/// so that an earlier run's lines are never taken for this one's). A file shorter than
/// `since` (truncated, rotated) is read from its start.
pub fn log_tail_since(path: &Path, since: u64, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let since = if since > len { 0 } else { since };
    let start = len.saturating_sub(max_bytes).max(since);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(usize::try_from(max_bytes).unwrap_or(4096));
    if file.take(max_bytes).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = if start > since {
        text.split_once('\n').map_or(&*text, |(_, rest)| rest)
    } else {
        &text
    };
    text.trim_end().to_string()
}

/// Checks a model reference before a reload touches the running engine: a path or `file:`
/// URI to a readable regular file whose `sha256:` digest matches when one is given. Returns
/// the local path and the digest verified.
pub fn stage_model(
    model_ref: &str,
    digest: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let path = match model_ref.strip_prefix("file://") {
        Some(rest) => rest,
        None => model_ref.strip_prefix("file:").unwrap_or(model_ref),
    };
    if path.is_empty() {
        return Err(format!("model reference {model_ref:?} names no file"));
    }
    let meta = fs::metadata(path).map_err(|e| format!("model {path}: {e}; check new_model_ref"))?;
    if !meta.is_file() {
        return Err(format!("model {path} is not a regular file"));
    }
    let mut file = File::open(path).map_err(|e| format!("model {path} is not readable: {e}"))?;
    let Some(expected) = digest else {
        return Ok((path.to_string(), None));
    };
    let expected_hex = expected
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| format!("digest {expected:?} is not sha256:<64 hex digits>"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("model {path}: read failed: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !actual.eq_ignore_ascii_case(expected_hex) {
        return Err(format!(
            "model {path}: digest mismatch: expected sha256:{expected_hex}, file has sha256:{actual}"
        ));
    }
    Ok((path.to_string(), Some(format!("sha256:{actual}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write as _;

    #[test]
    fn tail_starts_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 30);
        assert!(tail.ends_with("line 99"));
        assert!(tail.starts_with("line "));
        assert!(tail.len() <= 30);
        assert_eq!(log_tail(&dir.path().join("missing"), 30), "");
    }

    #[test]
    fn a_tail_since_an_offset_leaves_earlier_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        fs::write(&path, "CUDA error: from the last run\n").unwrap();
        let since = fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"==== header ====\ncrashing: exit code 3\n")
            .unwrap();
        assert_eq!(
            log_tail_since(&path, since, 2_048),
            "==== header ====\ncrashing: exit code 3"
        );
        assert!(log_tail(&path, 2_048).contains("CUDA error"));
        assert_eq!(log_tail_since(&path, 10_000, 2_048).lines().count(), 3);
    }

    #[test]
    fn handoff_paths_refuse_unsafe_replica_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = RuntimeDirs::create(&tmp.path().join("run")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for dir in [&dirs.root, &dirs.logs, &dirs.pids, &dirs.engines] {
            let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        write_pid_file(&dirs.pid_path("p"), 42).unwrap();
        let mode = fs::metadata(dirs.pid_path("p"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(dirs.handoff_path("p", "r0").is_some());
        assert!(dirs.handoff_path("p", "../x").is_none());
        assert!(dirs.handoff_path("p", "").is_none());
    }

    #[test]
    fn staging_checks_existence_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        fs::write(&path, b"abc").unwrap();
        let p = path.to_str().unwrap();
        let sha = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            stage_model(&format!("file://{p}"), Some(sha)).unwrap(),
            (p.to_string(), Some(sha.to_string()))
        );
        assert!(stage_model(p, Some("sha256:00")).is_err());
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(stage_model(p, Some(&wrong))
            .unwrap_err()
            .contains("mismatch"));
        assert!(stage_model("/nonexistent/m.gguf", None).is_err());
        assert!(stage_model(dir.path().to_str().unwrap(), None).is_err());
    }
}
