//! The live store: the [`Store`] trait and its sled 0.34 implementation, [`SledStore`].
//!
//! It holds the records not yet sealed into a segment, keyed by seq. The journal writes to it
//! (one writer thread, group commit) and reads it only when it opens: every record it holds
//! is also in the journal's in-memory tail until it is sealed, so readers never touch sled
//! (sled hangs on some reads after a failed write, and cannot be opened on a full disk).
//!
//! Owns: sled's tree and key encoding, and the durability barrier ([`Store::sync`]).
//! **Must never:** interpret record bytes (no decoding here), or report `sync` success before
//! the data is on stable storage.
//!
//! # Tree
//!
//! ```text
//! records    key = seq u64 BE     value = record bytes (see `record`)
//! ```
//!
//! A journal from before segments also has the trees `pool_index` and `snapshots`; they are
//! read once, by the migration, and dropped.
//!
//! # Durability (`sync`)
//!
//! sled 0.34's `Db::flush()` on Linux writes its IO buffers with `pwrite` +
//! `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` (`pagecache/iobuf.rs`), which neither
//! flushes the drive's cache nor the file's metadata; its real `fsync` runs only from the
//! background flusher (`flusher.rs`, every `flush_every_ms`), which we disable. So `sync` is:
//!
//! 1. `Db::flush()` (all dirty buffers written to `<store>/db`);
//! 2. `fsync` every file in `<store>/blobs/` not synced before, and then the `blobs`
//!    directory: sled writes values over its blob threshold (`segment_size / 4 - 20` = 131 052
//!    bytes by default; also large node rewrites) to `blobs/<lsn>` with plain `write_all` and
//!    never fsyncs them (`pagecache/blob_io.rs`);
//! 3. `fdatasync(<store>/db)` through our own read-only fd (fsync acts on the inode).
//!
//! `conf` and the directory entries of `db` and `blobs/` are fsynced once at open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::IVec;

/// How long `open` keeps retrying sled's own lock: only a previous store of this same
/// process whose last sled thread is still exiting can hold it then (the journal's own
/// `LOCK` was granted first).
pub const SLED_LOCK_RETRY_MS: u64 = 2_000;
/// Pause between those retries.
pub const SLED_LOCK_RETRY_DELAY_MS: u64 = 20;
/// The records tree.
const RECORDS_TREE: &str = "records";
/// Keys removed per sled batch (see `SledStore::write_batch`).
const REMOVALS_PER_SLED_BATCH: usize = 64;
/// Trees of the legacy layout.
const LEGACY_TREES: [&str; 2] = ["pool_index", "snapshots"];

/// An error from the store, before the journal adds context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error(transparent)]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key that is not 8 bytes in a seq-keyed tree.
    #[error("key {key_hex} in tree {tree} is not a u64 seq")]
    BadKey {
        /// The tree.
        tree: &'static str,
        /// The key, hex.
        key_hex: String,
    },
    /// sled panicked (damaged files it does not expect).
    #[error("sled panicked: {0}")]
    Panicked(String),
}

impl StoreError {
    /// The operating system's error, where there is one (sled wraps it in its own).
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Sled(sled::Error::Io(e)) => Some(e),
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The error as an operator reads it: the OS error's own words (`No space left on device
    /// (os error 28)`), not sled's debug form of it.
    pub fn describe(&self) -> String {
        let code = self.os_error().and_then(|e| {
            e.raw_os_error().or_else(|| {
                let text = e.to_string();
                let at = text.find("code: ")? + 6;
                text[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
        });
        match (self, code) {
            (StoreError::Io { path, .. }, Some(code)) => format!(
                "{}: {}",
                path.display(),
                std::io::Error::from_raw_os_error(code)
            ),
            (_, Some(code)) => std::io::Error::from_raw_os_error(code).to_string(),
            _ => self.to_string(),
        }
    }

    /// How an operator would classify it.
    pub fn kind(&self) -> crate::WriteErrorKind {
        self.os_error()
            .map_or(crate::WriteErrorKind::Other, crate::WriteErrorKind::of)
    }

    /// Adds the journal dir, giving the crate's error.
    pub fn into_journal(self, dir: &Path) -> crate::JournalError {
        match self {
            StoreError::Sled(source) => crate::JournalError::Sled {
                dir: dir.to_path_buf(),
                source,
            },
            StoreError::Io { path, source } => crate::JournalError::Io { path, source },
            other => crate::JournalError::Damaged {
                dir: dir.to_path_buf(),
                file: crate::layout::Layout::new(dir).live(),
                what: other.to_string(),
                more: 0,
                loss: false,
            },
        }
    }
}

/// What the journal needs from its live storage.
///
/// # Invariants the journal keeps (the store need not check them)
/// - Record keys are written in increasing order, by one writer.
/// - `sync` is called after `write_batch` and before any waiter is answered.
pub trait Store: Send + Sync + 'static {
    /// A stored value (zero-copy where the store allows).
    type Value: AsRef<[u8]> + Send + Sync + 'static;
    /// Iterator over `(seq, value)` in seq order.
    type RecordIter: Iterator<Item = Result<(u64, Self::Value), StoreError>> + Send;

    /// Inserts `records` (seq, bytes) and removes the keys `removals` (sealed records),
    /// atomically. Not durable until `sync`.
    fn write_batch(&self, records: &[(u64, Vec<u8>)], removals: &[u64]) -> Result<(), StoreError>;
    /// Durability barrier for everything written so far.
    fn sync(&self) -> Result<(), StoreError>;
    /// One record's value.
    fn get(&self, seq: u64) -> Result<Option<Self::Value>, StoreError>;
    /// Records with key >= `seq`, ascending.
    fn iter_from(&self, seq: u64) -> Self::RecordIter;
    /// The highest record.
    fn last(&self) -> Result<Option<(u64, Self::Value)>, StoreError>;
    /// Writes raw bytes under `seq` without checks (tests and repair).
    fn put_raw(&self, seq: u64, value: &[u8]) -> Result<(), StoreError>;
    /// Removes every record with key >= `seq`; returns how many.
    fn remove_from(&self, seq: u64) -> Result<u64, StoreError>;
    /// Sum of the sizes of the files under the store's directory.
    fn size_on_disk_bytes(&self) -> u64;
}

fn seq_of(tree: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::BadKey {
        tree,
        key_hex: crate::hex(key),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// sled 0.34 implementation of [`Store`].
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    /// Our fd on `<dir>/db`, used only for `fdatasync`.
    db_file: File,
    /// Blob files already fsynced (pruned to what exists at each sweep).
    synced_blobs: Mutex<HashMap<std::ffi::OsString, u64>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::layout::sync_dir(dir).map_err(io_err(dir))
}

/// Runs `f`, turning a panic inside sled into [`StoreError::Panicked`].
pub fn catch_sled<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(StoreError::Panicked(what))
        }
    }
}

impl SledStore {
    /// Opens (creating if absent) the sled store in `dir`. The caller holds the journal's
    /// lock; sled's own lock on `<dir>/db` is retried for [`SLED_LOCK_RETRY_MS`]. A panic
    /// inside sled (damaged files) comes back as [`StoreError::Panicked`].
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        catch_sled(|| Self::open_inner(dir, cache_capacity_bytes))
    }

    fn open_inner(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes)
            .use_compression(false)
            // We flush and fsync ourselves after every batch (see `sync`).
            .flush_every_ms(None);
        let started = Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < Duration::from_millis(SLED_LOCK_RETRY_MS) =>
                {
                    std::thread::sleep(Duration::from_millis(SLED_LOCK_RETRY_DELAY_MS));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let creates_tree = !db
            .tree_names()
            .iter()
            .any(|tree| tree.as_ref() == RECORDS_TREE.as_bytes());
        let records = db.open_tree(RECORDS_TREE)?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(io_err(&db_path))?;
        let store = SledStore {
            dir: dir.to_path_buf(),
            db,
            records,
            db_file,
            synced_blobs: Mutex::new(HashMap::new()),
        };
        // Tree creation is durable only after a flush. An existing store has nothing of ours
        // to sync here: sled's own recovery rewrites its free segments with zeros at every
        // open (page cache only), and the first append's fdatasync carries those pages.
        if creates_tree {
            store.sync()?;
        }
        let conf = dir.join("conf");
        if conf.exists() {
            File::open(&conf)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&conf))?;
        }
        sync_dir(dir)?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshots of a legacy journal (tree `snapshots`): `(covers_seq, framed value)`.
    pub fn legacy_snapshots(&self) -> Result<Vec<(u64, IVec)>, StoreError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == b"snapshots")
        {
            return Ok(Vec::new());
        }
        let tree = self.db.open_tree("snapshots")?;
        let mut out = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            out.push((seq_of("snapshots", &key)?, value));
        }
        Ok(out)
    }

    /// Drops the trees of the legacy layout (after the migration copied what it needs).
    pub fn drop_legacy_trees(&self) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        for legacy in LEGACY_TREES {
            if names.iter().any(|t| t.as_ref() == legacy.as_bytes()) {
                self.db.drop_tree(legacy)?;
            }
        }
        Ok(())
    }

    fn sync_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&blobs)(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashMap::new();
        let mut new_files = 0usize;
        for entry in entries {
            let entry = entry.map_err(io_err(&blobs))?;
            let name = entry.file_name();
            let path = entry.path();
            // The length is part of what was synced: a blob that sled was still writing when
            // it was last seen is synced again.
            let len = match entry.metadata() {
                Ok(metadata) => metadata.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => new_files += 1,
                    // sled's blob GC may remove it meanwhile: then it is not needed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            present.insert(name, len);
        }
        *synced = present;
        drop(synced);
        if new_files > 0 {
            sync_dir(&blobs)?;
        }
        Ok(())
    }
}

/// Ascending iterator over the records tree.
pub struct SledRecordIter {
    inner: sled::Iter,
}

impl Iterator for SledRecordIter {
    type Item = Result<(u64, IVec), StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        Some(
            item.map_err(StoreError::from)
                .and_then(|(k, v)| Ok((seq_of(RECORDS_TREE, &k)?, v))),
        )
    }
}

impl Store for SledStore {
    type Value = IVec;
    type RecordIter = SledRecordIter;

    fn write_batch(&self, records: &[(u64, Vec<u8>)], removals: &[u64]) -> Result<(), StoreError> {
        // The removals (sealed records) go first, in small batches of their own: sled 0.34
        // keeps memory and log space it no longer needs when one batch both removes and
        // inserts hundreds of keys (1,024 inserts + 2,048 removals per commit: 3.6 GiB RSS
        // and 419 MB on disk after a million records, against 25 MiB and 18 MB this way).
        // They are facts already durable in segments, so applying them apart is safe.
        for chunk in removals.chunks(REMOVALS_PER_SLED_BATCH) {
            let mut batch = sled::Batch::default();
            for seq in chunk {
                batch.remove(&seq.to_be_bytes());
            }
            self.records.apply_batch(batch)?;
        }
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&seq.to_be_bytes(), bytes.as_slice());
        }
        self.records.apply_batch(batch)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // sled writes a blob file before the log entry that points at it; after the flush,
        // every blob the log refers to is written. Blobs are synced before the log, so that
        // a durable pointer never points at a blob that is not.
        self.db.flush()?;
        self.sync_blobs()?;
        let db_path = self.dir.join("db");
        self.db_file.sync_data().map_err(io_err(&db_path))
    }

    fn get(&self, seq: u64) -> Result<Option<IVec>, StoreError> {
        Ok(self.records.get(seq.to_be_bytes())?)
    }

    fn iter_from(&self, seq: u64) -> SledRecordIter {
        SledRecordIter {
            inner: self.records.range(seq.to_be_bytes()..),
        }
    }

    fn last(&self) -> Result<Option<(u64, IVec)>, StoreError> {
        match self.records.last()? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((seq_of(RECORDS_TREE, &k)?, v))),
        }
    }

    fn put_raw(&self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        self.records.insert(seq.to_be_bytes(), value)?;
        Ok(())
    }

    fn remove_from(&self, seq: u64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0usize;
        for item in self.records.range(seq.to_be_bytes()..).keys() {
            batch.remove(item?);
            in_batch += 1;
            removed += 1;
            if in_batch == REMOVALS_PER_SLED_BATCH {
                self.records.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        self.records.apply_batch(batch)?;
        Ok(removed)
    }

    fn size_on_disk_bytes(&self) -> u64 {
        crate::layout::dir_bytes(&self.dir)
    }
}
