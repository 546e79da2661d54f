//! The single writer thread: group commit, and every other mutation (snapshots, truncation).
//!
//! Owns: seq assignment (`next_seq`), the batch, the durability barrier call and the answers to
//! waiters. It is the only code that writes to the store after open.
//!
//! **Must never:** answer a waiter `Ok` before `Store::sync` returned `Ok` for that waiter's
//! records, or accept a write after a failed write/flush/fsync (`failed` is sticky: after a
//! failed fsync the kernel may have dropped the dirty pages, so a retry could "succeed"
//! without the data on disk).
//!
//! # Calling order of one group commit
//! 1. block for one command; 2. drain queued `Append`s without blocking while the batch stays
//!    within `max_batch_records` (a request that would overflow, or a non-append command,
//!    waits for the next round); 3. assign consecutive seqs and encode (a request whose record
//!    is too large is answered with an error alone, taking no seqs); 4. `Store::append_batch`;
//!    5. `Store::sync` once; 6. publish `last_seq`; 7. answer every waiter.

use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::{mpsc, oneshot};

use crate::record::{encode_record, Draft, Envelope, EventSchema, MAX_RECORD_BYTES};
use crate::repair::{remove_suffix, Reason};
use crate::report::TruncateReport;
use crate::store::{index_key, Store};
use crate::JournalError;

/// The newest snapshots always kept (start-up loads the newest valid one; the one before it is
/// the fallback when it does not decode).
pub const SNAPSHOTS_KEPT: usize = 2;
/// At most this many snapshots are kept in all: the newest [`SNAPSHOTS_KEPT`] and older ones
/// spread over the history, so that a replay to an earlier seq (time travel, `?at_seq=N`)
/// starts from a snapshot near it. Past the bound, a save removes the older snapshot whose
/// neighbours are closest (the smallest merged gap; never the oldest or the newest
/// [`SNAPSHOTS_KEPT`]): the kept ones stay spread evenly, at most about
/// `2 * last_seq / SNAPSHOTS_KEPT_MAX` events apart.
pub const SNAPSHOTS_KEPT_MAX: usize = 128;

/// Which snapshots to remove from `seqs` (newest first) to keep at most
/// [`SNAPSHOTS_KEPT_MAX`], under the rule of its doc.
pub(crate) fn snapshots_to_remove(seqs: &[u64]) -> Vec<u64> {
    let mut kept: Vec<u64> = seqs.to_vec();
    kept.sort_unstable();
    kept.dedup();
    let mut removed = Vec::new();
    while kept.len() > SNAPSHOTS_KEPT_MAX.max(SNAPSHOTS_KEPT + 1) {
        // Candidates: every snapshot but the oldest (index 0) and the newest SNAPSHOTS_KEPT.
        let last_candidate = kept.len() - SNAPSHOTS_KEPT - 1;
        let Some(victim) = (1..=last_candidate).min_by_key(|&i| kept[i + 1] - kept[i - 1]) else {
            break;
        };
        removed.push(kept.remove(victim));
    }
    removed
}

pub(crate) type AppendReply<E> = oneshot::Sender<Result<Vec<Envelope<E>>, JournalError>>;
/// One queued append: its drafts and where to answer.
type PendingAppend<E> = (Vec<Draft<E>>, AppendReply<E>);

/// A request to the writer. Dropping the reply sender (writer gone) reads as `Closed`.
pub(crate) enum Command<E> {
    Append {
        drafts: Vec<Draft<E>>,
        reply: AppendReply<E>,
    },
    SaveSnapshot {
        covers_seq: u64,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    Truncate {
        from_seq: u64,
        reply: oneshot::Sender<Result<TruncateReport, JournalError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

pub(crate) struct Writer<S: EventSchema, St: Store> {
    pub(crate) store: Arc<St>,
    pub(crate) dir: PathBuf,
    /// Shared with `Journal`: the last durable seq, published after each sync.
    pub(crate) last_seq: Arc<AtomicU64>,
    pub(crate) next_seq: u64,
    pub(crate) max_batch_records: usize,
    pub(crate) rx: mpsc::Receiver<Command<S::Event>>,
    /// Set by the first failed write/flush/fsync; sticky.
    pub(crate) failed: Option<String>,
    pub(crate) _schema: PhantomData<S>,
}

impl<S: EventSchema, St: Store> Writer<S, St> {
    fn failed_error(&self) -> Option<JournalError> {
        self.failed.as_ref().map(|what| JournalError::WriteFailed {
            dir: self.dir.clone(),
            what: what.clone(),
        })
    }

    /// Runs until every sender is gone, or `Close` arrived and the queue is drained.
    pub(crate) fn run(mut self) {
        let mut carry: Option<Command<S::Event>> = None;
        let mut close_replies = Vec::new();
        loop {
            let cmd = match carry.take() {
                Some(cmd) => cmd,
                None => match self.rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            match cmd {
                Command::Append { drafts, reply } => {
                    let mut records = drafts.len();
                    let mut batch = vec![(drafts, reply)];
                    // Bounded by max_batch_records: each accepted request adds >= 1 record.
                    while records < self.max_batch_records {
                        match self.rx.try_recv() {
                            Ok(Command::Append { drafts, reply })
                                if records + drafts.len() <= self.max_batch_records =>
                            {
                                records += drafts.len();
                                batch.push((drafts, reply));
                            }
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                Command::SaveSnapshot {
                    covers_seq,
                    value,
                    reply,
                } => {
                    let _ = reply.send(self.save_snapshot(covers_seq, &value));
                }
                Command::Truncate { from_seq, reply } => {
                    let _ = reply.send(self.truncate(from_seq));
                }
                Command::Close { reply } => {
                    // Queued commands are still received (and served); new sends fail.
                    self.rx.close();
                    close_replies.push(reply);
                }
            }
        }
        for reply in close_replies {
            let _ = reply.send(());
        }
    }

    fn commit(&mut self, batch: Vec<PendingAppend<S::Event>>) {
        if let Some(err) = self.failed_error() {
            for (_, reply) in batch {
                let _ = reply.send(Err(JournalError::WriteFailed {
                    dir: self.dir.clone(),
                    what: err.to_string(),
                }));
            }
            return;
        }
        let mut seq = self.next_seq;
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut index_keys: Vec<Vec<u8>> = Vec::new();
        let mut accepted = Vec::with_capacity(batch.len());
        for (drafts, reply) in batch {
            let first_seq = seq;
            let (records_mark, index_mark) = (records.len(), index_keys.len());
            let mut envelopes = Vec::with_capacity(drafts.len());
            let mut error = None;
            for draft in drafts {
                let envelope = draft.into_envelope(seq);
                match encode_record::<S>(&envelope) {
                    Ok(bytes) if bytes.len() <= MAX_RECORD_BYTES => {
                        if let Some(pool) = &envelope.pool_id {
                            index_keys.push(index_key(pool, seq));
                        }
                        records.push((seq, bytes));
                        envelopes.push(envelope);
                        seq += 1;
                    }
                    Ok(bytes) => {
                        error = Some(JournalError::RecordTooLarge {
                            seq,
                            bytes: bytes.len(),
                            max_bytes: MAX_RECORD_BYTES,
                        });
                        break;
                    }
                    Err(e) => {
                        error = Some(JournalError::Encode {
                            what: format!("event for seq {seq}: {e}"),
                        });
                        break;
                    }
                }
            }
            if let Some(err) = error {
                records.truncate(records_mark);
                index_keys.truncate(index_mark);
                seq = first_seq;
                let _ = reply.send(Err(err));
            } else {
                accepted.push((envelopes, reply));
            }
        }
        if accepted.is_empty() {
            return;
        }
        let last = seq - 1;
        let result = self
            .store
            .append_batch(&records, &index_keys, last)
            .and_then(|()| self.store.sync());
        match result {
            Ok(()) => {
                self.next_seq = seq;
                self.last_seq.store(last, Ordering::Release);
                for (envelopes, reply) in accepted {
                    let _ = reply.send(Ok(envelopes));
                }
            }
            Err(e) => {
                let what = e.to_string();
                tracing::error!(
                    dir = %self.dir.display(),
                    error = %what,
                    first_seq = self.next_seq,
                    "journal write failed; refusing all further appends"
                );
                self.failed = Some(what);
                for (_, reply) in accepted {
                    let _ = reply.send(Err(self.failed_error().unwrap_or(JournalError::Closed)));
                }
            }
        }
    }

    fn save_snapshot(&mut self, covers_seq: u64, value: &[u8]) -> Result<(), JournalError> {
        if let Some(err) = self.failed_error() {
            return Err(err);
        }
        let last_seq = self.next_seq - 1;
        if covers_seq == 0 || covers_seq > last_seq {
            return Err(JournalError::SnapshotAhead {
                covers_seq,
                last_seq,
            });
        }
        let se = |e: crate::store::StoreError| e.into_journal(&self.dir);
        let result = (|| {
            self.store.snapshot_put(covers_seq, value).map_err(se)?;
            let seqs = self.store.snapshot_seqs().map_err(se)?;
            for old in snapshots_to_remove(&seqs) {
                self.store.snapshot_remove(old).map_err(se)?;
            }
            self.store.sync().map_err(se)
        })();
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn truncate(&mut self, from_seq: u64) -> Result<TruncateReport, JournalError> {
        if let Some(err) = self.failed_error() {
            return Err(err);
        }
        if from_seq == 0 {
            return Err(JournalError::InvalidArgument {
                what: "truncate_from: seqs start at 1".into(),
            });
        }
        let last_seq = self.next_seq - 1;
        if from_seq > last_seq {
            return Ok(TruncateReport {
                from_seq,
                last_seq,
                ..TruncateReport::default()
            });
        }
        let mut removed = Vec::new();
        let result = remove_suffix::<S, St>(
            &self.store,
            &self.dir,
            from_seq,
            Reason::Operator,
            &mut removed,
        );
        match result {
            Ok(report) => {
                self.next_seq = from_seq;
                self.last_seq.store(from_seq - 1, Ordering::Release);
                tracing::warn!(
                    dir = %self.dir.display(),
                    from_seq,
                    removed = report.removed_records,
                    "journal truncated"
                );
                Ok(report)
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread, parking between polls. Used by the
/// blocking API; works outside any runtime (tokio's sync primitives need none) and never
/// panics inside one (it only blocks the thread, which callers must not do on a runtime
/// worker).
///
/// The future runs unconstrained by tokio's cooperative budget: on a thread inside a runtime's
/// context (the thread of a `Runtime::block_on`, a sync step of the feature suite), a budget
/// the surrounding task had spent would otherwise make every channel poll answer `Pending`
/// and wake at once, forever (the task never yields to the runtime to get a new budget): a
/// busy spin that never completes.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    //! The failure path of the group commit, with a store whose `sync` can be made to fail:
    //! no waiter is ever told `Ok` for records whose sync failed, and the failure is sticky.

    use std::sync::atomic::AtomicBool;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::store::{SledStore, StoreError};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Noted {
        n: u32,
    }

    struct NotedSchema;

    impl EventSchema for NotedSchema {
        type Event = Noted;
        const CURRENT_VERSION: u8 = 1;
        fn kind(_: &Noted) -> &'static str {
            "Noted"
        }
    }

    /// A sled store whose `sync` fails while `fail_sync` is set (as an fsync EIO would).
    struct FlakyStore {
        inner: SledStore,
        fail_sync: AtomicBool,
        syncs: AtomicU64,
    }

    impl Store for FlakyStore {
        type Value = <SledStore as Store>::Value;
        type RecordIter = <SledStore as Store>::RecordIter;
        type IndexIter = <SledStore as Store>::IndexIter;

        fn append_batch(
            &self,
            records: &[(u64, Vec<u8>)],
            index_keys: &[Vec<u8>],
            index_high_water_seq: u64,
        ) -> Result<(), StoreError> {
            self.inner
                .append_batch(records, index_keys, index_high_water_seq)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail_sync.load(Ordering::SeqCst) {
                return Err(StoreError::Io {
                    path: PathBuf::from("db"),
                    source: std::io::Error::other("injected fdatasync failure"),
                });
            }
            self.inner.sync()
        }
        fn get(&self, seq: u64) -> Result<Option<Self::Value>, StoreError> {
            self.inner.get(seq)
        }
        fn iter_from(&self, seq: u64) -> Self::RecordIter {
            self.inner.iter_from(seq)
        }
        fn iter_rev(&self) -> Self::RecordIter {
            self.inner.iter_rev()
        }
        fn last(&self) -> Result<Option<(u64, Self::Value)>, StoreError> {
            self.inner.last()
        }
        fn put_raw(&self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
            self.inner.put_raw(seq, value)
        }
        fn remove_from(&self, seq: u64) -> Result<u64, StoreError> {
            self.inner.remove_from(seq)
        }
        fn index_high_water(&self) -> Result<u64, StoreError> {
            self.inner.index_high_water()
        }
        fn index_add(&self, keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError> {
            self.inner.index_add(keys, high_water_seq)
        }
        fn index_remove(&self, keys: &[Vec<u8>], high_water_seq: u64) -> Result<(), StoreError> {
            self.inner.index_remove(keys, high_water_seq)
        }
        fn index_scan(&self, pool_id: &str, since_seq: u64) -> Self::IndexIter {
            self.inner.index_scan(pool_id, since_seq)
        }
        fn snapshot_put(&self, covers_seq: u64, value: &[u8]) -> Result<(), StoreError> {
            self.inner.snapshot_put(covers_seq, value)
        }
        fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
            self.inner.snapshot_seqs()
        }
        fn snapshot_get(&self, covers_seq: u64) -> Result<Option<Self::Value>, StoreError> {
            self.inner.snapshot_get(covers_seq)
        }
        fn snapshot_remove(&self, covers_seq: u64) -> Result<(), StoreError> {
            self.inner.snapshot_remove(covers_seq)
        }
        fn size_on_disk_bytes(&self) -> Result<u64, StoreError> {
            self.inner.size_on_disk_bytes()
        }
    }

    fn draft(n: u32) -> Draft<Noted> {
        Draft {
            ts_ms: u64::from(n),
            pool_id: Some("p1".into()),
            cause: None,
            event: Noted { n },
        }
    }

    fn append(
        tx: &mpsc::Sender<Command<Noted>>,
        drafts: Vec<Draft<Noted>>,
    ) -> Result<Vec<Envelope<Noted>>, JournalError> {
        let (reply, answer) = oneshot::channel();
        block_on(async {
            tx.send(Command::Append { drafts, reply })
                .await
                .map_err(|_| JournalError::Closed)?;
            answer.await.map_err(|_| JournalError::Closed)?
        })
    }

    #[test]
    fn a_failed_sync_is_never_acknowledged_and_refuses_every_later_write() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(FlakyStore {
            inner: SledStore::open(tmp.path(), 8 << 20).unwrap(),
            fail_sync: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        });
        let last_seq = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(16);
        let writer = Writer::<NotedSchema, FlakyStore> {
            store: Arc::clone(&store),
            dir: tmp.path().to_path_buf(),
            last_seq: Arc::clone(&last_seq),
            next_seq: 1,
            max_batch_records: 64,
            rx,
            failed: None,
            _schema: PhantomData,
        };
        let handle = std::thread::spawn(move || writer.run());

        // Healthy: acknowledged, published.
        let acked = append(&tx, vec![draft(1), draft(2)]).unwrap();
        assert_eq!(acked.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(last_seq.load(Ordering::SeqCst), 2);

        // The sync fails: the waiter hears WriteFailed, and last_seq does not move.
        store.fail_sync.store(true, Ordering::SeqCst);
        let err = append(&tx, vec![draft(3)]).unwrap_err();
        assert!(matches!(err, JournalError::WriteFailed { .. }), "{err}");
        assert!(
            err.to_string().contains("injected fdatasync failure"),
            "{err}"
        );
        assert_eq!(last_seq.load(Ordering::SeqCst), 2);

        // Sticky: even with a store that would now succeed, nothing more is written or
        // acknowledged (after a failed fsync the kernel may have dropped the dirty pages).
        store.fail_sync.store(false, Ordering::SeqCst);
        let syncs_before = store.syncs.load(Ordering::SeqCst);
        let err = append(&tx, vec![draft(4)]).unwrap_err();
        assert!(matches!(err, JournalError::WriteFailed { .. }), "{err}");
        assert_eq!(store.syncs.load(Ordering::SeqCst), syncs_before);
        assert_eq!(last_seq.load(Ordering::SeqCst), 2);
        let (reply, answer) = oneshot::channel();
        block_on(tx.send(Command::SaveSnapshot {
            covers_seq: 2,
            value: vec![1, 2, 3],
            reply,
        }))
        .map_err(|_| ())
        .unwrap();
        assert!(matches!(
            block_on(answer).unwrap(),
            Err(JournalError::WriteFailed { .. })
        ));

        drop(tx);
        handle.join().unwrap();
    }
}
