//! [`JournalConfig`] and [`RecoveryMode`]: the options `Journal::open` takes.
//!
//! Owns: defaults and their bounds. **Must never:** read the environment or files; the caller
//! passes every option explicitly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Default sled page-cache size: 8 MiB (the live store holds only unsealed records).
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// Default bound of the append queue (requests, not records).
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default bound on records written in one group commit.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 1024;
/// Largest accepted `queue_depth`.
pub const MAX_QUEUE_DEPTH: usize = 1 << 16;
/// Largest accepted `max_batch_records`.
pub const MAX_BATCH_RECORDS_LIMIT: usize = 1 << 16;
/// Default records per sealed segment.
pub const DEFAULT_SEGMENT_RECORDS: usize = 16_384;
/// Default most bytes of record values per sealed segment.
pub const DEFAULT_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// Default retention by size of the sealed history: 1 GiB.
pub const DEFAULT_RETAIN_BYTES: u64 = 1024 * 1024 * 1024;
/// Default retention by age of the sealed history: 30 days.
pub const DEFAULT_RETAIN_MS: u64 = 30 * 24 * 3600 * 1000;

/// What `open` does when it finds damaged records that were never acknowledged (above the
/// witness: a write torn by a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Damaged records above the last acknowledged seq, with nothing valid after them, are
    /// quarantined and dropped; any other damage refuses to open.
    #[default]
    TolerateTailCorruption,
    /// Any damaged record found refuses to open.
    AbsoluteConsistency,
}

/// The clock retention reads (ms since the Unix epoch); injectable for tests.
#[derive(Clone)]
pub struct JournalClock(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl JournalClock {
    /// The system clock.
    pub fn system() -> Self {
        JournalClock(Arc::new(crate::layout::system_now_ms))
    }
    /// Now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for JournalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalClock")
    }
}

impl PartialEq for JournalClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for JournalClock {}

/// What retention must keep for a consumer of the journal (the cluster publisher): the seqs
/// after `through` (the last one it consumed) are kept beyond `retain_bytes` and `retain_ms`
/// while the sealed segments take at most `retain_bytes + cap_bytes`; past that the oldest are
/// dropped anyway, and the unconsumed events among them counted
/// ([`RetentionHold::dropped_events`]).
///
/// Clones share the same position and count: the consumer advances the one the journal reads.
#[derive(Debug, Clone)]
pub struct RetentionHold {
    through: Arc<AtomicU64>,
    cap_bytes: u64,
    dropped: Arc<AtomicU64>,
    /// The highest seq counted in `dropped` (each seq is counted once).
    counted_through: Arc<AtomicU64>,
}

/// A [`RetentionHold`] as read at one moment: what `segments_to_drop` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimit {
    /// Seqs up to this one were consumed: retention may drop them.
    pub through: u64,
    /// How many bytes of sealed segments beyond `retain_bytes` retention keeps for the rest.
    pub cap_bytes: u64,
}

impl RetentionHold {
    /// A hold of the seqs after `through`, up to `cap_bytes` beyond `retain_bytes`.
    pub fn new(through: u64, cap_bytes: u64) -> Self {
        RetentionHold {
            through: Arc::new(AtomicU64::new(through)),
            cap_bytes,
            dropped: Arc::new(AtomicU64::new(0)),
            counted_through: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The consumer consumed every seq up to `seq` (never moves back).
    pub fn advance(&self, seq: u64) {
        self.through.fetch_max(seq, Ordering::AcqRel);
    }

    /// The last seq consumed.
    pub fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// The bytes kept beyond `retain_bytes` for the consumer.
    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// The hold now.
    pub fn limit(&self) -> HoldLimit {
        HoldLimit {
            through: self.through(),
            cap_bytes: self.cap_bytes,
        }
    }

    /// Events dropped before they were consumed, since this hold was made.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Counts the seqs `from..=to` as dropped unconsumed, less those already counted (every
    /// seq up to the highest one counted so far: losses are counted oldest first, by
    /// retention as it drops them and by the consumer when it finds a gap retention did not
    /// count); returns how many were newly counted.
    pub fn count_dropped(&self, from: u64, to: u64) -> u64 {
        let before = self.counted_through.fetch_max(to, Ordering::AcqRel);
        let new = to.saturating_sub(before.max(from.saturating_sub(1)));
        self.dropped.fetch_add(new, Ordering::AcqRel);
        new
    }
}

impl PartialEq for RetentionHold {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.through, &other.through) && self.cap_bytes == other.cap_bytes
    }
}

impl Eq for RetentionHold {}

/// Options for `Journal::open`. Build with [`JournalConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The journal directory (created if absent); see `layout` for what it holds.
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Bound of the channel between appenders and the writer thread, in requests
    /// (1..=MAX_QUEUE_DEPTH). A full queue makes `append` wait: backpressure.
    pub queue_depth: usize,
    /// Most records written and fsynced together (1..=MAX_BATCH_RECORDS_LIMIT); also the
    /// most drafts one `append` call may carry.
    pub max_batch_records: usize,
    /// What to do with damaged unacknowledged records found at open.
    pub recovery: RecoveryMode,
    /// Records per sealed segment (>= 1): the tail is sealed once it holds this many.
    pub segment_records: usize,
    /// Most bytes of record values per sealed segment (>= 1 MiB... or any value >= the
    /// largest record in tests): the tail is also sealed once it holds this many bytes.
    pub segment_bytes: usize,
    /// Retention by size: the oldest sealed segments are dropped while the segments take more
    /// than this many bytes (never what the newest snapshot needs, never the newest segment,
    /// never what `hold` keeps).
    pub retain_bytes: u64,
    /// Retention by age: sealed segments whose newest record is older than this are dropped
    /// (same limits).
    pub retain_ms: u64,
    /// Where read-only opens copy the live store to (default: the system's temp dir,
    /// `$TMPDIR`).
    pub scratch_dir: Option<PathBuf>,
    /// The clock retention compares record times with.
    pub clock: JournalClock,
    /// What retention keeps for a consumer that has not read it yet (`None`: nothing beyond
    /// `retain_bytes` and `retain_ms`).
    pub hold: Option<RetentionHold>,
}

impl JournalConfig {
    /// A config for `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            recovery: RecoveryMode::default(),
            segment_records: DEFAULT_SEGMENT_RECORDS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retain_bytes: DEFAULT_RETAIN_BYTES,
            retain_ms: DEFAULT_RETAIN_MS,
            scratch_dir: None,
            clock: JournalClock::system(),
            hold: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::JournalError> {
        let bad = |what: String| Err(crate::JournalError::InvalidArgument { what });
        if self.queue_depth == 0 || self.queue_depth > MAX_QUEUE_DEPTH {
            return bad(format!(
                "queue_depth = {} (accepted: 1..={MAX_QUEUE_DEPTH})",
                self.queue_depth
            ));
        }
        if self.max_batch_records == 0 || self.max_batch_records > MAX_BATCH_RECORDS_LIMIT {
            return bad(format!(
                "max_batch_records = {} (accepted: 1..={MAX_BATCH_RECORDS_LIMIT})",
                self.max_batch_records
            ));
        }
        if self.segment_records == 0 || self.segment_bytes == 0 {
            return bad(format!(
                "segment_records = {}, segment_bytes = {} (both must be >= 1)",
                self.segment_records, self.segment_bytes
            ));
        }
        Ok(())
    }

    /// The scratch directory read-only opens use.
    pub fn scratch(&self) -> PathBuf {
        self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}
