//! [`Journal`]: the handle callers hold; reads run on the caller's thread, writes go to the
//! writer thread.
//!
//! Owns: open (lock, recovery, index catch-up, writer start), the read paths (`read_from`,
//! `read_pool`, `load_snapshot`, `verify`, `stats`, `export`) and the request side of writes.
//!
//! **Must never:** write to the store itself after open (every mutation goes through the
//! writer, which owns seq assignment), or show a reader a record past `last_seq` (records
//! written but not yet fsynced are invisible).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::JournalConfig;
use crate::json::{parse_import_line, write_export_line, MAX_IMPORT_LINE_BYTES};
use crate::record::{
    decode_record, decode_snapshot, encode_framed, Draft, Envelope, EventSchema, RecordFault,
};
use crate::recovery::{catch_up_index, recover};
use crate::report::{
    OpenReport, Problem, Stats, TruncateReport, VerifyReport, MAX_VERIFY_PROBLEMS,
};
use crate::store::{SledStore, Store, StoreError};
use crate::writer::{block_on, Command, Writer};
use crate::JournalError;

/// Largest encoded snapshot accepted by `save_snapshot`.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Largest `limit` honoured by `read_pool` (larger values are clamped).
pub const MAX_READ_POOL_LIMIT: usize = 100_000;
/// Longest accepted pool id, in bytes.
pub const MAX_POOL_ID_BYTES: usize = 256;

/// The store implementation in use.
type ActiveStore = SledStore;

/// A durable, append-only journal of `S::Event`s. Cheap to clone (an `Arc` inside); all
/// clones share one writer thread. The directory lock is released when the last clone is
/// dropped (dropping also stops the writer after it drained its queue).
pub struct Journal<S: EventSchema> {
    inner: Arc<Inner<S>>,
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
            .field("dir", &self.inner.dir)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

struct Inner<S: EventSchema> {
    /// The journal directory, as given in the config.
    dir: PathBuf,
    /// Shared with the writer thread, which holds the other strong reference while it runs.
    store: Arc<ActiveStore>,
    /// Last acknowledged (durable) seq; written only by the writer.
    last_seq: Arc<AtomicU64>,
    /// Request channel to the writer. `None` only while `Inner` is being dropped; dropping it
    /// is what lets the writer exit.
    tx: Option<mpsc::Sender<Command<S::Event>>>,
    /// Joined on drop, so the store (and sled's lock) is released when the last clone goes.
    writer: Option<JoinHandle<()>>,
    max_batch_records: usize,
    _schema: PhantomData<S>,
}

impl<S: EventSchema> Drop for Inner<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "journal writer thread panicked");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    Recover,
    Repair,
}

impl<S: EventSchema> Journal<S> {
    /// Opens (creating if absent) and runs recovery (see the crate docs). Starts the single
    /// writer thread.
    pub fn open(config: JournalConfig) -> Result<(Self, OpenReport), JournalError> {
        Self::open_mode(config, OpenMode::Recover)
    }

    /// Opens without recovery or index catch-up, for operator tools on a damaged journal
    /// (`verify`, `export`, `truncate_from`). `last_seq` is the highest key present, whatever
    /// its state; nothing is quarantined. Appends work but should not be used before repair.
    pub fn open_for_repair(config: JournalConfig) -> Result<(Self, OpenReport), JournalError> {
        Self::open_mode(config, OpenMode::Repair)
    }

    fn open_mode(
        config: JournalConfig,
        mode: OpenMode,
    ) -> Result<(Self, OpenReport), JournalError> {
        config.validate()?;
        if S::CURRENT_VERSION == 0 {
            return Err(JournalError::InvalidArgument {
                what: "EventSchema::CURRENT_VERSION must be >= 1".into(),
            });
        }
        let dir = config.dir.clone();
        let store =
            SledStore::open(&dir, config.cache_capacity_bytes).map_err(|e| e.into_journal(&dir))?;
        let mut report = OpenReport::default();
        match mode {
            OpenMode::Recover => {
                let recovered = recover::<S, _>(
                    &store,
                    &dir,
                    config.recovery,
                    config.max_batch_records as u64,
                )?;
                report.last_seq = recovered.last_seq;
                report.quarantined = recovered.quarantined;
                report.quarantine_file = recovered.quarantine_file;
                report.index_rebuilt = catch_up_index::<S, _>(
                    &store,
                    &dir,
                    report.last_seq,
                    config.max_batch_records,
                )?;
            }
            OpenMode::Repair => {
                report.last_seq = store
                    .last()
                    .map_err(|e| e.into_journal(&dir))?
                    .map(|(seq, _)| seq)
                    .unwrap_or(0);
            }
        }
        let store = Arc::new(store);
        let last_seq = Arc::new(AtomicU64::new(report.last_seq));
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer = Writer::<S, ActiveStore> {
            store: Arc::clone(&store),
            dir: dir.clone(),
            last_seq: Arc::clone(&last_seq),
            next_seq: report.last_seq + 1,
            max_batch_records: config.max_batch_records,
            rx,
            failed: None,
            _schema: PhantomData,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::io(&dir, e))?;
        let journal = Journal {
            inner: Arc::new(Inner {
                dir,
                store,
                last_seq,
                tx: Some(tx),
                writer: Some(handle),
                max_batch_records: config.max_batch_records,
                _schema: PhantomData,
            }),
        };
        Ok((journal, report))
    }

    fn se(&self) -> impl Fn(StoreError) -> JournalError + '_ {
        move |e| e.into_journal(&self.inner.dir)
    }

    fn corruption(&self, seq: u64, what: String) -> JournalError {
        JournalError::Corruption {
            seq,
            what,
            dir: self.inner.dir.clone(),
        }
    }

    fn fault(&self, seq: u64, fault: RecordFault) -> JournalError {
        match fault {
            RecordFault::Unsupported { version, current } => JournalError::UnsupportedVersion {
                seq,
                version,
                current,
            },
            RecordFault::Bad(what) => self.corruption(seq, what),
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Command<S::Event>,
    ) -> Result<T, JournalError> {
        let tx = self.inner.tx.as_ref().ok_or(JournalError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Appends, assigning consecutive seqs; returns only after the records are on stable
    /// storage (see "Acknowledged" in the crate docs). At most `max_batch_records` drafts per
    /// call; waits while the queue is full.
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
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Oldest first, from `seq` (inclusive; 0 reads as 1) to the `last_seq` seen at the call.
    /// Each item is checked (CRC, decode, key == envelope.seq, no missing seq); a bad one is
    /// `Err(Corruption{seq,..})` (or `UnsupportedVersion`) and ends the iteration.
    pub fn read_from(
        &self,
        seq: u64,
    ) -> impl Iterator<Item = Result<Envelope<S::Event>, JournalError>> + '_ {
        let start = seq.max(1);
        let end = self.last_seq();
        let mut iter = self.inner.store.iter_from(start);
        let mut expected = start;
        let mut done = start > end;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let item = match iter.next() {
                Some(Ok((key, value))) => {
                    if key != expected {
                        Err(self.corruption(
                            expected,
                            format!("missing: the next record present is seq {key}"),
                        ))
                    } else {
                        decode_record::<S>(key, value.as_ref()).map_err(|f| self.fault(key, f))
                    }
                }
                Some(Err(e)) => Err(e.into_journal(&self.inner.dir)),
                None => Err(self.corruption(
                    expected,
                    format!("missing: the journal ends before its last seq {end}"),
                )),
            };
            if item.is_err() || expected >= end {
                done = true;
            }
            expected += 1;
            Some(item)
        })
    }

    /// One partition's history, oldest first, `seq >= since_seq`, at most `limit` (clamped to
    /// `MAX_READ_POOL_LIMIT`), through the per-pool index. Every record is checked as in
    /// `read_from`; stale index entries (seqs removed by repair) are skipped.
    pub fn read_pool(
        &self,
        pool_id: &str,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope<S::Event>>, JournalError> {
        let limit = limit.min(MAX_READ_POOL_LIMIT);
        let end = self.last_seq();
        let mut out = Vec::new();
        if limit == 0 || pool_id.as_bytes().contains(&0) {
            return Ok(out);
        }
        for item in self.inner.store.index_scan(pool_id, since_seq) {
            let seq = item.map_err(self.se())?;
            if seq > end || out.len() >= limit {
                break;
            }
            let Some(value) = self.inner.store.get(seq).map_err(self.se())? else {
                continue;
            };
            let envelope =
                decode_record::<S>(seq, value.as_ref()).map_err(|f| self.fault(seq, f))?;
            if envelope.pool_id.as_deref() == Some(pool_id) {
                out.push(envelope);
            }
        }
        Ok(out)
    }

    /// Stores a snapshot of a caller's projection covering seqs `1..=covers_seq`;
    /// `state_version` is the caller's snapshot schema version. Durable on return. Keeps the
    /// newest two snapshots and older ones spread over the history (at most
    /// [`crate::SNAPSHOTS_KEPT_MAX`] in all).
    pub fn save_snapshot<T: Serialize>(
        &self,
        covers_seq: u64,
        state_version: u8,
        state: &T,
    ) -> Result<(), JournalError> {
        let value = encode_framed(state_version, state).map_err(|e| JournalError::Encode {
            what: format!("snapshot covering seq {covers_seq}: {e}"),
        })?;
        if value.len() > MAX_SNAPSHOT_BYTES {
            return Err(JournalError::RecordTooLarge {
                seq: covers_seq,
                bytes: value.len(),
                max_bytes: MAX_SNAPSHOT_BYTES,
            });
        }
        block_on(self.request(|reply| Command::SaveSnapshot {
            covers_seq,
            value,
            reply,
        }))
    }

    /// The newest valid snapshot (CRC ok, same `state_version`, decodes as `T`,
    /// `covers_seq <= last_seq`) as `(covers_seq, state)`; `None` otherwise. Each rejected
    /// snapshot is logged at warn with why; callers then replay fully.
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
        let dir = self.inner.dir.display();
        let seqs = match self.inner.store.snapshot_seqs() {
            Ok(seqs) => seqs,
            Err(e) => {
                tracing::warn!(%dir, error = %e, "cannot list snapshots; replaying fully");
                return None;
            }
        };
        let last_seq = self.last_seq();
        for covers_seq in seqs {
            if covers_seq > max_seq {
                continue;
            }
            if covers_seq > last_seq {
                tracing::warn!(%dir, covers_seq, last_seq, "snapshot ignored: covers seqs past the journal's end (stale)");
                continue;
            }
            let value = match self.inner.store.snapshot_get(covers_seq) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%dir, covers_seq, error = %e, "snapshot ignored: cannot read it");
                    continue;
                }
            };
            match decode_snapshot::<T>(state_version, value.as_ref()) {
                Ok(state) => return Some((covers_seq, state)),
                Err(why) => {
                    tracing::warn!(%dir, covers_seq, why = %why, "snapshot ignored");
                }
            }
        }
        None
    }

    /// Checks every record: CRC, decode, key == seq, continuity from 1.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        let add = |report: &mut VerifyReport, seq: u64, what: String| {
            if report.problems.len() < MAX_VERIFY_PROBLEMS {
                report.problems.push(Problem { seq, what });
            } else {
                report.problems_omitted += 1;
            }
        };
        let mut expected = 1u64;
        for item in self.inner.store.iter_from(0) {
            let (seq, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    add(&mut report, expected, format!("store error: {e}"));
                    break;
                }
            };
            if report.records == 0 {
                report.first_seq = seq;
            }
            report.records += 1;
            report.last_seq = seq;
            if seq != expected {
                let what = if seq > expected {
                    format!("seqs {expected}..{seq} are missing")
                } else {
                    format!("key {seq} out of order")
                };
                add(&mut report, expected, what);
            }
            if let Err(f) = decode_record::<S>(seq, value.as_ref()) {
                add(&mut report, seq, f.to_string());
            }
            expected = seq.saturating_add(1);
        }
        report
    }

    /// Counts per kind, first/last seq and ts_ms, size on disk, snapshot seqs.
    pub fn stats(&self) -> Result<Stats, JournalError> {
        let mut stats = Stats::default();
        let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
        for item in self.read_from(1) {
            let env = item?;
            if stats.records == 0 {
                stats.first_seq = env.seq;
                stats.first_ts_ms = env.ts_ms;
            }
            stats.records += 1;
            stats.last_seq = env.seq;
            stats.last_ts_ms = env.ts_ms;
            *by_kind.entry(S::kind(&env.event)).or_insert(0) += 1;
        }
        stats.by_kind = by_kind
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        stats.size_on_disk_bytes = self.inner.store.size_on_disk_bytes().map_err(self.se())?;
        stats.snapshot_seqs = self.inner.store.snapshot_seqs().map_err(self.se())?;
        Ok(stats)
    }

    /// Writes NDJSON, one envelope per line (see `json` module docs); returns the line count.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<u64, JournalError> {
        let mut buf = Vec::with_capacity(256);
        let mut lines = 0u64;
        for item in self.read_from(1) {
            let env = item?;
            write_export_line(&env, &mut buf)?;
            out.write_all(&buf)
                .map_err(|e| JournalError::io("<export output>", e))?;
            lines += 1;
        }
        out.flush()
            .map_err(|e| JournalError::io("<export output>", e))?;
        Ok(lines)
    }

    /// Imports NDJSON (the export format) into an empty journal; lines must carry seq 1, 2,
    /// 3, ... (blank lines are skipped). On any error, records already imported by this call
    /// are removed again (to a quarantine file) and the error names the line.
    /// Blocks: do not call from a tokio runtime worker thread.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<u64, JournalError> {
        if self.last_seq() != 0 {
            return Err(JournalError::NotEmpty {
                dir: self.inner.dir.clone(),
            });
        }
        match self.import_lines(input) {
            Ok(n) => Ok(n),
            Err(e) => {
                if self.last_seq() > 0 {
                    if let Err(rollback) = self.truncate_from(1) {
                        tracing::error!(dir = %self.inner.dir.display(), error = %rollback, "import rollback failed");
                    }
                }
                Err(e)
            }
        }
    }

    fn import_lines(&self, input: &mut dyn BufRead) -> Result<u64, JournalError> {
        let mut line_no = 0u64;
        let mut expected_seq = 1u64;
        let mut chunk: Vec<Draft<S::Event>> = Vec::with_capacity(self.inner.max_batch_records);
        let mut line = String::new();
        let import_err = |line: u64, what: String| JournalError::Import { line, what };
        loop {
            line.clear();
            let read = std::io::Read::take(&mut *input, MAX_IMPORT_LINE_BYTES as u64 + 1)
                .read_line(&mut line)
                .map_err(|e| import_err(line_no + 1, format!("cannot read: {e}")))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            if read > MAX_IMPORT_LINE_BYTES {
                return Err(import_err(
                    line_no,
                    format!("line longer than {MAX_IMPORT_LINE_BYTES} bytes"),
                ));
            }
            let text = line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let (seq, draft) =
                parse_import_line::<S::Event>(text).map_err(|what| import_err(line_no, what))?;
            if seq != expected_seq {
                return Err(import_err(
                    line_no,
                    format!("seq {seq}, expected {expected_seq} (seqs must be 1, 2, 3, ... without gaps)"),
                ));
            }
            expected_seq += 1;
            chunk.push(draft);
            if chunk.len() >= self.inner.max_batch_records {
                self.import_chunk(&mut chunk, line_no)?;
            }
        }
        self.import_chunk(&mut chunk, line_no)?;
        Ok(expected_seq - 1)
    }

    fn import_chunk(
        &self,
        chunk: &mut Vec<Draft<S::Event>>,
        line_no: u64,
    ) -> Result<(), JournalError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let first_expected = self.last_seq() + 1;
        let envelopes = self.append_blocking(std::mem::take(chunk))?;
        if envelopes.first().map(|e| e.seq) != Some(first_expected) {
            return Err(JournalError::Import {
                line: line_no,
                what: "another writer appended during the import".into(),
            });
        }
        Ok(())
    }

    /// Moves records `seq >= from_seq` into a quarantine file and deletes them (and the
    /// snapshots covering them); the repair for mid-journal corruption. Blocks.
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
}
