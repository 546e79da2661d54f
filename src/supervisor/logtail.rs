//! Reading an engine log for people (`GET /v2/pools/{id}/logs`, `pool-managerd logs`): its last
//! lines, with the newest rotated part (`<log>.1`) when the live file holds too few, and a
//! follower that reads what is appended and starts again from 0 when a rotation truncated the
//! file.
//!
//! Lines are bounded: at most [`LINE_MAX_BYTES`] each (a longer one is cut and says so, the
//! rest of it skipped), invalid UTF-8 replaced. A tail reads at most [`TAIL_READ_BYTES_MAX`]
//! of a file. A line is the daemon's when it starts with
//! [`LOG_HEADER_PREFIX`]: every line the daemon writes into
//! an engine log does, and nothing else marks them. The mark is by prefix only: an engine that
//! prints a line starting with the same prefix is shown as the daemon's; the daemon shares the
//! file with the engine's own descriptor and cannot make its lines unforgeable.
//!
//! Never: writes a log, or reads outside the files it is given.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use super::logrotate::rotated_path;
use super::logwatch::read_from;
use super::process::LOG_HEADER_PREFIX;

/// The longest line returned (longer ones are cut and marked).
pub const LINE_MAX_BYTES: usize = 4 * 1024;
/// The most bytes a tail reads from one file.
pub const TAIL_READ_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// The most bytes a follower reads per look.
pub const FOLLOW_READ_BYTES: u64 = 256 * 1024;
/// Read backwards in chunks of this many bytes.
const CHUNK_BYTES: u64 = 64 * 1024;

/// One line of an engine log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Written by the daemon (starts with the header prefix), else by the engine.
    pub daemon: bool,
    /// The text, without its newline, at most [`LINE_MAX_BYTES`] (plus the cut mark).
    pub text: String,
}

impl LogLine {
    /// The line of `bytes` (no newline); `skipped`: bytes of it left out past the bound.
    pub fn of(bytes: &[u8], skipped: u64) -> LogLine {
        let cut = bytes.len() > LINE_MAX_BYTES || skipped > 0;
        let kept = &bytes[..bytes.len().min(LINE_MAX_BYTES)];
        let mut text = String::from_utf8_lossy(kept).into_owned();
        if cut {
            let total = bytes.len() as u64 + skipped;
            text.push_str(&format!(" [line cut at {LINE_MAX_BYTES} of {total} bytes]"));
        }
        LogLine {
            daemon: text.starts_with(LOG_HEADER_PREFIX),
            text,
        }
    }
}

/// The last lines of a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// Older lines exist than those returned.
    pub truncated: bool,
    /// The live log's size when it was read: a follower goes on from there.
    pub end: u64,
}

/// The last `n` lines of `log`, reading `<log>.1` too when the live file has fewer.
pub fn tail(log: &Path, n: usize) -> io::Result<Tail> {
    let (mut lines, more, end) = tail_of(log, n)?;
    let has = |k: u32| non_empty(&rotated_path(log, k));
    let truncated = if lines.len() >= n {
        more || has(1)
    } else if has(1) {
        let (mut older, more_older, _) = tail_of(&rotated_path(log, 1), n - lines.len())?;
        older.append(&mut lines);
        lines = older;
        more_older || has(2)
    } else {
        false
    };
    Ok(Tail {
        lines,
        truncated,
        end,
    })
}

fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

/// The last `want` lines of one file, whether older ones exist, and its size. A missing file
/// has none.
fn tail_of(path: &Path, want: usize) -> io::Result<(Vec<LogLine>, bool, u64)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false, 0)),
        Err(e) => return Err(e),
    };
    let end = file.metadata()?.len();
    let mut start = end;
    let mut chunks = Vec::new();
    let mut newlines = 0usize;
    while start > 0 && newlines <= want && end - start < TAIL_READ_BYTES_MAX {
        let step = CHUNK_BYTES.min(start);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(0)];
        file.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunks.push(chunk);
    }
    chunks.reverse();
    let bytes = chunks.concat();
    let mut text = bytes.as_slice();
    let mut more = start > 0;
    if more {
        // The first line read is partial: it belongs to what is left out.
        let first_end = text.iter().position(|&b| b == b'\n');
        text = first_end.map_or(&[][..], |i| &text[i + 1..]);
    }
    if text.is_empty() {
        return Ok((Vec::new(), more, end));
    }
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let mut lines: Vec<LogLine> = text
        .split(|&b| b == b'\n')
        .map(|l| LogLine::of(l, 0))
        .collect();
    if lines.len() > want {
        more = true;
        lines.drain(..lines.len() - want);
    }
    Ok((lines, more, end))
}

/// Follows a log from an offset: each look returns the lines completed since the last one. A
/// file smaller than the offset (a rotation truncated it) is read again from its start.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Bytes of the current line left out past [`LINE_MAX_BYTES`].
    skipped: u64,
}

impl Follower {
    /// Follows `path` from `offset`.
    pub fn new(path: PathBuf, offset: u64) -> Follower {
        Follower {
            path,
            offset,
            partial: Vec::new(),
            skipped: 0,
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lines completed since the last look (at most [`FOLLOW_READ_BYTES`] read), and
    /// whether more is there to read at once. A missing file has none.
    pub fn look(&mut self) -> (Vec<LogLine>, bool) {
        let (bytes, next) = match read_from(&self.path, self.offset, FOLLOW_READ_BYTES) {
            Ok(read) => read,
            Err(_) => return (Vec::new(), false),
        };
        if next < self.offset {
            // Truncated: what was partial belongs to the rotated part.
            self.partial.clear();
            self.skipped = 0;
        }
        self.offset = next;
        let full = bytes.len() as u64 >= FOLLOW_READ_BYTES;
        (self.feed(&bytes), full)
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(LogLine::of(&self.partial, self.skipped));
                self.partial.clear();
                self.skipped = 0;
            } else if self.partial.len() <= LINE_MAX_BYTES {
                self.partial.push(byte);
            } else {
                self.skipped += 1;
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write as _;

    fn write_lines(path: &Path, from: usize, to: usize) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in from..to {
            writeln!(file, "line {i}").unwrap();
        }
    }

    #[test]
    fn a_tail_has_the_last_lines_and_says_when_older_ones_exist() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        assert_eq!(tail(&log, 5).unwrap(), Tail::default());
        fs::write(&log, format!("{LOG_HEADER_PREFIX} starting x ====\n")).unwrap();
        write_lines(&log, 0, 100_000);
        let t = tail(&log, 3).unwrap();
        let texts: Vec<&str> = t.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 99997", "line 99998", "line 99999"]);
        assert!(t.truncated);
        assert!(!t.lines[0].daemon);
        let all = tail(&log, 200_000).unwrap();
        assert_eq!(all.lines.len(), 100_001);
        assert!(all.lines[0].daemon);
        assert!(!all.truncated);
        assert_eq!(all.end, fs::metadata(&log).unwrap().len());
    }

    #[test]
    fn a_short_live_log_is_completed_from_the_rotated_part() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        write_lines(&rotated_path(&log, 1), 0, 10);
        write_lines(&log, 10, 12);
        let t = tail(&log, 5).unwrap();
        let texts: Vec<&str> = t.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 7", "line 8", "line 9", "line 10", "line 11"]);
        assert!(t.truncated);
        let t = tail(&log, 12).unwrap();
        assert_eq!(t.lines.len(), 12);
        assert!(!t.truncated);
        write_lines(&rotated_path(&log, 2), 0, 1);
        assert!(tail(&log, 12).unwrap().truncated);
        assert!(tail(&log, 2).unwrap().truncated);
    }

    #[test]
    fn long_lines_are_cut_and_bad_bytes_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        let mut bytes = vec![b'x'; 10_000];
        bytes.extend_from_slice(b"\nbad \xff byte\n");
        fs::write(&log, &bytes).unwrap();
        let t = tail(&log, 10).unwrap();
        assert_eq!(t.lines.len(), 2);
        assert!(t.lines[0]
            .text
            .ends_with("[line cut at 4096 of 10000 bytes]"));
        assert!(t.lines[0].text.len() < LINE_MAX_BYTES + 64);
        assert_eq!(t.lines[1].text, "bad \u{fffd} byte");
        let mut follower = Follower::new(log.clone(), 0);
        let (lines, more) = follower.look();
        assert!(!more);
        assert_eq!(lines, t.lines);
    }

    #[test]
    fn a_follower_goes_on_after_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        write_lines(&log, 0, 50);
        let end = tail(&log, 1).unwrap().end;
        let mut follower = Follower::new(log.clone(), end);
        assert_eq!(follower.look().0, vec![]);
        write_lines(&log, 50, 51);
        assert_eq!(follower.look().0[0].text, "line 50");
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        write_lines(&log, 51, 53);
        let texts: Vec<String> = follower.look().0.into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["line 51", "line 52"]);
    }
}
