//! Where every file of a journal directory lives, and small file-system helpers.
//!
//! Owns: the names below, atomic file replacement (temp file, fsync, rename, fsync of the
//! directory) and the lock. **Must never:** interpret the contents of a file.
//!
//! ```text
//! <dir>/LOCK                    flock(2) held by the one writer (a daemon, import, repair)
//! <dir>/witness                 the last acknowledged seq and its record's CRC (`witness`)
//! <dir>/live/                   the live store: sled's files (`conf`, `db`, `snap.*`, `blobs/`)
//! <dir>/segments/MANIFEST       the sealed segments and the retained range (`manifest`)
//! <dir>/segments/<first>-<last>.seg   sealed, immutable segment files (`segment`)
//! <dir>/snapshots/<covers>.snap projection snapshots (`snapshot`)
//! <dir>/quarantine/             what recovery and repair moved aside (never read back)
//! <dir>/live.new/               a rebuilt live store, moved into place by repair
//! ```
//!
//! A journal written before segments existed keeps sled's files directly in `<dir>` (the
//! *legacy* layout); opening it for writing migrates it (`migrate`).

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside the journal directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// How long an open retries `<dir>/LOCK` before it reports the journal in use: a child that a
/// daemon forks to spawn an engine holds every inherited descriptor, with its `flock`, until
/// it execs (milliseconds), so a journal closed a moment ago may still look held.
pub const LOCK_RETRY_MS: u64 = 250;

/// The paths of one journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The journal directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }
    /// `<dir>/LOCK`.
    pub fn lock(&self) -> PathBuf {
        self.dir.join(LOCK_FILE_NAME)
    }
    /// `<dir>/witness`.
    pub fn witness(&self) -> PathBuf {
        self.dir.join("witness")
    }
    /// `<dir>/live`: sled's directory.
    pub fn live(&self) -> PathBuf {
        self.dir.join("live")
    }
    /// `<dir>/live.new`: a live store being rebuilt by repair.
    pub fn live_new(&self) -> PathBuf {
        self.dir.join("live.new")
    }
    /// `<dir>/segments`.
    pub fn segments(&self) -> PathBuf {
        self.dir.join("segments")
    }
    /// `<dir>/segments/MANIFEST`.
    pub fn manifest(&self) -> PathBuf {
        self.segments().join("MANIFEST")
    }
    /// The file of the segment holding seqs `first..=last`.
    pub fn segment_file(&self, first_seq: u64, last_seq: u64) -> PathBuf {
        self.segments()
            .join(format!("{first_seq:020}-{last_seq:020}.seg"))
    }
    /// `<dir>/snapshots`.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    /// The file of the snapshot covering seqs `1..=covers_seq`.
    pub fn snapshot_file(&self, covers_seq: u64) -> PathBuf {
        self.snapshots().join(format!("{covers_seq:020}.snap"))
    }
    /// `<dir>/quarantine`.
    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("quarantine")
    }
    /// Whether sled's files sit directly in `<dir>` (a journal from before segments).
    pub fn is_legacy(&self) -> bool {
        !self.live().exists() && (self.dir.join("db").exists() || self.dir.join("conf").exists())
    }
    /// Whether `<dir>` holds a journal of either layout.
    pub fn holds_journal(&self) -> bool {
        self.is_legacy()
            || self.live().exists()
            || self.live_new().exists()
            || self.witness().exists()
            || self.manifest().exists()
    }
    /// Where sled's files are: `<dir>/live`, or `<dir>` itself for a legacy journal.
    pub fn store_dir(&self) -> PathBuf {
        if self.is_legacy() {
            self.dir.clone()
        } else {
            self.live()
        }
    }
}

/// The live store directory of the journal at `dir` (either layout): where tests and tools
/// that damage or inspect sled's files find them.
pub fn live_store_dir(dir: &Path) -> PathBuf {
    Layout::new(dir).store_dir()
}

/// `fsync` a directory so the entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync of the
/// directory. A reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = crate::private::file_options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) and syncs its parent, so that it survives a crash.
pub fn create_dir_synced(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::private::create_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn try_flock(file: &File) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a valid fd we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The outcome of [`lock`].
pub enum Locked {
    /// Held until the file is dropped.
    Held(File),
    /// Someone else holds it.
    Busy,
}

/// Takes `flock(LOCK_EX|LOCK_NB)` on `<dir>/LOCK`, retrying for [`LOCK_RETRY_MS`].
pub fn lock(layout: &Layout) -> io::Result<Locked> {
    let path = layout.lock();
    let file = crate::private::file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let started = Instant::now();
    while !try_flock(&file)? {
        if started.elapsed() >= Duration::from_millis(LOCK_RETRY_MS) {
            return Ok(Locked::Busy);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Locked::Held(file))
}

/// Whether some process holds `<dir>/LOCK` now (a running daemon). Opens the file read-only,
/// so it works on a read-only file system; a missing file means nobody.
pub fn is_locked_by_other(layout: &Layout) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(file) = File::open(layout.lock()) else {
        return false;
    };
    // SAFETY: flock on a valid fd we own for the duration of the call; closing the file
    // (end of scope) drops the lock if we got it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

/// Milliseconds since the Unix epoch from the system clock (0 before 1970).
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Copies the regular files of `from` (one level of sub-directories, such as sled's
/// `blobs/`) into `to`, which is created. Used to read a live store without writing to it.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    fs::create_dir_all(to)?;
    let mut bytes = 0u64;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            fs::create_dir_all(&target)?;
            for inner in fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    bytes += fs::copy(inner.path(), target.join(inner.file_name()))?;
                }
            }
        } else if kind.is_file() {
            bytes += fs::copy(entry.path(), &target)?;
        }
    }
    Ok(bytes)
}

/// Sum of the sizes of the regular files under `dir` (two levels deep); 0 when absent.
pub fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth < 2 {
                    total += walk(&entry.path(), depth + 1);
                }
            } else {
                total += meta.len();
            }
        }
        total
    }
    walk(dir, 0)
}
