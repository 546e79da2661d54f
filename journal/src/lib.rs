//! `pool-journal`: a durable, append-only event journal, generic over the event type: the
//! node's system of record.
//!
//! It knows nothing of pools: `pool_id` is an opaque optional partition key carried in the
//! envelope and used only for the per-pool index. The events come in through
//! [`EventSchema`]; the journal never interprets them beyond `kind`, (de)serialization and the
//! loss marker ([`EventSchema::loss_accepted`]).
//!
//! # Files (see [`layout`])
//!
//! ```text
//! <dir>/live/       the live store (sled): the records not yet sealed, keyed by seq
//! <dir>/segments/   sealed, immutable segment files of older records + MANIFEST
//! <dir>/snapshots/  projection snapshots (each also vouches for the record it covers)
//! <dir>/witness     the last acknowledged seq and its record's CRC, outside the store
//! <dir>/quarantine/ what recovery and repair moved aside
//! ```
//!
//! # Record layout
//!
//! ```text
//! value   = { version: u8 | crc32c: u32 LE | payload }      (RECORD_HEADER_BYTES = 5)
//! payload = bincode 1, default options, of Envelope<E> { seq, ts_ms, pool_id, cause, event }
//! ```
//!
//! The CRC covers the payload. `version == EventSchema::CURRENT_VERSION` decodes with bincode,
//! an older version goes through [`EventSchema::upcast`], a newer one is
//! [`JournalError::UnsupportedVersion`]. A record is valid only if its envelope's seq equals
//! its key. Seqs start at 1 and have no gaps, except where a loss marker (an event made by
//! [`EventSchema::loss_accepted`] at seq `to_seq`) declares the seqs `from_seq..to_seq` lost.
//! The same bytes are stored in the live store and, once sealed, in a segment ([`segment`]).
//!
//! # Write lifecycle (calling order)
//!
//! 1. `append(drafts)` checks the request and sends it with a oneshot over the bounded queue
//!    (`queue_depth`); a full queue makes it wait.
//! 2. The single writer thread takes one request, then drains whatever else is queued, up to
//!    `max_batch_records` records; it waits while the unsealed tail is past its hard cap.
//! 3. It assigns consecutive seqs and encodes each record.
//! 4. It writes all records (and removes a few already-sealed keys) in one sled `Batch`.
//! 5. It makes them durable once: `Db::flush()`, fsync of new or grown blob files, then
//!    `fdatasync(<dir>/live/db)` (see [`store`]).
//! 6. It adds them to the in-memory tail, publishes `last_seq` (readers never see past it),
//!    writes the witness (synced at most every second) and answers every waiter.
//!
//! The maintenance thread seals the tail's oldest records into a segment once it holds
//! `segment_records` records or `segment_bytes` bytes (segment file synced, then the manifest
//! replaced atomically, then readers switch), applies retention (`retain_bytes`,
//! `retain_ms`: oldest segments first, never what the newest snapshot needs, nor what a
//! [`RetentionHold`] keeps for an unread consumer up to its cap), and syncs the witness.
//!
//! # What "acknowledged" means
//!
//! When `append` returns `Ok(envelopes)`, those records, and every record with a lower seq,
//! have been written by sled and `fdatasync`ed: they survive a process crash, `SIGKILL`, and
//! power loss on storage that honours fsync. An `Err` means the records may or may not be on
//! disk; they were never visible to readers of this process, and a recovery quarantines them.
//! Seqs handed out are never reused.
//!
//! # Never silently shorter (open)
//!
//! sled 0.34 recovers its log up to the first damaged message and drops the rest without an
//! error. So open checks the history against independent witnesses: the witness file, the
//! manifest (every sealed seq), and the snapshots (each names its seq and that record's CRC).
//! A journal that holds less than any of them proves is refused with
//! [`JournalError::Damaged`] (`loss: true`), naming the file and the way out
//! (`pool-managerd journal repair --accept-loss`, which keeps what is readable and writes a
//! loss marker event where records are gone). Any other damage found (a record that fails
//! its checks, a damaged segment, manifest, snapshot or witness, a live store sled cannot
//! open) refuses too, naming `journal repair`, which rebuilds the files from what is readable
//! and refuses in turn if that would lose an acknowledged event. Only damaged records *above*
//! the witness with nothing valid after them (a write torn by a crash, never acknowledged) are
//! quarantined by open itself ([`RecoveryMode::TolerateTailCorruption`], the default).
//! Open reads every record of the live store (bounded by sealing), the newest segment's header
//! and trailer, the list of segment files (every listed one must exist), and the newest
//! snapshot, so that it takes the same time whatever the history; right after, the
//! maintenance thread scrubs every sealed segment whole and reports damage in the journal's
//! health. [`verify_dir`] reads everything.
//!
//! # A disk that refuses writes
//!
//! A failed write or sync makes the journal *unavailable*: appends answer
//! [`JournalError::Unavailable`] at once, reads keep working (they never touch sled), and the
//! maintenance thread retries: once a probe file can be written and synced, the writer reopens
//! the live store from disk (never retrying a failed fsync), quarantines what the failed batch
//! left behind, and writes back from memory any acknowledged record the disk lost.
//!
//! # Locking
//!
//! A journal directory has one writer: open takes `flock(LOCK_EX|LOCK_NB)` on `<dir>/LOCK`
//! and fails with [`JournalError::Locked`] if it is held for longer than
//! `layout::LOCK_RETRY_MS`. Read-only opens take no lock and write nothing: they copy the live
//! store to the scratch directory and read the copy.

pub mod config;
pub mod error;
mod journal;
pub mod json;
pub mod layout;
pub mod load;
mod maintenance;
pub mod manifest;
mod open;
pub mod private;
mod read;
mod rebuild;
pub mod record;
mod repair;
pub mod report;
pub mod segment;
mod shared;
pub mod snapshot;
pub mod store;
pub mod tail;
mod tools;
pub mod witness;
mod writer;

pub use config::{HoldLimit, JournalClock, JournalConfig, RecoveryMode, RetentionHold};
pub use error::{JournalError, WriteErrorKind};
pub use journal::{Journal, MAX_POOL_ID_BYTES, MAX_READ_POOL_LIMIT, MAX_SNAPSHOT_BYTES};
pub use json::{envelope_to_json, event_from_json, event_to_json};
pub use layout::{live_store_dir, LOCK_FILE_NAME};
pub use maintenance::segments_to_drop;
pub use record::{
    decode_payload, decode_record, encode_record, Draft, Envelope, EventSchema, RecordFault,
    UpcastError, MAX_RECORD_BYTES, RECORD_HEADER_BYTES,
};
pub use report::{
    OpenReport, Problem, QuarantinedRecord, RepairReport, SegmentStat, Stats, TruncateReport,
    Usage, VerifyReport,
};
pub use shared::JournalHealth;
pub use snapshot::{SNAPSHOTS_KEPT, SNAPSHOTS_KEPT_MAX};
pub use store::{SledStore, Store, StoreError};
pub use tools::{repair_dir, verify_dir};

/// Lower-case hex of `bytes` (quarantine files, error messages).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
