//! The witness: an independent record, outside the live store, of what the journal has
//! acknowledged.
//!
//! sled 0.34 recovers its log up to the first damaged message and silently drops everything
//! after it, so a damaged store can open "clean" and shorter. The witness is how open tells
//! the difference: it names the last acknowledged seq and the CRC of that record, and a store
//! that holds less than that is refused (see `open`).
//!
//! Owns: the file `<dir>/witness` and its format. **Must never:** name a seq before the sync
//! that made it durable returned (it would raise a false alarm after a crash), or cost the hot
//! path a second sync per batch (the file is written at every commit and synced at most every
//! [`WITNESS_SYNC_INTERVAL_MS`]).
//!
//! # Format
//!
//! Two slots, at offsets 0 and [`SLOT_STRIDE`], written alternately, so that a write torn by a
//! crash or a damaged sector leaves the other slot (one commit older) readable:
//!
//! ```text
//! slot = magic "PMJW" | seq u64 LE | record_crc u32 LE | first_seq u64 LE | counter u64 LE
//!        | crc32c u32 LE of the 32 bytes before it                       (36 bytes)
//! ```
//!
//! `seq` is the last acknowledged seq, `record_crc` the CRC in that record's framing,
//! `first_seq` the earliest seq the journal retains (what retention has not dropped), and
//! `counter` orders the two slots (the higher valid one wins).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The witness is fsynced at most this often (plus at close).
pub const WITNESS_SYNC_INTERVAL_MS: u64 = 1_000;
/// Offset of the second slot (its own page).
pub const SLOT_STRIDE: u64 = 4096;
/// Bytes in one slot.
pub const SLOT_BYTES: usize = 36;
const MAGIC: &[u8; 4] = b"PMJW";

/// What one slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vouch {
    /// The last acknowledged seq (0: nothing acknowledged).
    pub seq: u64,
    /// The CRC stored in that record's framing (0 when `seq` is 0).
    pub record_crc: u32,
    /// The earliest retained seq (1 until retention drops something).
    pub first_seq: u64,
    /// Orders the slots.
    pub counter: u64,
}

impl Vouch {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        out[0..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..16].copy_from_slice(&self.record_crc.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.counter.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Vouch> {
        if bytes.len() < SLOT_BYTES || &bytes[0..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(b)
        };
        if crc32c::crc32c(&bytes[0..32]) != u32_at(32) {
            return None;
        }
        Some(Vouch {
            seq: u64_at(4),
            record_crc: u32_at(12),
            first_seq: u64_at(16),
            counter: u64_at(24),
        })
    }
}

/// What reading the witness file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// No file.
    Missing,
    /// Both slots valid (or one valid and the other never written): the newest.
    Valid(Vouch),
    /// One slot damaged, the other valid: the file is damaged, the valid slot still proves
    /// what it says.
    OneSlotDamaged(Vouch),
    /// No slot is valid (truncated, overwritten): it proves nothing.
    Damaged(String),
}

impl Reading {
    /// The best proof it gives, if any.
    pub fn vouch(&self) -> Option<Vouch> {
        match self {
            Reading::Valid(v) | Reading::OneSlotDamaged(v) => Some(*v),
            _ => None,
        }
    }
}

/// Reads the witness at `path` without writing anything.
pub fn read(path: &Path) -> io::Result<Reading> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reading::Missing),
        Err(e) => return Err(e),
    };
    let stride = SLOT_STRIDE as usize;
    let slot = |at: usize| bytes.get(at..at + SLOT_BYTES).map(Vouch::decode);
    let a = slot(0);
    let b = slot(stride);
    let expected_len = stride + SLOT_BYTES;
    // A slot that was never written is all zeros (the file is created with both slots).
    let blank = |at: usize| {
        bytes
            .get(at..at + SLOT_BYTES)
            .is_some_and(|s| s.iter().all(|&x| x == 0))
    };
    let ok = |s: Option<Option<Vouch>>| s.flatten();
    match (ok(a), ok(b)) {
        (Some(x), Some(y)) if bytes.len() == expected_len => {
            Ok(Reading::Valid(if y.counter > x.counter { y } else { x }))
        }
        (Some(x), Some(y)) => Ok(Reading::OneSlotDamaged(if y.counter > x.counter {
            y
        } else {
            x
        })),
        (Some(x), None) if blank(stride) && bytes.len() == expected_len => Ok(Reading::Valid(x)),
        (Some(x), None) | (None, Some(x)) => Ok(Reading::OneSlotDamaged(x)),
        (None, None) => Ok(Reading::Damaged(format!(
            "no valid slot in {} bytes (expected {expected_len})",
            bytes.len()
        ))),
    }
}

/// The open witness of a writable journal.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    file: Mutex<File>,
    counter: AtomicU64,
    first_seq: AtomicU64,
    dirty: AtomicBool,
    last_sync: Mutex<Instant>,
    /// The last (seq, record_crc) written.
    last: Mutex<(u64, u32)>,
}

impl Witness {
    /// Creates or replaces the witness at `path` so that it says `vouch` (both slots), synced.
    /// Used at creation and by repair; the file is written in place and then synced, so a
    /// crash leaves either the old or the new content in each slot.
    pub fn create(path: &Path, vouch: Vouch) -> io::Result<Witness> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(SLOT_STRIDE + SLOT_BYTES as u64)?;
        let witness = Witness::with_file(path, file, vouch);
        witness.write_both(vouch.seq, vouch.record_crc)?;
        if let Some(parent) = path.parent() {
            crate::layout::sync_dir(parent)?;
        }
        Ok(witness)
    }

    /// Opens an existing witness for writing, continuing from `vouch` (what it was read as).
    pub fn open(path: &Path, vouch: Vouch) -> io::Result<Witness> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Witness::with_file(path, file, vouch))
    }

    fn with_file(path: &Path, file: File, vouch: Vouch) -> Witness {
        Witness {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            counter: AtomicU64::new(vouch.counter),
            first_seq: AtomicU64::new(vouch.first_seq.max(1)),
            dirty: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            last: Mutex::new((vouch.seq, vouch.record_crc)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_slot(&self, seq: u64, record_crc: u32) -> io::Result<()> {
        let counter = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        let vouch = Vouch {
            seq,
            record_crc,
            first_seq: self.first_seq.load(Ordering::Acquire),
            counter,
        };
        let at = if counter % 2 == 0 { 0 } else { SLOT_STRIDE };
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all_at(&vouch.encode(), at)?;
        if let Ok(mut last) = self.last.lock() {
            *last = (seq, record_crc);
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Both slots say (`seq`, `record_crc`), then fsync: for repair, truncation and creation
    /// (a lower seq than before must not be contradicted by the other slot).
    pub fn write_both(&self, seq: u64, record_crc: u32) -> io::Result<()> {
        self.write_slot(seq, record_crc)?;
        self.write_slot(seq, record_crc)?;
        self.sync()
    }

    /// Records a durable commit ending at `seq` whose record has `record_crc`. Call only after
    /// the sync that made it durable returned. Syncs the file when the last sync is older than
    /// [`WITNESS_SYNC_INTERVAL_MS`].
    pub fn record(&self, seq: u64, record_crc: u32) -> io::Result<()> {
        self.write_slot(seq, record_crc)?;
        let due = self
            .last_sync
            .lock()
            .map(|t| t.elapsed() >= Duration::from_millis(WITNESS_SYNC_INTERVAL_MS))
            .unwrap_or(true);
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// Opens the file again by its path (the file system was remounted after an error: the
    /// old descriptor points at the old, read-only mount), then writes the last recorded seq
    /// to it and syncs.
    pub fn reopen(&self) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
        self.touch()
    }

    /// Writes the last recorded seq again (with the current `first_seq`) and syncs.
    pub fn touch(&self) -> io::Result<()> {
        let (seq, crc) = self.last.lock().map(|l| *l).unwrap_or((0, 0));
        self.write_slot(seq, crc)?;
        self.sync()
    }

    /// The last seq written.
    pub fn last_seq(&self) -> u64 {
        self.last.lock().map(|l| l.0).unwrap_or(0)
    }

    /// Sets the earliest retained seq written with the next slot (retention moved it).
    pub fn set_first_seq(&self, first_seq: u64) {
        self.first_seq.store(first_seq.max(1), Ordering::Release);
    }

    /// fsyncs the file if a slot was written since the last sync.
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        if self.dirty.load(Ordering::Acquire) {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.dirty.store(false, Ordering::Release);
        let synced = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_data();
        if let Err(e) = synced {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        if let Ok(mut t) = self.last_sync.lock() {
            *t = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate_and_the_newest_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("witness");
        let w = Witness::create(&path, Vouch::default()).unwrap();
        for seq in 1..=5 {
            w.record(seq, seq as u32 * 7).unwrap();
        }
        w.sync_if_dirty().unwrap();
        let reading = read(&path).unwrap();
        assert_eq!(
            reading.vouch().map(|v| (v.seq, v.record_crc)),
            Some((5, 35))
        );
        assert!(matches!(reading, Reading::Valid(_)));
    }

    #[test]
    fn one_damaged_slot_leaves_the_other_and_both_damaged_prove_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("witness");
        let w = Witness::create(&path, Vouch::default()).unwrap();
        w.record(9, 1).unwrap();
        w.record(10, 2).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        // The newest (counter 4 after create's two writes and two records) is slot 0.
        bytes[5] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        match read(&path).unwrap() {
            Reading::OneSlotDamaged(v) => assert_eq!(v.seq, 9),
            other => panic!("{other:?}"),
        }
        bytes[SLOT_STRIDE as usize + 5] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path).unwrap(), Reading::Damaged(_)));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(read(&path).unwrap(), Reading::Damaged(_)));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read(&path).unwrap(), Reading::Missing);
    }
}
