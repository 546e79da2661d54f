//! Plain report types returned by open, verify, stats and truncate_from.
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
    /// Tail records quarantined and dropped by recovery, lowest seq first.
    pub quarantined: Vec<QuarantinedRecord>,
    /// The quarantine file written, if any.
    pub quarantine_file: Option<PathBuf>,
    /// Records re-indexed into the per-pool index because it lagged the journal.
    pub index_rebuilt: u64,
}

/// One problem found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The seq concerned (for a gap: the first missing seq).
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// Most problems `verify` lists; the rest are only counted.
pub const MAX_VERIFY_PROBLEMS: usize = 1000;

/// Result of `Journal::verify`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records present (good or bad).
    pub records: u64,
    /// Lowest key present (0 when empty).
    pub first_seq: u64,
    /// Highest key present (0 when empty).
    pub last_seq: u64,
    /// Problems, lowest seq first, at most `MAX_VERIFY_PROBLEMS`.
    pub problems: Vec<Problem>,
    /// Problems found beyond `MAX_VERIFY_PROBLEMS`.
    pub problems_omitted: u64,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }
}

/// Result of `Journal::stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Stats {
    /// Records in the journal.
    pub records: u64,
    /// Record count per event kind (`EventSchema::kind`).
    pub by_kind: BTreeMap<String, u64>,
    /// First seq (0 when empty).
    pub first_seq: u64,
    /// Last seq (0 when empty).
    pub last_seq: u64,
    /// `ts_ms` of the first record (0 when empty).
    pub first_ts_ms: u64,
    /// `ts_ms` of the last record (0 when empty).
    pub last_ts_ms: u64,
    /// Sum of the sizes of the files under the journal directory.
    pub size_on_disk_bytes: u64,
    /// `covers_seq` of each stored snapshot, newest first.
    pub snapshot_seqs: Vec<u64>,
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
