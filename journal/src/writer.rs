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

/// Snapshots kept in the store (newest first); older ones are deleted on save.
pub const SNAPSHOTS_KEPT: usize = 2;

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
            for old in self
                .store
                .snapshot_seqs()
                .map_err(se)?
                .into_iter()
                .skip(SNAPSHOTS_KEPT)
            {
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
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
