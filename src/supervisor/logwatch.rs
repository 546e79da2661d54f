//! Follows an engine's log as it grows and finds the first GPU fault line in it ("CUDA error",
//! "out of memory" on the device, "Xid"), so that a fault is seen while the engine still
//! runs, and named even when later output pushes it out of the log tail.
//!
//! Owns: the read position, a partial line, and the fault found. Bounded: it reads at most
//! [`READ_CHUNK_BYTES`] per look and keeps at most [`LINE_MAX_BYTES`] of an unfinished line
//! (the rest of an over-long line is skipped), whatever the engine writes.
//! Never: writes the log or decides what a fault means (the core does).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pool_core::ExitReason;
use tokio::sync::watch;

use super::process::{self, ExitInfo};

/// How often the log's size is looked at.
pub const LOG_POLL_MS: u64 = 100;
/// The most bytes read per look.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The longest line kept (longer ones are cut).
pub const LINE_MAX_BYTES: usize = 4 * 1024;

/// Splits a byte stream into lines, bounded.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The current line is over-long: skip to its end.
    skipping: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; returns the lines they complete (without their newline).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                if !self.skipping {
                    lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                }
                self.partial.clear();
                self.skipping = false;
            } else if self.skipping {
                // The rest of an over-long line.
            } else if self.partial.len() < LINE_MAX_BYTES {
                self.partial.push(byte);
            } else {
                // Keep the cut line: its head is what names a fault.
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
                self.skipping = true;
            }
        }
        lines
    }
}

/// Follows `path` from `offset` until a line names a GPU fault (returned with the line) or
/// the engine has exited (`None`, after a last look at what it wrote).
pub async fn first_fault(
    path: PathBuf,
    mut offset: u64,
    mut exited: watch::Receiver<Option<ExitInfo>>,
) -> Option<(ExitReason, String)> {
    let mut lines = LineSplitter::default();
    loop {
        let done = exited.borrow().is_some();
        loop {
            let (bytes, next) = read_chunk(&path, offset);
            offset = next;
            for line in lines.feed(&bytes) {
                if let Some(reason) = process::classify_log(&line) {
                    return Some((reason, line));
                }
            }
            if bytes.len() < READ_CHUNK_BYTES {
                break;
            }
        }
        if done {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(LOG_POLL_MS)) => {}
            _ = exited.changed() => {}
        }
    }
}

/// Reads up to [`READ_CHUNK_BYTES`] from `offset`; a file shorter than `offset` (truncated or
/// replaced) is read again from its start. Returns the bytes and the next offset.
fn read_chunk(path: &Path, offset: u64) -> (Vec<u8>, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let offset = if len < offset { 0 } else { offset };
    if len == offset || file.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut bytes = Vec::with_capacity(
        READ_CHUNK_BYTES.min(usize::try_from(len - offset).unwrap_or(READ_CHUNK_BYTES)),
    );
    let read = file
        .take(READ_CHUNK_BYTES as u64)
        .read_to_end(&mut bytes)
        .unwrap_or(0);
    (bytes, offset + read as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"a\nb"), vec!["a"]);
        assert_eq!(s.feed(b"c\n\n"), vec!["bc", ""]);
        let long = vec![b'x'; LINE_MAX_BYTES * 3];
        let lines = s.feed(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), LINE_MAX_BYTES);
        assert!(s.feed(b"yyy\nnext\n") == vec!["next"]);
    }

    #[tokio::test]
    async fn a_fault_written_later_is_found_and_our_header_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        let mut log = std::fs::File::create(&path).unwrap();
        writeln!(
            log,
            "==== pool-managerd: starting sim --cuda-error-message 'CUDA error: x' ===="
        )
        .unwrap();
        writeln!(log, "loading").unwrap();
        let (_tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(first_fault(path.clone(), 0, rx));
        tokio::time::sleep(Duration::from_millis(LOG_POLL_MS * 2)).await;
        assert!(!watcher.is_finished(), "the header names no fault");
        writeln!(log, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 97656.25 MiB on device 0: cudaMalloc failed: out of memory").unwrap();
        let (reason, line) = watcher.await.unwrap().unwrap();
        assert_eq!(reason, ExitReason::VramOom);
        assert!(line.contains("cudaMalloc failed"));
    }

    #[tokio::test]
    async fn the_watch_ends_with_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        std::fs::write(&path, "fine\n").unwrap();
        let (tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(first_fault(path, 0, rx));
        tx.send(Some(ExitInfo::default())).unwrap();
        assert_eq!(watcher.await.unwrap(), None);
    }
}
