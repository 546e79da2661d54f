//! The crate's error type, [`JournalError`].
//!
//! Owns: the wording an operator reads. Every variant names the path, directory or seq it is
//! about and, where there is one, what to do next.
//!
//! **Must never:** carry a non-`Send` or borrowed payload (the type is `Send + Sync + 'static`
//! so it crosses the writer thread and tokio tasks), or hide the underlying I/O error.

use std::path::PathBuf;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file-system operation failed on `path`.
    #[error("journal I/O error on {}: {source} (check that the path exists, is writable and the disk is not full)", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// Another process (or another `Journal` in this process) holds the directory.
    #[error(
        "journal {} is in use (probably by a running pool-managerd); stop that process \
         or pass another --journal-dir",
        dir.display()
    )]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },

    /// A record failed its checks (CRC, length, decode, key == seq, or a missing seq).
    #[error(
        "journal {} is corrupt at seq {seq}: {what}. Records from seq {seq} on can be moved to a \
         quarantine file with `pool-managerd journal repair --journal-dir {} --from-seq {seq}` \
         (this drops those events; export the journal first if in doubt)",
        dir.display(),
        dir.display()
    )]
    Corruption {
        /// The first seq that is bad (or missing).
        seq: u64,
        /// What was wrong with it.
        what: String,
        /// The journal directory.
        dir: PathBuf,
    },

    /// A record carries a format version newer than this build understands.
    #[error(
        "record seq {seq} has format version {version}, newer than this build's {current}: it was \
         written by a newer pool-managerd; run that version (or newer) on this journal"
    )]
    UnsupportedVersion {
        /// The record's seq.
        seq: u64,
        /// The version byte found.
        version: u8,
        /// The newest version this build writes and reads.
        current: u8,
    },

    /// The journal was closed (or its writer thread is gone); no more appends.
    #[error("the journal is closed; appends are no longer accepted (reopen it)")]
    Closed,

    /// A write, flush or fsync failed. The batch was NOT acknowledged, and the writer refuses
    /// every later append: after a failed fsync the kernel may have dropped the dirty pages, so
    /// retrying could acknowledge data that is not on disk.
    #[error(
        "journal {} write failed and is not retryable: {what}; appends are refused until \
         pool-managerd is restarted (check the disk and the kernel log)",
        dir.display()
    )]
    WriteFailed {
        /// The journal directory.
        dir: PathBuf,
        /// The first failure seen.
        what: String,
    },

    /// An NDJSON import line was rejected.
    #[error("import line {line}: {what} (nothing was imported)")]
    Import {
        /// 1-based line number in the input.
        line: u64,
        /// What was wrong.
        what: String,
    },

    /// Import into a journal that already has records.
    #[error(
        "journal {} is not empty; import only into an empty journal directory (choose a new --journal-dir)",
        dir.display()
    )]
    NotEmpty {
        /// The journal directory.
        dir: PathBuf,
    },

    /// The sled store reported an error.
    #[error("sled error in journal {}: {source}", dir.display())]
    Sled {
        /// The journal directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },

    /// An append request carried more drafts than `max_batch_records`.
    #[error("an append of {records} drafts exceeds max_batch_records = {max_records}; split it")]
    BatchTooLarge {
        /// Drafts in the request.
        records: usize,
        /// The configured bound.
        max_records: usize,
    },

    /// One encoded record (or snapshot) is larger than the bound.
    #[error("record seq {seq} encodes to {bytes} bytes, over the {max_bytes}-byte limit; the event is too large to journal")]
    RecordTooLarge {
        /// The seq it would have had (for snapshots, `covers_seq`).
        seq: u64,
        /// Its encoded size.
        bytes: usize,
        /// The bound.
        max_bytes: usize,
    },

    /// A value could not be encoded (bincode or JSON).
    #[error("could not encode {what}")]
    Encode {
        /// What, and why.
        what: String,
    },

    /// The JSON form of an event is not `{"kind": ..., ...fields}` or does not match the type.
    #[error("event JSON: {what}")]
    EventJson {
        /// What was wrong.
        what: String,
    },

    /// A snapshot would cover events that are not acknowledged yet.
    #[error("a snapshot cannot cover seq {covers_seq}: the journal's last seq is {last_seq}")]
    SnapshotAhead {
        /// The requested seq.
        covers_seq: u64,
        /// The journal's last acknowledged seq.
        last_seq: u64,
    },

    /// A bad argument or configuration value.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What, and the accepted range.
        what: String,
    },
}

impl JournalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static>() {}
        assert_bounds::<JournalError>();
    }

    #[test]
    fn corruption_names_seq_and_repair_command() {
        let e = JournalError::Corruption {
            seq: 5,
            what: "crc mismatch".into(),
            dir: PathBuf::from("/j"),
        };
        let s = e.to_string();
        assert!(s.contains("seq 5"), "{s}");
        assert!(
            s.contains("pool-managerd journal repair --journal-dir /j --from-seq 5"),
            "{s}"
        );
    }
}
