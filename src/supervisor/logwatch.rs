//! Follows an engine's log as it grows and finds the first GPU fault line in it ("CUDA error",
//! "out of memory" on the device, "Xid"), so that a fault is seen while the engine still
//! runs, and named even when later output pushes it out of the log tail. Where a GPU is
//! required it also finds the lines of an engine that found no usable GPU and will serve on
//! the CPU (`no CUDA-capable device is detected`, `no usable GPU found`: see
//! [`is_spillover_line`]), which fail a start with `CPU_SPILLOVER` (OC-POOL-3012).
//!
//! Owns: the read position, a partial line, and the fault found. Bounded: it reads at most
//! [`READ_CHUNK_BYTES`] per look and keeps at most [`LINE_MAX_BYTES`] of an unfinished line
//! (the rest of an over-long line is skipped), whatever the engine writes.
//! A log truncated by a rotation (`logrotate.rs`: smaller than the read position) is read
//! again from its start.
//!
//! Never: writes the log or decides what a fault means (the core does).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
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

/// What a line of the log shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFinding {
    /// A GPU fault (`cuda_error`, `vram_oom`, `driver_error`) and its line.
    Fault(ExitReason, String),
    /// The engine found no usable GPU (it will serve on the CPU): the line.
    Spillover(String),
}

/// Whether `line` says that the engine found no usable GPU: `no CUDA-capable device is
/// detected` (the CUDA runtime) or `no usable GPU found` (llama.cpp's "warning: no usable GPU
/// found, --gpu-layers option will be ignored"), case-insensitive. Our own header lines (which
/// quote the engine's command line) never count.
pub fn is_spillover_line(line: &str) -> bool {
    if line.starts_with(process::LOG_HEADER_PREFIX) {
        return false;
    }
    let lower = line.to_ascii_lowercase();
    lower.contains("no cuda-capable device is detected") || lower.contains("no usable gpu found")
}

/// Follows a log from an offset, line by line, and reports what its lines show.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    lines: LineSplitter,
    /// Lines read and not yet looked at (at most one chunk's).
    pending: VecDeque<String>,
    /// Report [`LogFinding::Spillover`] lines (a GPU is required).
    spillover: bool,
}

impl LogFollower {
    /// Follows `path` from `offset`; `spillover`: also report lines of an engine that found
    /// no usable GPU.
    pub fn new(path: PathBuf, offset: u64, spillover: bool) -> LogFollower {
        LogFollower {
            path,
            offset,
            lines: LineSplitter::default(),
            pending: VecDeque::new(),
            spillover,
        }
    }

    fn look_at(&self, line: &str) -> Option<LogFinding> {
        if self.spillover && is_spillover_line(line) {
            // Before the fault test: "CUDA error: no CUDA-capable device is detected" is an
            // engine on the CPU, not a faulty GPU.
            return Some(LogFinding::Spillover(line.to_string()));
        }
        process::classify_log(line).map(|reason| LogFinding::Fault(reason, line.to_string()))
    }

    /// The next finding, or `None` once the engine has exited and its last output was looked
    /// at. Call again after a finding to go on from the line after it.
    pub async fn next(
        &mut self,
        exited: &mut watch::Receiver<Option<ExitInfo>>,
    ) -> Option<LogFinding> {
        loop {
            let done = exited.borrow().is_some();
            loop {
                while let Some(line) = self.pending.pop_front() {
                    if let Some(found) = self.look_at(&line) {
                        return Some(found);
                    }
                }
                let (bytes, next) = read_from(&self.path, self.offset, READ_CHUNK_BYTES as u64)
                    .unwrap_or_else(|_| (Vec::new(), self.offset));
                self.offset = next;
                let full = bytes.len() >= READ_CHUNK_BYTES;
                self.pending.extend(self.lines.feed(&bytes));
                if !full && self.pending.is_empty() {
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
}

/// Follows `path` from `offset` until a line names a GPU fault (returned with the line) or
/// the engine has exited (`None`, after a last look at what it wrote).
pub async fn first_fault(
    path: PathBuf,
    offset: u64,
    mut exited: watch::Receiver<Option<ExitInfo>>,
) -> Option<(ExitReason, String)> {
    let mut follower = LogFollower::new(path, offset, false);
    loop {
        match follower.next(&mut exited).await? {
            LogFinding::Fault(reason, line) => return Some((reason, line)),
            LogFinding::Spillover(_) => {}
        }
    }
}

/// Reads `path` from `offset` to its end (at most `max` bytes); a file shorter than `offset`
/// (truncated by a rotation) is read from its start. Returns the bytes and the next offset.
pub fn read_from(path: &Path, offset: u64, max: u64) -> io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    let next = offset + bytes.len() as u64;
    Ok((bytes, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_reader_past_the_end_starts_again_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        std::fs::write(&log, "one\ntwo\n").unwrap();
        let (bytes, next) = read_from(&log, 0, 1024).unwrap();
        assert_eq!(bytes, b"one\ntwo\n");
        std::fs::write(&log, "3\n").unwrap();
        let (bytes, next) = read_from(&log, next, 1024).unwrap();
        assert_eq!((bytes.as_slice(), next), (&b"3\n"[..], 2));
    }

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

    #[test]
    fn spillover_lines_are_named_and_our_header_is_not_one() {
        for line in [
            "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
            "warning: no usable GPU found, --gpu-layers option will be ignored",
            "RuntimeError: CUDA error: NO CUDA-CAPABLE DEVICE IS DETECTED",
        ] {
            assert!(is_spillover_line(line), "{line}");
        }
        assert!(!is_spillover_line(
            "llm_load_tensors: offloaded 33/33 layers to GPU"
        ));
        assert!(!is_spillover_line(
            "==== pool-managerd: starting sim --log-line 'no usable GPU found' ===="
        ));
    }

    #[tokio::test]
    async fn a_follower_reports_spillover_then_goes_on_to_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        std::fs::write(
            &path,
            "loading\nCUDA error: no CUDA-capable device is detected\nwarning: no usable GPU found\nCUDA error: invalid argument\n",
        )
        .unwrap();
        let (_tx, mut rx) = watch::channel(None);
        let mut follower = LogFollower::new(path.clone(), 0, true);
        assert!(matches!(
            follower.next(&mut rx).await,
            Some(LogFinding::Spillover(line)) if line.contains("no CUDA-capable")
        ));
        assert!(matches!(
            follower.next(&mut rx).await,
            Some(LogFinding::Spillover(line)) if line.contains("no usable GPU")
        ));
        assert!(matches!(
            follower.next(&mut rx).await,
            Some(LogFinding::Fault(ExitReason::CudaError, line)) if line.contains("invalid argument")
        ));
        // Without a GPU required, the spillover lines are no finding (the first is a CUDA
        // error line, as before).
        let (_tx, rx) = watch::channel(None);
        let (reason, line) = first_fault(path, 0, rx).await.unwrap();
        assert_eq!(reason, ExitReason::CudaError);
        assert!(line.contains("no CUDA-capable"), "{line}");
    }

    #[tokio::test]
    async fn a_fault_after_a_rotation_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        let mut log = pool_journal::private::file_options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        log.write_all("loading a long model\n".repeat(300).as_bytes())
            .unwrap();
        let (_tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(first_fault(path.clone(), 0, rx));
        // Read up to the end, then the log is rotated (copied, truncated in place).
        let limits = crate::config::LogsSettings {
            max_bytes: 4096,
            keep: 1,
        };
        tokio::time::sleep(Duration::from_millis(LOG_POLL_MS * 2)).await;
        assert!(crate::supervisor::logrotate::rotate_if_over(&path, limits, 0).unwrap());
        writeln!(log, "CUDA error: an illegal memory access was encountered").unwrap();
        let found = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the fault after the rotation is found within 5 s")
            .unwrap();
        assert_eq!(found.unwrap().0, ExitReason::CudaError);
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
