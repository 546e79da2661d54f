//! The storage boundary: the [`Store`] trait and its sled 0.34 implementation, [`SledStore`].
//!
//! Owns: the directory lock, sled's trees and key encodings, and the durability barrier
//! ([`Store::sync`]). Every other module reaches the disk through [`Store`], so the store
//! could change without touching callers.
//!
//! **Must never:** interpret record bytes (no decoding here), or report `sync` success before
//! the data is on stable storage.
//!
//! # Trees
//!
//! ```text
//! records    key = seq u64 BE                           value = record bytes (see `record`)
//! pool_index key = pool_id bytes | 0x00 | seq u64 BE    value = empty
//!            key = 0xFF "index_high_water_seq"          value = u64 BE (0xFF never occurs in UTF-8)
//! snapshots  key = covers_seq u64 BE                    value = framed snapshot
//! ```
//!
//! # Durability (`sync`)
//!
//! sled 0.34's `Db::flush()` on Linux writes its IO buffers with `pwrite` +
//! `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` (`pagecache/iobuf.rs`), which neither
//! flushes the drive's cache nor the file's metadata; its real `fsync` runs only from the
//! background flusher (`flusher.rs`, every `flush_every_ms`), which we disable. So `sync` is:
//!
//! 1. `Db::flush()` (all dirty buffers written to `<dir>/db`);
//! 2. `fdatasync(<dir>/db)` through our own read-only fd (fsync acts on the inode);
//! 3. `fsync` every file in `<dir>/blobs/` not synced before, and then the `blobs` directory:
//!    sled writes values over its blob threshold (`segment_size / 4 - 20` = 131 052 bytes by
//!    default; also large node rewrites) to `blobs/<lsn>` with plain `write_all` and never
//!    fsyncs them (`pagecache/blob_io.rs`). Event records are capped at 64 KiB, but snapshots
//!    and node rewrites can land there.
//!
//! `conf` and the directory entries of `db`, `blobs/` and `LOCK` are fsynced once at open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::IVec;

/// Name of our lock file inside the journal directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// How long `open` keeps retrying sled's own lock after ours was granted: only a previous
/// `Journal` of this same process whose last sled thread is still exiting can hold it then.
pub const SLED_LOCK_RETRY_MS: u64 = 2_000;
/// How long `open` retries `<dir>/LOCK` before it reports the journal in use: a child that a
/// daemon forks to spawn an engine holds every inherited descriptor, with its `flock`, until
/// it execs (milliseconds), so a journal closed a moment ago may still look held.
pub const LOCK_RETRY_MS: u64 = 250;
/// Pause between those retries.
pub const SLED_LOCK_RETRY_DELAY_MS: u64 = 20;

const INDEX_HIGH_WATER_KEY: &[u8] = b"\xFFindex_high_water_seq";

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
    /// The directory is locked by someone else.
    #[error("{} is locked", dir.display())]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A key that is not 8 bytes in a seq-keyed tree.
    #[error("key {key_hex} in tree {tree} is not a u64 seq")]
    BadKey {
        /// The tree.
        tree: &'static str,
        /// The key, hex.
        key_hex: String,
    },
}

impl StoreError {
    /// Adds the journal dir, giving the crate's error.
    pub fn into_journal(self, dir: &Path) -> crate::JournalError {
        match self {
            StoreError::Sled(source) => crate::JournalError::Sled {
                dir: dir.to_path_buf(),
                source,
            },
            StoreError::Io { path, source } => crate::JournalError::Io { path, source },
            StoreError::Locked { dir } => crate::JournalError::Locked { dir },
            StoreError::BadKey { tree, key_hex } => crate::JournalError::Corruption {
                seq: 0,
                what: format!("key {key_hex} in tree {tree} is not an 8-byte seq"),
                dir: dir.to_path_buf(),
            },
        }
    }
}

/// What the journal needs from its storage.
///
/// # Invariants the journal keeps (the store need not check them)
/// - Record keys are written in increasing order, by one writer.
/// - `sync` is called after `append_batch` and before any waiter is answered.
pub trait Store: Send + Sync + 'static {
    /// A stored value (zero-copy where the store allows).
    type Value: AsRef<[u8]> + Send + Sync + 'static;
    /// Iterator over `(seq, value)` of the records tree.
    type RecordIter: Iterator<Item = Result<(u64, Self::Value), StoreError>> + Send;
    /// Iterator over the seqs of one pool in the index.
    type IndexIter: Iterator<Item = Result<u64, StoreError>> + Send;

    /// Writes `records` (seq, bytes) atomically, then the index keys and the new index
    /// high-water seq atomically. Not durable until `sync`.
    fn append_batch(
        &self,
        records: &[(u64, Vec<u8>)],
        index_keys: &[Vec<u8>],
        index_high_water_seq: u64,
    ) -> Result<(), StoreError>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// One record.
    fn get(&self, seq: u64) -> Result<Option<Self::Value>, StoreError>;
    /// Records with key >= seq, ascending.
    fn iter_from(&self, seq: u64) -> Self::RecordIter;
    /// All records, newest first.
    fn iter_rev(&self) -> Self::RecordIter;
    /// The record with the highest key.
    fn last(&self) -> Result<Option<(u64, Self::Value)>, StoreError>;
    /// Writes one raw record value (import tools, tests, fixtures). Not durable until `sync`.
    fn put_raw(&self, seq: u64, value: &[u8]) -> Result<(), StoreError>;
    /// Removes records with key >= seq; returns how many.
    fn remove_from(&self, seq: u64) -> Result<u64, StoreError>;

    /// Highest seq whose pool entry (if any) is in the index; 0 if never written.
    fn index_high_water(&self) -> Result<u64, StoreError>;
    /// Adds index keys and sets the high-water seq, atomically.
    fn index_add(&self, index_keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError>;
    /// Removes index keys and sets the high-water seq, atomically.
    fn index_remove(&self, index_keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError>;
    /// Seqs indexed under `pool_id`, ascending, from `since_seq`.
    fn index_scan(&self, pool_id: &str, since_seq: u64) -> Self::IndexIter;

    /// Stores one snapshot value under `covers_seq`.
    fn snapshot_put(&self, covers_seq: u64, value: &[u8]) -> Result<(), StoreError>;
    /// `covers_seq` of every snapshot, newest first.
    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError>;
    /// One snapshot value.
    fn snapshot_get(&self, covers_seq: u64) -> Result<Option<Self::Value>, StoreError>;
    /// Removes one snapshot.
    fn snapshot_remove(&self, covers_seq: u64) -> Result<(), StoreError>;

    /// Sum of the sizes of the files under the store's directory.
    fn size_on_disk_bytes(&self) -> Result<u64, StoreError>;
}

/// The key of `seq` in the per-pool index.
pub fn index_key(pool_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(pool_id.len() + 9);
    key.extend_from_slice(pool_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
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
    index: sled::Tree,
    snapshots: sled::Tree,
    /// Our fd on `<dir>/db`, used only for `fdatasync`.
    db_file: File,
    /// Blob files already fsynced (pruned to what exists at each sweep).
    synced_blobs: Mutex<HashMap<std::ffi::OsString, u64>>,
    /// Holds the `flock` on `<dir>/LOCK` until the store is dropped.
    _lock: File,
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

/// `fsync` a directory so the entries created in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a valid fd we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The sled trees of a journal: records by seq, the per-pool index, snapshots.
const TREE_NAMES: [&str; 3] = ["records", "pool_index", "snapshots"];

impl SledStore {
    /// Opens (creating if absent) the store in `dir`, taking the directory lock first.
    ///
    /// Fails with [`StoreError::Locked`] if another opener holds `<dir>/LOCK` for longer than
    /// [`LOCK_RETRY_MS`].
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let started = Instant::now();
        while !try_flock(&lock).map_err(io_err(&lock_path))? {
            if started.elapsed() >= Duration::from_millis(LOCK_RETRY_MS) {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }

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
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    return Err(StoreError::Locked {
                        dir: dir.to_path_buf(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        };
        let existing = db.tree_names();
        let creates_trees = TREE_NAMES
            .iter()
            .any(|name| !existing.iter().any(|tree| tree.as_ref() == name.as_bytes()));
        let [records, index, snapshots] = TREE_NAMES.map(|name| db.open_tree(name));
        let (records, index, snapshots) = (records?, index?, snapshots?);
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(io_err(&db_path))?;

        let store = SledStore {
            dir: dir.to_path_buf(),
            db,
            records,
            index,
            snapshots,
            db_file,
            synced_blobs: Mutex::new(HashMap::new()),
            _lock: lock,
        };
        // Tree creation above is durable only after a flush. An existing journal has nothing of
        // ours to sync here: sled's own recovery rewrites its free segments with zeros at every
        // open (page cache only; sled does not sync them), and waiting for that at open would
        // put tens of ms of disk time into every start-up; the first append's fdatasync carries
        // those pages instead. The directory entries of the files sled created are synced once.
        if creates_trees {
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

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
            // it was last seen (the writer thread writes while this one syncs) is synced again.
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

/// Ascending or descending iterator over the records tree.
pub struct SledRecordIter {
    inner: sled::Iter,
    rev: bool,
}

impl Iterator for SledRecordIter {
    type Item = Result<(u64, IVec), StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = if self.rev {
            self.inner.next_back()
        } else {
            self.inner.next()
        }?;
        Some(
            item.map_err(StoreError::from)
                .and_then(|(k, v)| Ok((seq_of("records", &k)?, v))),
        )
    }
}

/// Iterator over one pool's seqs in the index.
pub struct SledIndexIter {
    inner: sled::Iter,
}

impl Iterator for SledIndexIter {
    type Item = Result<u64, StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        Some(item.map_err(StoreError::from).and_then(|(k, _)| {
            let cut = k.len().checked_sub(8).ok_or_else(|| StoreError::BadKey {
                tree: "pool_index",
                key_hex: crate::hex(&k),
            })?;
            seq_of("pool_index", &k[cut..])
        }))
    }
}

impl Store for SledStore {
    type Value = IVec;
    type RecordIter = SledRecordIter;
    type IndexIter = SledIndexIter;

    fn append_batch(
        &self,
        records: &[(u64, Vec<u8>)],
        index_keys: &[Vec<u8>],
        index_high_water_seq: u64,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&seq.to_be_bytes(), bytes.as_slice());
        }
        self.records.apply_batch(batch)?;
        // Written after the records: sled recovers a prefix of its log, so after a crash the
        // index may lag the records (rebuilt at open) but never lead them.
        self.index_add(index_keys, index_high_water_seq)
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
            rev: false,
        }
    }

    fn iter_rev(&self) -> SledRecordIter {
        SledRecordIter {
            inner: self.records.iter(),
            rev: true,
        }
    }

    fn last(&self) -> Result<Option<(u64, IVec)>, StoreError> {
        match self.records.last()? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((seq_of("records", &k)?, v))),
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
            if in_batch == crate::config::DEFAULT_MAX_BATCH_RECORDS {
                self.records.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        self.records.apply_batch(batch)?;
        Ok(removed)
    }

    fn index_high_water(&self) -> Result<u64, StoreError> {
        match self.index.get(INDEX_HIGH_WATER_KEY)? {
            None => Ok(0),
            Some(v) => seq_of("pool_index", &v),
        }
    }

    fn index_add(&self, index_keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in index_keys {
            batch.insert(key.as_slice(), &[] as &[u8]);
        }
        batch.insert(INDEX_HIGH_WATER_KEY, &high_water_seq.to_be_bytes());
        self.index.apply_batch(batch)?;
        Ok(())
    }

    fn index_remove(&self, index_keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in index_keys {
            batch.remove(key.as_slice());
        }
        batch.insert(INDEX_HIGH_WATER_KEY, &high_water_seq.to_be_bytes());
        self.index.apply_batch(batch)?;
        Ok(())
    }

    fn index_scan(&self, pool_id: &str, since_seq: u64) -> SledIndexIter {
        let start = index_key(pool_id, since_seq);
        let end = index_key(pool_id, u64::MAX);
        SledIndexIter {
            inner: self.index.range(start..=end),
        }
    }

    fn snapshot_put(&self, covers_seq: u64, value: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(covers_seq.to_be_bytes(), value)?;
        Ok(())
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        for key in self.snapshots.iter().keys().rev() {
            seqs.push(seq_of("snapshots", &key?)?);
        }
        Ok(seqs)
    }

    fn snapshot_get(&self, covers_seq: u64) -> Result<Option<IVec>, StoreError> {
        Ok(self.snapshots.get(covers_seq.to_be_bytes())?)
    }

    fn snapshot_remove(&self, covers_seq: u64) -> Result<(), StoreError> {
        self.snapshots.remove(covers_seq.to_be_bytes())?;
        Ok(())
    }

    fn size_on_disk_bytes(&self) -> Result<u64, StoreError> {
        fn walk(dir: &Path, depth: u32) -> Result<u64, StoreError> {
            // Bound: the journal dir is at most blobs/ or quarantine/ deep.
            const MAX_DEPTH: u32 = 4;
            let mut total = 0u64;
            for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
                let entry = entry.map_err(io_err(dir))?;
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                if meta.is_dir() {
                    if depth < MAX_DEPTH {
                        total += walk(&path, depth + 1)?;
                    }
                } else {
                    total += meta.len();
                }
            }
            Ok(total)
        }
        walk(&self.dir, 0)
    }
}
