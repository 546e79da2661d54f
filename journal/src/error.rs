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

    /// A record failed its checks (CRC, length, decode, key == seq, or a missing seq) while
    /// being read.
    #[error(
        "journal {} is corrupt at seq {seq}: {what}. Run `pool-managerd journal verify \
         --journal-dir {}` to see all the damage, then `pool-managerd journal repair \
         --journal-dir {}` (add --accept-loss to keep what is readable when events are lost)",
        dir.display(),
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

    /// Open (or verify) found damage; no record was dropped (sled's own recovery, which runs
    /// when the live store opens, may have rewritten the damaged end of its log; repair reads
    /// the store the same way). `loss`: acknowledged events are unreadable or gone, so the way
    /// out is `repair --accept-loss` (or a backup).
    #[error(
        "journal {} is damaged ({}): {what}{}. Nothing was dropped; `pool-managerd journal verify \
         --journal-dir {}` lists every problem. {}",
        dir.display(),
        file.display(),
        if *more > 0 { format!(" (and {more} more problem(s))") } else { String::new() },
        dir.display(),
        way_out(dir, *loss)
    )]
    Damaged {
        /// The journal directory.
        dir: PathBuf,
        /// The damaged file (or directory).
        file: PathBuf,
        /// The first problem.
        what: String,
        /// How many more were found.
        more: usize,
        /// Whether acknowledged events are lost.
        loss: bool,
    },

    /// The journal cannot take writes now (a full, read-only or failing disk). Reads keep
    /// working; the journal retries by itself and becomes writable again once the disk takes
    /// writes.
    #[error(
        "journal {} cannot take writes: {error}; nothing was recorded. Reads keep working and \
         the daemon retries by itself: {}",
        dir.display(),
        kind.remedy()
    )]
    Unavailable {
        /// The journal directory.
        dir: PathBuf,
        /// The kind of failure.
        kind: WriteErrorKind,
        /// The operating system's error, as seen.
        error: String,
    },

    /// A read asked for seqs that retention dropped.
    #[error(
        "seq {requested} is no longer retained: the journal's history starts at seq {earliest} \
         (older events were dropped by retention: [journal] retain_bytes / retain_ms)"
    )]
    HistoryExpired {
        /// The seq asked for.
        requested: u64,
        /// The earliest seq still readable.
        earliest: u64,
    },

    /// Repair found events it cannot read and was not told to accept their loss.
    #[error(
        "journal {}: {lost} acknowledged event(s) cannot be read ({ranges}); nothing was changed. \
         To keep everything else and record the loss as an event, run `pool-managerd journal \
         repair --journal-dir {} --accept-loss` (or restore the journal directory from a backup)",
        dir.display(),
        dir.display()
    )]
    LossNotAccepted {
        /// The journal directory.
        dir: PathBuf,
        /// How many seqs are lost.
        lost: u64,
        /// The lost ranges, as text ("12..=40, 90..=90").
        ranges: String,
    },

    /// An append to a journal opened read-only.
    #[error("journal {} is open read-only; nothing can be appended", dir.display())]
    ReadOnly {
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

fn way_out(dir: &std::path::Path, loss: bool) -> String {
    if loss {
        format!(
            "Acknowledged events are unreadable or gone: to keep what is readable and record the \
             loss as an event, run `pool-managerd journal repair --journal-dir {} --accept-loss` \
             (or restore the journal directory from a backup)",
            dir.display()
        )
    } else {
        format!(
            "To rebuild the damaged files from what is readable, run `pool-managerd journal repair \
             --journal-dir {}` (it changes nothing if an event would be lost, and says so; \
             --accept-loss then keeps the rest)",
            dir.display()
        )
    }
}

/// Why a write failed, as operators act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteErrorKind {
    /// `ENOSPC` / `EDQUOT`: the disk (or quota) is full.
    NoSpace,
    /// `EROFS`: the file system is read-only.
    ReadOnly,
    /// `EIO`: the device failed.
    Io,
    /// Anything else (the live store damaged, sealing stuck, a bug).
    Other,
}

impl WriteErrorKind {
    /// Every kind, for metrics.
    pub const ALL: [WriteErrorKind; 4] = [
        WriteErrorKind::NoSpace,
        WriteErrorKind::ReadOnly,
        WriteErrorKind::Io,
        WriteErrorKind::Other,
    ];

    /// The label used in metrics and JSON: `enospc`, `erofs`, `eio`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteErrorKind::NoSpace => "enospc",
            WriteErrorKind::ReadOnly => "erofs",
            WriteErrorKind::Io => "eio",
            WriteErrorKind::Other => "other",
        }
    }

    /// What the operator can do.
    pub fn remedy(self) -> &'static str {
        match self {
            WriteErrorKind::NoSpace => "free space on the journal's file system",
            WriteErrorKind::ReadOnly => "remount the journal's file system read-write",
            WriteErrorKind::Io => "check the disk and the kernel log (dmesg)",
            WriteErrorKind::Other => "see the daemon's log for the cause",
        }
    }

    /// Classifies an OS error (also one that sled re-wrapped as text).
    pub fn of(error: &std::io::Error) -> WriteErrorKind {
        let code = error.raw_os_error().or_else(|| {
            let text = error.to_string();
            [libc::ENOSPC, libc::EDQUOT, libc::EROFS, libc::EIO]
                .into_iter()
                .find(|c| text.contains(&format!("code: {c},")))
        });
        match code {
            Some(c) if c == libc::ENOSPC || c == libc::EDQUOT => WriteErrorKind::NoSpace,
            Some(c) if c == libc::EROFS => WriteErrorKind::ReadOnly,
            Some(c) if c == libc::EIO => WriteErrorKind::Io,
            _ => WriteErrorKind::Other,
        }
    }
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
    fn corruption_names_seq_and_the_tools() {
        let e = JournalError::Corruption {
            seq: 5,
            what: "crc mismatch".into(),
            dir: PathBuf::from("/j"),
        };
        let s = e.to_string();
        assert!(s.contains("seq 5"), "{s}");
        assert!(
            s.contains("pool-managerd journal repair --journal-dir /j"),
            "{s}"
        );
    }

    #[test]
    fn damage_with_loss_names_accept_loss() {
        let e = JournalError::Damaged {
            dir: PathBuf::from("/j"),
            file: PathBuf::from("/j/live/db"),
            what: "the witness proves seq 9".into(),
            more: 0,
            loss: true,
        };
        let s = e.to_string();
        assert!(
            s.contains("journal repair --journal-dir /j --accept-loss"),
            "{s}"
        );
        assert!(s.contains("/j/live/db"), "{s}");
    }

    #[test]
    fn write_errors_are_classified_from_sled_text_too() {
        let raw = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(WriteErrorKind::of(&raw), WriteErrorKind::NoSpace);
        let wrapped = std::io::Error::other(format!("{raw:?}"));
        assert_eq!(WriteErrorKind::of(&wrapped), WriteErrorKind::NoSpace);
        let rofs = std::io::Error::from_raw_os_error(libc::EROFS);
        assert_eq!(WriteErrorKind::of(&rofs), WriteErrorKind::ReadOnly);
    }
}
