//! [`JournalConfig`] and [`RecoveryMode`]: the options `Journal::open` takes.
//!
//! Owns: defaults and their bounds. **Must never:** read the environment or files; the caller
//! passes every option explicitly.

use std::path::PathBuf;
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
    /// than this many bytes (never what the newest snapshot needs, never the newest segment).
    pub retain_bytes: u64,
    /// Retention by age: sealed segments whose newest record is older than this are dropped
    /// (same limits).
    pub retain_ms: u64,
    /// Where read-only opens copy the live store to (default: the system's temp dir,
    /// `$TMPDIR`).
    pub scratch_dir: Option<PathBuf>,
    /// The clock retention compares record times with.
    pub clock: JournalClock,
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
