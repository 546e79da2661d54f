//! The single writer thread: group commit, truncation, and getting writable again after the
//! disk refused a write.
//!
//! Owns: seq assignment (`next_seq`), the live store, the batch, the durability barrier call,
//! the tail's growth and the answers to waiters. It is the only code that writes to the live
//! store after open.
//!
//! **Must never:** answer a waiter `Ok` before `Store::sync` returned `Ok` for that waiter's
//! records; retry an fsync that failed (after a failed fsync the kernel may have dropped the
//! dirty pages, so a retry could "succeed" without the data on disk: "fsyncgate"); or write
//! while the journal is unavailable.
//!
//! # Calling order of one group commit
//! 1. block for one command; 2. drain queued `Append`s without blocking while the batch stays
//!    within `max_batch_records`; 3. wait while the tail is past its hard cap (sealing behind);
//!    4. assign consecutive seqs and encode (a request whose record is too large is answered
//!    with an error alone, taking no seqs); 5. `Store::write_batch` (with the removal of some
//!    sealed keys); 6. `Store::sync` once; 7. add the records to the tail and publish
//!    `last_seq`; 8. record the commit in the witness; 9. answer every waiter.
//!
//! # A write that fails
//! The batch's waiters get [`JournalError::Unavailable`] and the journal refuses appends (at
//! once, without touching the disk) until the maintenance thread's `Recover` succeeds: a probe
//! file can be written and synced, the live store is reopened from disk (not retried: what it
//! holds durably is what counts), records the failed batch left behind are quarantined (they
//! were never acknowledged), and any acknowledged record the store no longer holds is written
//! again from the tail in memory.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::WriteErrorKind;
use crate::record::{encode_record, framed_crc, Draft, Envelope, EventSchema, MAX_RECORD_BYTES};
use crate::report::TruncateReport;
use crate::shared::Shared;
use crate::store::{Store, StoreError};
use crate::tail::TailRecord;
use crate::JournalError;

/// How long a commit waits for sealing to make room in a full tail before it fails.
pub const TAIL_WAIT_MS: u64 = 30_000;
/// Sealed keys removed from the live store per commit, at least.
const REMOVALS_PER_COMMIT_MIN: u64 = 256;

pub(crate) type AppendReply<E> = oneshot::Sender<Result<Vec<Envelope<E>>, JournalError>>;
/// One queued append: its drafts and where to answer.
type PendingAppend<E> = (Vec<Draft<E>>, AppendReply<E>);
/// A request whose records were encoded: its envelopes and where to answer.
type Accepted<E> = (Vec<Envelope<E>>, AppendReply<E>);
/// Opens the live store again (recovery).
pub(crate) type StoreOpener<St> = Box<dyn Fn() -> Result<St, StoreError> + Send>;

/// A request to the writer. Dropping the reply sender (writer gone) reads as `Closed`.
pub(crate) enum Command<E> {
    Append {
        drafts: Vec<Draft<E>>,
        reply: AppendReply<E>,
    },
    Truncate {
        from_seq: u64,
        reply: oneshot::Sender<Result<TruncateReport, JournalError>>,
    },
    /// Try to become writable again (from the maintenance thread).
    Recover,
    Close {
        reply: oneshot::Sender<()>,
    },
}

pub(crate) struct Writer<S: EventSchema, St: Store> {
    pub(crate) shared: Arc<Shared>,
    /// `None` while the store cannot be opened (the journal is unavailable).
    pub(crate) store: Option<St>,
    pub(crate) opener: StoreOpener<St>,
    pub(crate) next_seq: u64,
    pub(crate) max_batch_records: usize,
    pub(crate) rx: mpsc::Receiver<Command<S::Event>>,
    /// The lowest seq that may still be in the store although sealed.
    pub(crate) removal_from: u64,
    pub(crate) _schema: PhantomData<S>,
}

/// One encoded record of a batch.
struct Encoded {
    seq: u64,
    bytes: Vec<u8>,
    pool_id: Option<Arc<str>>,
    ts_ms: u64,
}

impl<S: EventSchema, St: Store> Writer<S, St> {
    fn unavailable(&self) -> JournalError {
        let health = self.shared.health();
        JournalError::Unavailable {
            dir: self.shared.layout.dir.clone(),
            kind: health.kind.unwrap_or(WriteErrorKind::Other),
            error: health
                .error
                .unwrap_or_else(|| "the live store is not open".into()),
        }
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
                    let batch = self.gather(drafts, reply, &mut carry);
                    self.commit(batch);
                }
                Command::Truncate { from_seq, reply } => {
                    let _ = reply.send(self.truncate(from_seq));
                }
                Command::Recover => self.recover(),
                Command::Close { reply } => {
                    // Queued commands are still received (and served); new sends fail.
                    self.rx.close();
                    close_replies.push(reply);
                }
            }
        }
        if let Some(store) = &self.store {
            if self.shared.is_writable() {
                // Removals of sealed keys and nothing else may be unsynced: harmless, but sync.
                let _ = store.sync();
            }
        }
        if let Some(witness) = &self.shared.witness {
            let _ = witness.sync_if_dirty();
        }
        for reply in close_replies {
            let _ = reply.send(());
        }
    }

    fn gather(
        &mut self,
        drafts: Vec<Draft<S::Event>>,
        reply: AppendReply<S::Event>,
        carry: &mut Option<Command<S::Event>>,
    ) -> Vec<PendingAppend<S::Event>> {
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
                    *carry = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Waits while the tail is past its hard cap; false when sealing did not make room.
    fn wait_for_tail_room(&self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(TAIL_WAIT_MS);
        while self.shared.tail_is_full() {
            if Instant::now() >= deadline {
                return false;
            }
            self.shared.poke();
            let guard = self
                .shared
                .tail_wait
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let _ = self
                .shared
                .tail_shrank
                .wait_timeout(guard, Duration::from_millis(100));
        }
        true
    }

    fn encode(
        &self,
        batch: Vec<PendingAppend<S::Event>>,
    ) -> (Vec<Encoded>, Vec<Accepted<S::Event>>) {
        let mut seq = self.next_seq;
        let mut records: Vec<Encoded> = Vec::new();
        let mut accepted = Vec::with_capacity(batch.len());
        for (drafts, reply) in batch {
            let (first_seq, mark) = (seq, records.len());
            let mut envelopes = Vec::with_capacity(drafts.len());
            let mut error = None;
            for draft in drafts {
                // A loss marker (import of a repaired journal) stands at the end of its range.
                if let Some((from, to)) = S::loss_range(&draft.event) {
                    if from == seq && to > seq {
                        seq = to;
                    }
                }
                let envelope = draft.into_envelope(seq);
                match encode_record::<S>(&envelope) {
                    Ok(bytes) if bytes.len() <= MAX_RECORD_BYTES => {
                        records.push(Encoded {
                            seq,
                            bytes,
                            pool_id: envelope.pool_id.as_deref().map(Arc::from),
                            ts_ms: envelope.ts_ms,
                        });
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
                records.truncate(mark);
                seq = first_seq;
                let _ = reply.send(Err(err));
            } else {
                accepted.push((envelopes, reply));
            }
        }
        (records, accepted)
    }

    fn next_removals(&self, batch_records: usize) -> Vec<u64> {
        let sealed = self.shared.manifest().sealed_through();
        if self.removal_from > sealed {
            return Vec::new();
        }
        let count = REMOVALS_PER_COMMIT_MIN.max(2 * batch_records as u64);
        let end = sealed.min(self.removal_from + count - 1);
        (self.removal_from..=end).collect()
    }

    fn commit(&mut self, batch: Vec<PendingAppend<S::Event>>) {
        if !self.shared.is_writable() || self.store.is_none() {
            let err = self.unavailable();
            for (_, reply) in batch {
                let _ = reply.send(Err(clone_unavailable(&err)));
            }
            return;
        }
        if !self.wait_for_tail_room() {
            let why = self
                .shared
                .seal_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or(None)
                .unwrap_or_else(|| "sealing is slower than appends".into());
            let err = JournalError::Unavailable {
                dir: self.shared.layout.dir.clone(),
                kind: WriteErrorKind::Other,
                error: format!("the unsealed tail is full and sealing does not keep up: {why}"),
            };
            for (_, reply) in batch {
                let _ = reply.send(Err(clone_unavailable(&err)));
            }
            return;
        }
        let (records, accepted) = self.encode(batch);
        if accepted.is_empty() {
            return;
        }
        let removals = self.next_removals(records.len());
        let pairs: Vec<(u64, Vec<u8>)> = records.iter().map(|r| (r.seq, r.bytes.clone())).collect();
        let Some(store) = self.store.as_ref() else {
            return;
        };
        let result = store
            .write_batch(&pairs, &removals)
            .and_then(|()| store.sync());
        match result {
            Ok(()) => self.acknowledge(records, removals, accepted),
            Err(e) => {
                let kind = e.kind();
                let what = format!("{} ({})", e.describe(), self.shared.layout.live().display());
                if self.shared.set_unavailable(kind, what.clone()) {
                    tracing::error!(
                        dir = %self.shared.layout.dir.display(),
                        error = %what,
                        kind = kind.as_str(),
                        first_seq = self.next_seq,
                        "journal write failed; appends are refused until the disk takes writes again ({})",
                        kind.remedy()
                    );
                }
                let err = self.unavailable();
                for (_, reply) in accepted {
                    let _ = reply.send(Err(clone_unavailable(&err)));
                }
            }
        }
    }

    fn acknowledge(
        &mut self,
        records: Vec<Encoded>,
        removals: Vec<u64>,
        accepted: Vec<Accepted<S::Event>>,
    ) {
        if let Some(last) = removals.last() {
            self.removal_from = last + 1;
        }
        let Some(last) = records
            .last()
            .map(|r| (r.seq, framed_crc(&r.bytes).unwrap_or(0)))
        else {
            return;
        };
        {
            let mut view = self.shared.write_view();
            for r in records {
                view.tail.push(TailRecord {
                    seq: r.seq,
                    value: r.bytes.into(),
                    pool_id: r.pool_id,
                    ts_ms: r.ts_ms,
                });
            }
        }
        self.next_seq = last.0 + 1;
        self.shared.last_seq.store(last.0, Ordering::Release);
        if let Some(witness) = &self.shared.witness {
            if let Err(e) = witness.record(last.0, last.1) {
                self.shared.count_witness_error();
                tracing::warn!(path = %witness.path().display(), error = %e, "cannot write the journal's witness (it lags, which is safe)");
            }
        }
        for (envelopes, reply) in accepted {
            let _ = reply.send(Ok(envelopes));
        }
        if self.shared.tail_wants_seal() {
            self.shared.poke();
        }
    }

    /// Tries to become writable again (see the module docs).
    fn recover(&mut self) {
        if self.shared.is_writable() && self.store.is_some() {
            return;
        }
        if let Err(e) = crate::repair::probe_writable(&self.shared.layout.dir) {
            self.shared.count_write_error(
                WriteErrorKind::of(&e),
                format!("{}: {e}", self.shared.layout.dir.display()),
            );
            return;
        }
        drop(self.store.take());
        let store = match (self.opener)() {
            Ok(store) => store,
            Err(e) => {
                self.shared.count_write_error(e.kind(), e.describe());
                return;
            }
        };
        match crate::repair::reconcile_store::<S, St>(&self.shared, &store) {
            Ok((quarantined, rewritten)) => {
                if let Some(witness) = &self.shared.witness {
                    if let Err(e) = witness.reopen() {
                        self.shared.count_write_error(
                            WriteErrorKind::of(&e),
                            format!("{}: {e}", witness.path().display()),
                        );
                        return;
                    }
                }
                self.store = Some(store);
                self.removal_from = self
                    .removal_from
                    .min(self.shared.manifest().sealed_through() + 1);
                self.shared.set_writable();
                tracing::warn!(
                    dir = %self.shared.layout.dir.display(),
                    last_seq = self.shared.last_seq(),
                    quarantined_unacknowledged = quarantined,
                    rewritten_from_memory = rewritten,
                    "journal writable again"
                );
            }
            Err(e) => self
                .shared
                .count_write_error(WriteErrorKind::Other, e.to_string()),
        }
    }

    fn truncate(&mut self, from_seq: u64) -> Result<TruncateReport, JournalError> {
        if !self.shared.is_writable() || self.store.is_none() {
            return Err(self.unavailable());
        }
        let Some(store) = self.store.as_ref() else {
            return Err(self.unavailable());
        };
        let report = crate::repair::truncate::<S, St>(&self.shared, store, from_seq)?;
        if report.removed_records > 0 || from_seq <= self.next_seq.saturating_sub(1) {
            self.next_seq = from_seq.min(self.next_seq);
            self.removal_from = self
                .removal_from
                .min(self.shared.manifest().sealed_through() + 1);
        }
        Ok(report)
    }
}

fn clone_unavailable(err: &JournalError) -> JournalError {
    match err {
        JournalError::Unavailable { dir, kind, error } => JournalError::Unavailable {
            dir: dir.clone(),
            kind: *kind,
            error: error.clone(),
        },
        other => JournalError::InvalidArgument {
            what: other.to_string(),
        },
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
