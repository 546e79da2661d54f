//! [`JournalConfig`] and [`RecoveryMode`]: the options `Journal::open` takes.
//!
//! Owns: defaults and their bounds. **Must never:** read the environment or files; the caller
//! passes every option explicitly.

use std::path::PathBuf;

/// Default sled page-cache size: 64 MiB.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound of the append queue (requests, not records).
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default bound on records written in one group commit.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 1024;
/// Largest accepted `queue_depth`.
pub const MAX_QUEUE_DEPTH: usize = 1 << 16;
/// Largest accepted `max_batch_records`.
pub const MAX_BATCH_RECORDS_LIMIT: usize = 1 << 16;

/// What `open` does when it finds damaged records (see the crate docs, "Recovery policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Damaged records that form the tail (no valid record after them) are quarantined and
    /// dropped; damage followed by a valid record refuses to open.
    #[default]
    TolerateTailCorruption,
    /// Any damaged record found refuses to open.
    AbsoluteConsistency,
}

/// Options for `Journal::open`. Build with [`JournalConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The journal directory (created if absent). Holds sled's files (`db`, `conf`,
    /// `blobs/`, `snap.*`), our `LOCK`, and `quarantine/`.
    pub dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Bound of the channel between appenders and the writer thread, in requests
    /// (1..=MAX_QUEUE_DEPTH). A full queue makes `append` wait: backpressure.
    pub queue_depth: usize,
    /// Most records written and fsynced together (1..=MAX_BATCH_RECORDS_LIMIT); also the
    /// most drafts one `append` call may carry.
    pub max_batch_records: usize,
    /// What to do with damaged records found at open.
    pub recovery: RecoveryMode,
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
        Ok(())
    }
}
