//! `pool-journal`: a durable, append-only event journal on sled, generic over the event type.
//!
//! It knows nothing of pools: `pool_id` is an opaque optional partition key carried in the
//! envelope and used only for the per-pool index. The core's events come in through
//! [`EventSchema`]; the journal never interprets them beyond `kind` and (de)serialization.
//!
//! # Record layout
//!
//! ```text
//! key    = seq: u64 big-endian, from 1, gap-free           (tree "records")
//! value  = { version: u8 | crc32c: u32 LE | payload }      (RECORD_HEADER_BYTES = 5)
//! payload = bincode 1, default options, of Envelope<E> { seq, ts_ms, pool_id, cause, event }
//! ```
//!
//! The CRC covers the payload. `version == EventSchema::CURRENT_VERSION` decodes with bincode,
//! an older version goes through [`EventSchema::upcast`], a newer one is
//! [`JournalError::UnsupportedVersion`]. A record is valid only if its envelope's seq equals
//! its key. Records are at most [`MAX_RECORD_BYTES`]. Snapshots use the same framing with the
//! caller's `state_version` (tree "snapshots", key = covers_seq BE, the newest two
//! kept and older ones spread over the history, at most `SNAPSHOTS_KEPT_MAX`); the
//! per-pool index is tree "pool_index" (see [`store`]).
//!
//! # Write lifecycle (calling order)
//!
//! 1. `append(drafts)` checks the request (non-empty, at most `max_batch_records`, pool ids
//!    without NUL) and sends it with a oneshot over the bounded queue (`queue_depth`); a full
//!    queue makes it wait.
//! 2. The single writer thread takes one request, then drains whatever else is queued, up to
//!    `max_batch_records` records.
//! 3. It assigns consecutive seqs (`last_seq + 1 ..`) and encodes each record.
//! 4. It writes all records in one sled `Batch`, then the index keys and the index high-water
//!    seq in a second one.
//! 5. It makes them durable once: `Db::flush()`, fsync of new or grown files in
//!    `<dir>/blobs/`, then `fdatasync(<dir>/db)` (blobs first, so that a durable log entry
//!    never points at a blob that is not; see [`store`] for why flush alone is not enough).
//! 6. It publishes `last_seq` (readers never see past it) and answers every waiter.
//!
//! If step 4 or 5 fails, every waiter of that batch gets [`JournalError::WriteFailed`], and so
//! does every later append: an fsync failure is not retryable (the kernel may already have
//! dropped the dirty pages), so the process must restart and recover from what is on disk.
//!
//! # What "acknowledged" means
//!
//! When `append` returns `Ok(envelopes)`, those records, and every record with a lower seq,
//! have been written by sled and `fdatasync`ed (plus any blob files fsynced): they survive
//! a process crash, `SIGKILL`, and power loss on storage that honours fsync. An `Err` means
//! the records may or may not be on disk; they were never visible to readers of this
//! process. Seqs handed out are gap-free across acknowledgements.
//!
//! # Recovery policy (at open)
//!
//! Open walks back from the last record ([`recovery`]). Damaged records (CRC mismatch, short
//! value, undecodable, key != envelope seq) with no valid record after them are *tail
//! corruption*: with [`RecoveryMode::TolerateTailCorruption`] (default) each is written to
//! `<dir>/quarantine/<unix_ms>-from-seq-<N>.ndjson`, logged at warn, removed (with snapshots
//! covering it), and this is synced before open returns. A damaged or missing record with a
//! valid one after it is *mid-journal corruption*: open refuses with
//! [`JournalError::Corruption`] naming the seq and the repair command
//! (`pool-managerd journal repair --journal-dir <dir> --from-seq <seq>`, which calls
//! [`Journal::truncate_from`] on a journal opened with [`Journal::open_for_repair`]).
//! A damaged tail longer than one group commit (`max_batch_records`) is not a torn write
//! (a binary that cannot read the journal, a failing disk): open refuses rather than turn it
//! into a shorter history, and drops nothing.
//! [`RecoveryMode::AbsoluteConsistency`] refuses on any damage. A record of a newer format
//! refuses with `UnsupportedVersion`, never quarantined. Open's cost does not grow with the
//! journal: it checks the damaged suffix plus [`recovery::OPEN_CHECK_WINDOW_RECORDS`] valid
//! records; older damage surfaces as `Err` from [`Journal::read_from`] and in
//! [`Journal::verify`]. Then the per-pool index is caught up to the journal if it lags.
//!
//! # Locking
//!
//! A journal directory has one owner: open takes `flock(LOCK_EX|LOCK_NB)` on `<dir>/LOCK`
//! and fails with [`JournalError::Locked`] if it is held (by another process or another
//! `Journal` in this one) for longer than `store::LOCK_RETRY_MS` (250 ms: a child forked to
//! spawn an engine holds inherited descriptors, with their locks, until it execs). sled also
//! flocks `<dir>/db`, retried for up to `store::SLED_LOCK_RETRY_MS`.

pub mod config;
pub mod error;
mod journal;
pub mod json;
pub mod record;
pub mod recovery;
mod repair;
pub mod report;
pub mod store;
mod writer;

pub use config::{JournalConfig, RecoveryMode};
pub use error::JournalError;
pub use journal::{Journal, MAX_POOL_ID_BYTES, MAX_READ_POOL_LIMIT, MAX_SNAPSHOT_BYTES};
pub use json::{envelope_to_json, event_from_json, event_to_json};
pub use record::{
    decode_payload, decode_record, encode_record, Draft, Envelope, EventSchema, RecordFault,
    UpcastError, MAX_RECORD_BYTES, RECORD_HEADER_BYTES,
};
pub use report::{OpenReport, Problem, QuarantinedRecord, Stats, TruncateReport, VerifyReport};
pub use store::{SledStore, Store, StoreError, LOCK_FILE_NAME};
pub use writer::{SNAPSHOTS_KEPT, SNAPSHOTS_KEPT_MAX};

/// Lower-case hex of `bytes` (quarantine files, error messages).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
