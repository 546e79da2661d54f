//! Plain report types returned by open, verify, stats, truncate and repair.
//!
//! Owns: nothing but data. **Must never:** do I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One record moved to a quarantine file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// Its key.
    pub seq: u64,
    /// Why it was removed.
    pub what: String,
}

/// What `Journal::open` found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Last acknowledged seq after recovery (0 when empty).
    pub last_seq: u64,
    /// Unacknowledged tail records (a torn write) quarantined and dropped, lowest seq first.
    pub quarantined: Vec<QuarantinedRecord>,
    /// The quarantine file written, if any.
    pub quarantine_file: Option<PathBuf>,
    /// The journal was migrated from the layout before segments.
    pub migrated: bool,
    /// Sealed segments.
    pub segments: usize,
    /// The journal opened unavailable (its disk refuses writes): why.
    pub unavailable: Option<String>,
    /// A read-only open found a running daemon holding the journal.
    pub beside_daemon: bool,
    /// A read-only open of a journal from before segments.
    pub legacy: bool,
}

/// One problem found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The seq concerned (0 when the problem is a whole file's).
    pub seq: u64,
    /// The file it is in.
    pub file: PathBuf,
    /// What is wrong.
    pub what: String,
    /// Whether acknowledged events are unreadable or gone because of it.
    pub loss: bool,
}

/// Most problems `verify` lists; the rest are only counted.
pub const MAX_VERIFY_PROBLEMS: usize = 1000;

/// Result of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records checked (segments and the live store).
    pub records: u64,
    /// Earliest retained seq (0 when empty).
    pub first_seq: u64,
    /// Last seq held (0 when empty).
    pub last_seq: u64,
    /// Sealed segments.
    pub segments: usize,
    /// Snapshot files.
    pub snapshots: usize,
    /// The seq the witness vouches for, when it is readable.
    pub witness_seq: Option<u64>,
    /// Problems, at most `MAX_VERIFY_PROBLEMS`.
    pub problems: Vec<Problem>,
    /// Problems found beyond `MAX_VERIFY_PROBLEMS`.
    pub problems_omitted: u64,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }
    /// Whether a problem loses acknowledged events.
    pub fn loses_events(&self) -> bool {
        self.problems.iter().any(|p| p.loss)
    }
}

/// Sizes and the retained range of an open journal (cheap: metrics read it at every scrape).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Sealed segments.
    pub segments: u64,
    /// Bytes of the segment files.
    pub segment_bytes: u64,
    /// Bytes of the live store's files.
    pub live_bytes: u64,
    /// Bytes of the snapshot files.
    pub snapshot_bytes: u64,
    /// Records in the unsealed tail.
    pub tail_records: u64,
    /// Bytes of the records in the unsealed tail.
    pub tail_bytes: u64,
    /// The earliest retained seq (`last_seq + 1` when nothing is held).
    pub first_seq: u64,
    /// The last acknowledged seq.
    pub last_seq: u64,
    /// Seqs up to this one were dropped by retention (0: none).
    pub expired_through: u64,
}

impl Usage {
    /// Every byte the journal keeps on disk for its history (segments, live store, snapshots).
    pub fn total_bytes(&self) -> u64 {
        self.segment_bytes + self.live_bytes + self.snapshot_bytes
    }
}

/// One sealed segment, as `stats` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentStat {
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Records.
    pub records: u64,
    /// File size.
    pub bytes: u64,
}

/// Result of `Journal::stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Stats {
    /// Records retained.
    pub records: u64,
    /// Record count per event kind (`EventSchema::kind`).
    pub by_kind: BTreeMap<String, u64>,
    /// First retained seq (0 when empty).
    pub first_seq: u64,
    /// Last seq (0 when empty).
    pub last_seq: u64,
    /// `ts_ms` of the first record (0 when empty).
    pub first_ts_ms: u64,
    /// `ts_ms` of the last record (0 when empty).
    pub last_ts_ms: u64,
    /// Sum of the sizes of the files under the journal directory.
    pub size_on_disk_bytes: u64,
    /// `covers_seq` of each snapshot, newest first.
    pub snapshot_seqs: Vec<u64>,
    /// The sealed segments, oldest first.
    pub segments: Vec<SegmentStat>,
    /// Seqs up to this one were dropped by retention (0: none).
    pub expired_through: u64,
    /// The earliest seq `?at_seq` / `replay --until-seq` can reach (0: any).
    pub time_travel_from: u64,
    /// Sizes.
    pub usage: Usage,
}

/// Result of `Journal::truncate_from`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TruncateReport {
    /// The first seq removed (as requested).
    pub from_seq: u64,
    /// Records removed.
    pub removed_records: u64,
    /// Snapshots removed (their `covers_seq`), because they covered removed records.
    pub removed_snapshots: Vec<u64>,
    /// Where the removed records were written, if any were removed.
    pub quarantine_file: Option<PathBuf>,
    /// The journal's last seq afterwards.
    pub last_seq: u64,
}

/// Result of `repair`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairReport {
    /// Nothing was damaged: nothing was changed.
    pub nothing_to_do: bool,
    /// What was found wrong.
    pub problems: Vec<String>,
    /// The lost ranges accepted (a `JournalLossAccepted`-style marker event at each end).
    pub lost: Vec<(u64, u64)>,
    /// Records kept.
    pub kept_records: u64,
    /// The journal's last seq afterwards.
    pub last_seq: u64,
    /// Where the replaced files were moved.
    pub moved_to: Option<PathBuf>,
}
