//! [`Journal`]: the handle callers hold. Reads run on the caller's thread from the in-memory
//! tail and the segment files; writes go to the writer thread; sealing, retention and recovery
//! run on the maintenance thread.
//!
//! Owns: open (lock, migration, load and check, writer and maintenance start), the read-only
//! open, the read paths, snapshots, and the request side of writes.
//!
//! **Must never:** write to the live store itself after open (every mutation goes through the
//! writer, which owns seq assignment), show a reader a record past `last_seq`, or open a
//! journal that holds less than its witnesses prove.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::JournalConfig;
use crate::layout::{self, Layout, Locked};
use crate::load::{Depth, Loaded};
use crate::record::{decode_framed, encode_framed, framed_crc, Draft, Envelope, EventSchema};
use crate::report::{OpenReport, TruncateReport, Usage};
use crate::shared::{JournalHealth, Shared, View};
use crate::snapshot;
use crate::witness::{self, Reading, Vouch, Witness};
use crate::writer::{block_on, Command};
use crate::JournalError;

/// Largest encoded snapshot accepted by `save_snapshot`.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Largest `limit` honoured by `read_pool` (larger values are clamped).
pub const MAX_READ_POOL_LIMIT: usize = 100_000;
/// Longest accepted pool id, in bytes.
pub const MAX_POOL_ID_BYTES: usize = 256;
/// How many times a read-only open beside a running daemon copies the live store again when
/// the copy caught the daemon mid-write.
pub const READ_ONLY_ATTEMPTS: usize = 5;

/// A durable, append-only journal of `S::Event`s. Cheap to clone (an `Arc` inside); all
/// clones share one writer thread. The directory lock is released when the last clone is
/// dropped (dropping also stops the writer after it drained its queue).
pub struct Journal<S: EventSchema> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: EventSchema> Clone for Journal<S> {
    fn clone(&self) -> Self {
        Journal {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: EventSchema> std::fmt::Debug for Journal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.shared.layout.dir)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

pub(crate) struct Inner<S: EventSchema> {
    pub(crate) shared: Arc<Shared>,
    /// Request channel to the writer; `None` when read-only, and while `Inner` is dropped.
    tx: Option<mpsc::Sender<Command<S::Event>>>,
    writer: Option<JoinHandle<()>>,
    maintenance: Option<JoinHandle<()>>,
    pub(crate) max_batch_records: usize,
    /// The `flock` on `<dir>/LOCK` (writable journals), released last.
    _lock: Option<File>,
    _schema: PhantomData<S>,
}

impl<S: EventSchema> Drop for Inner<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(dir = %self.shared.layout.dir.display(), "journal writer thread panicked");
            }
        }
        self.shared.stop();
        if let Some(handle) = self.maintenance.take() {
            if handle.join().is_err() {
                tracing::error!(dir = %self.shared.layout.dir.display(), "journal maintenance thread panicked");
            }
        }
    }
}

impl<S: EventSchema> Journal<S> {
    /// Opens for writing (creating if absent): takes the lock, finishes an interrupted repair
    /// or migrates a journal from before segments, loads and checks everything start-up reads
    /// (see `load`), and refuses with [`JournalError::Damaged`] on any damage. On a disk that
    /// refuses writes the journal opens *unavailable* (reads work, appends answer
    /// [`JournalError::Unavailable`]) and becomes writable by itself once the disk takes writes.
    pub fn open(config: JournalConfig) -> Result<(Self, OpenReport), JournalError> {
        crate::open::open_writable::<S>(config)
    }

    /// Opens without writing anything, for tools (`verify`, `stats`, `show`, `export`,
    /// `replay`): works on a read-only or full file system and beside a running daemon (the
    /// live store is copied to the scratch directory and read there). Damage refuses as in
    /// [`Journal::open`]; appends answer [`JournalError::ReadOnly`].
    pub fn open_read_only(config: JournalConfig) -> Result<(Self, OpenReport), JournalError> {
        let (loaded, report) = crate::open::load_read_only::<S>(&config, Depth::Start)?;
        if let Some(refusal) = loaded.refusal(&Layout::new(&config.dir)) {
            return Err(refusal);
        }
        let journal = Self::from_loaded(config, loaded, None, None, None);
        Ok((journal, report))
    }

    /// Like [`Journal::open_read_only`], but hands out the journal even when damage was found
    /// (with the refusal `open_read_only` would have answered): reads then stop with an error
    /// at the damage. For `export`, which saves what can be read before a repair.
    pub fn open_read_only_despite_damage(
        config: JournalConfig,
    ) -> Result<(Self, Option<JournalError>), JournalError> {
        let (loaded, _) = crate::open::load_read_only::<S>(&config, Depth::Start)?;
        let refusal = loaded.refusal(&Layout::new(&config.dir));
        Ok((Self::from_loaded(config, loaded, None, None, None), refusal))
    }

    pub(crate) fn from_loaded(
        config: JournalConfig,
        loaded: Loaded,
        witness: Option<Witness>,
        writer: Option<crate::open::WriterParts<S>>,
        lock: Option<File>,
    ) -> Self {
        let layout = Layout::new(&config.dir);
        let last_seq = loaded.held_last();
        let max_batch_records = config.max_batch_records;
        let writable = writer.as_ref().is_some_and(|parts| parts.store.is_some());
        let shared = Arc::new(Shared::new(
            layout,
            config,
            View {
                manifest: Arc::new(loaded.manifest),
                tail: loaded.tail,
            },
            last_seq,
            witness,
            writable,
        ));
        let (tx, writer_handle, maintenance) = match writer {
            Some(parts) => {
                let (writer, tx) = parts.into_writer(Arc::clone(&shared));
                let handle = std::thread::Builder::new()
                    .name("journal-writer".into())
                    .spawn(move || writer.run())
                    .ok();
                let weak = tx.downgrade();
                let maint_shared = Arc::clone(&shared);
                let maintenance = std::thread::Builder::new()
                    .name("journal-maint".into())
                    .spawn(move || crate::maintenance::run(maint_shared, weak))
                    .ok();
                (Some(tx), handle, maintenance)
            }
            None => (None, None, None),
        };
        Journal {
            inner: Arc::new(Inner {
                shared,
                tx,
                writer: writer_handle,
                maintenance,
                max_batch_records,
                _lock: lock,
                _schema: PhantomData,
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Command<S::Event>,
    ) -> Result<T, JournalError> {
        let Some(tx) = self.inner.tx.as_ref() else {
            return Err(JournalError::ReadOnly {
                dir: self.dir().to_path_buf(),
            });
        };
        let (reply, answer) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Appends, assigning consecutive seqs; returns only after the records are on stable
    /// storage (see "Acknowledged" in the crate docs). At most `max_batch_records` drafts per
    /// call; waits while the queue is full. While the disk refuses writes it answers
    /// [`JournalError::Unavailable`] at once.
    pub async fn append(
        &self,
        drafts: Vec<Draft<S::Event>>,
    ) -> Result<Vec<Envelope<S::Event>>, JournalError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        if drafts.len() > self.inner.max_batch_records {
            return Err(JournalError::BatchTooLarge {
                records: drafts.len(),
                max_records: self.inner.max_batch_records,
            });
        }
        for draft in &drafts {
            if let Some(pool) = &draft.pool_id {
                if pool.as_bytes().contains(&0) || pool.len() > MAX_POOL_ID_BYTES {
                    return Err(JournalError::InvalidArgument {
                        what: format!(
                            "pool_id {pool:?}: must not contain NUL and be at most {MAX_POOL_ID_BYTES} bytes"
                        ),
                    });
                }
            }
        }
        self.request(|reply| Command::Append { drafts, reply })
            .await
    }

    /// Same as [`append`](Self::append), for callers without an async runtime (CLI, tests).
    /// Must not be called from a tokio runtime worker thread (it blocks it); `spawn_blocking`
    /// threads are fine.
    pub fn append_blocking(
        &self,
        drafts: Vec<Draft<S::Event>>,
    ) -> Result<Vec<Envelope<S::Event>>, JournalError> {
        block_on(self.append(drafts))
    }

    /// Last acknowledged seq; 0 when empty.
    pub fn last_seq(&self) -> u64 {
        self.shared().last_seq()
    }

    /// The earliest seq still held (retention drops older ones); `last_seq + 1` when the
    /// journal holds nothing.
    pub fn first_seq(&self) -> u64 {
        self.shared().manifest().first_retained()
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.shared().layout.dir
    }

    /// Whether appends are accepted now, and why not.
    pub fn health(&self) -> JournalHealth {
        self.shared().health()
    }

    /// Whether this handle was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.tx.is_none()
    }

    /// Oldest first, from `seq` (inclusive; 0: the earliest retained) to the `last_seq` seen at
    /// the call. Each item is checked (CRC, decode, key == envelope.seq, no missing seq but
    /// where a loss marker declares it); a bad one is `Err(Corruption{seq,..})` (or
    /// `UnsupportedVersion`) and ends the iteration. A `seq` that retention dropped is
    /// `Err(HistoryExpired)`.
    pub fn read_from(
        &self,
        seq: u64,
    ) -> impl Iterator<Item = Result<Envelope<S::Event>, JournalError>> + '_ {
        crate::read::Reader::<S>::new(self.shared(), seq)
    }

    /// One partition's history, oldest first, `seq >= since_seq` (0: from the earliest
    /// retained), at most `limit` (clamped to `MAX_READ_POOL_LIMIT`). Every record is checked
    /// as in `read_from`. A `since_seq` that retention dropped is `Err(HistoryExpired)`.
    pub fn read_pool(
        &self,
        pool_id: &str,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope<S::Event>>, JournalError> {
        let limit = limit.min(MAX_READ_POOL_LIMIT);
        if limit == 0 || pool_id.as_bytes().contains(&0) {
            return Ok(Vec::new());
        }
        crate::read::read_pool::<S>(self.shared(), pool_id, since_seq, limit)
    }

    /// Stores a snapshot of a caller's projection covering seqs `1..=covers_seq`;
    /// `state_version` is the caller's snapshot schema version. Durable on return. Keeps the
    /// newest two snapshots and older ones spread over the retained history (at most
    /// [`crate::SNAPSHOTS_KEPT_MAX`]).
    pub fn save_snapshot<T: Serialize>(
        &self,
        covers_seq: u64,
        state_version: u8,
        state: &T,
    ) -> Result<(), JournalError> {
        if self.is_read_only() {
            return Err(JournalError::ReadOnly {
                dir: self.dir().to_path_buf(),
            });
        }
        let last_seq = self.last_seq();
        if covers_seq == 0 || covers_seq > last_seq {
            return Err(JournalError::SnapshotAhead {
                covers_seq,
                last_seq,
            });
        }
        let payload = encode_framed(state_version, state).map_err(|e| JournalError::Encode {
            what: format!("snapshot covering seq {covers_seq}: {e}"),
        })?;
        if payload.len() > MAX_SNAPSHOT_BYTES {
            return Err(JournalError::RecordTooLarge {
                seq: covers_seq,
                bytes: payload.len(),
                max_bytes: MAX_SNAPSHOT_BYTES,
            });
        }
        let record = crate::read::record_bytes(self.shared(), covers_seq)?;
        let record_crc = record.as_deref().and_then(framed_crc).unwrap_or(0);
        let shared = self.shared();
        let _guard = shared
            .snapshot_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let io = |e: std::io::Error| JournalError::io(shared.layout.snapshot_file(covers_seq), e);
        snapshot::write(
            &shared.layout,
            covers_seq,
            record_crc,
            state_version,
            &payload,
        )
        .map_err(io)?;
        snapshot::prune(&shared.layout, shared.manifest().first_retained()).map_err(io)?;
        Ok(())
    }

    /// The newest valid snapshot (checks pass, same `state_version`, decodes as `T`, the record
    /// it covers is the one it was taken after) as `(covers_seq, state)`; `None` otherwise.
    /// Each rejected snapshot is logged at warn with why; callers then replay further.
    pub fn load_snapshot<T: DeserializeOwned>(&self, state_version: u8) -> Option<(u64, T)> {
        self.load_snapshot_at(state_version, u64::MAX)
    }

    /// Like [`Journal::load_snapshot`], among the snapshots covering at most `max_seq`: the
    /// nearest valid one at or before it (a replay to `max_seq` starts there).
    pub fn load_snapshot_at<T: DeserializeOwned>(
        &self,
        state_version: u8,
        max_seq: u64,
    ) -> Option<(u64, T)> {
        let shared = self.shared();
        let dir = shared.layout.dir.display();
        let seqs = match snapshot::list(&shared.layout) {
            Ok(seqs) => seqs,
            Err(e) => {
                tracing::warn!(%dir, error = %e, "cannot list snapshots; replaying further");
                return None;
            }
        };
        let last_seq = self.last_seq();
        for covers_seq in seqs.into_iter().filter(|s| *s <= max_seq.min(last_seq)) {
            match self.snapshot_state::<T>(covers_seq, state_version) {
                Ok(state) => return Some((covers_seq, state)),
                Err(why) => tracing::warn!(%dir, covers_seq, why = %why, "snapshot ignored"),
            }
        }
        None
    }

    fn snapshot_state<T: DeserializeOwned>(
        &self,
        covers_seq: u64,
        state_version: u8,
    ) -> Result<T, String> {
        let shared = self.shared();
        let path = shared.layout.snapshot_file(covers_seq);
        let file = snapshot::read(&path).map_err(|e| e.to_string())??;
        if file.covers_seq != covers_seq || file.state_version != state_version {
            return Err(format!(
                "covers seq {} with state_version {}, wanted {covers_seq} with {state_version}",
                file.covers_seq, file.state_version
            ));
        }
        if covers_seq + 1 >= shared.manifest().first_retained() {
            if let Some(record) =
                crate::read::record_bytes(shared, covers_seq).map_err(|e| e.to_string())?
            {
                if framed_crc(&record) != Some(file.record_crc) {
                    return Err(format!(
                        "the record at seq {covers_seq} is not the one it was taken after"
                    ));
                }
            }
        }
        decode_framed::<T>(state_version, &file.payload)
    }

    /// `covers_seq` of every snapshot, newest first.
    pub fn snapshot_seqs(&self) -> Vec<u64> {
        snapshot::list(&self.shared().layout).unwrap_or_default()
    }

    /// The earliest seq a replay to a seq can reach: 0 while the history is whole from seq 1,
    /// else the oldest snapshot at or after the earliest retained seq minus one.
    pub fn time_travel_from(&self) -> u64 {
        let first = self.first_seq();
        if first <= 1 {
            return 0;
        }
        self.snapshot_seqs()
            .into_iter()
            .filter(|s| s + 1 >= first)
            .min()
            .unwrap_or(self.last_seq())
    }

    /// Sizes and the retained range, cheaply (for metrics, `/health` and `stats`): the sizes of
    /// the live store's and the snapshots' files are read at most once a second.
    pub fn usage(&self) -> Usage {
        let shared = self.shared();
        let manifest = shared.manifest();
        let (tail_records, tail_bytes) = {
            let view = shared.read_view();
            (view.tail.len() as u64, view.tail.bytes() as u64)
        };
        let (live_bytes, snapshot_bytes) = shared.file_bytes();
        Usage {
            segments: manifest.segments.len() as u64,
            segment_bytes: manifest.bytes(),
            live_bytes,
            snapshot_bytes,
            tail_records,
            tail_bytes,
            first_seq: manifest.first_retained(),
            last_seq: self.last_seq(),
            expired_through: manifest.expired_through,
        }
    }

    /// Moves records `seq >= from_seq` into a quarantine file and deletes them (and the
    /// snapshots covering them). Only the unsealed tail can be cut, or everything (`from_seq`
    /// at or below the earliest retained seq: import's rollback). Blocks.
    pub fn truncate_from(&self, from_seq: u64) -> Result<TruncateReport, JournalError> {
        block_on(self.request(|reply| Command::Truncate { from_seq, reply }))
    }

    /// Stops the writer after draining queued appends; later appends fail with `Closed`.
    /// Idempotent. Reads keep working; the directory lock is held until the last clone is
    /// dropped. Blocks until the writer has drained.
    pub fn close(&self) -> Result<(), JournalError> {
        let Some(tx) = self.inner.tx.as_ref() else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        block_on(async {
            if tx.send(Command::Close { reply }).await.is_ok() {
                // An error here means the writer already exited: closed either way.
                let _ = answer.await;
            }
        });
        Ok(())
    }

    /// Seals the tail now (whatever its size) and waits for it: tests and tools.
    pub fn seal_now(&self) -> Result<(), JournalError> {
        if self.is_read_only() {
            return Err(JournalError::ReadOnly {
                dir: self.dir().to_path_buf(),
            });
        }
        let shared = self.shared();
        crate::maintenance::seal_once(shared)
            .map(|_| ())
            .map_err(|e| JournalError::io(shared.layout.segments(), e))
    }

    /// Runs retention now and waits for it: tests and tools.
    pub fn apply_retention_now(&self) -> Result<(), JournalError> {
        let shared = self.shared();
        crate::maintenance::apply_retention(shared)
            .map_err(|e| JournalError::io(shared.layout.segments(), e))
    }
}

/// Opens the witness for writing, creating it when the journal is new.
pub(crate) fn writable_witness(
    layout: &Layout,
    reading: &Reading,
    held: u64,
    held_crc: u32,
    first: u64,
) -> Result<Witness, JournalError> {
    let path = layout.witness();
    let io = |e: std::io::Error| JournalError::io(&path, e);
    match reading.vouch() {
        Some(vouch) => {
            let witness = Witness::open(&path, vouch).map_err(io)?;
            witness.set_first_seq(first);
            if held > vouch.seq {
                // Valid records the witness had not vouched for yet (written, synced, then the
                // process died before the witness caught up): vouch for them now.
                witness.record(held, held_crc).map_err(io)?;
            }
            Ok(witness)
        }
        None => Witness::create(
            &path,
            Vouch {
                seq: held,
                record_crc: held_crc,
                first_seq: first,
                counter: 0,
            },
        )
        .map_err(io),
    }
}

/// Takes the directory lock of a writable open.
pub(crate) fn take_lock(layout: &Layout) -> Result<File, JournalError> {
    crate::private::create_dir_all(&layout.dir).map_err(|e| JournalError::io(&layout.dir, e))?;
    match layout::lock(layout).map_err(|e| JournalError::io(layout.lock(), e))? {
        Locked::Held(file) => Ok(file),
        Locked::Busy => Err(JournalError::Locked {
            dir: layout.dir.clone(),
        }),
    }
}

/// The scratch directory of one read-only open.
pub(crate) fn scratch_dir(config: &JournalConfig) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    config.scratch().join(format!(
        "pool-journal-ro-{}-{}-{}",
        std::process::id(),
        layout::system_now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The witness as it reads now (an unreadable file reads as damaged).
pub(crate) fn witness_reading(layout: &Layout) -> Reading {
    witness::read(&layout.witness())
        .unwrap_or_else(|e| Reading::Damaged(format!("cannot read: {e}")))
}
