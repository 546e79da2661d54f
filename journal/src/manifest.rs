//! The manifest: which sealed segments make up the journal's older history, and what
//! retention has dropped.
//!
//! Owns: `<dir>/segments/MANIFEST` and its format (the `record` framing: version
//! [`MANIFEST_VERSION`], crc32c, bincode of [`Manifest`]), replaced atomically (temp file,
//! fsync, rename, fsync of the directory) after the segment files it lists are durable.
//! **Must never:** list a segment before its file is synced and renamed into place, or
//! forget one before retention means to drop it (a segment file not listed is not part of
//! the history; a listed one that is missing is damage).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::{decode_framed, encode_framed};
use crate::segment::SegmentMeta;

/// Format version of the manifest.
pub const MANIFEST_VERSION: u8 = 1;
/// Largest manifest accepted when reading.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The sealed part of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Bumped at every replacement.
    pub generation: u64,
    /// Seqs up to this one were dropped by retention (0: none).
    pub expired_through: u64,
    /// The sealed segments, oldest first, contiguous.
    pub segments: Vec<SegmentMeta>,
}

impl Manifest {
    /// The last sealed seq (what the live store no longer needs to hold).
    pub fn sealed_through(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.expired_through, |s| s.last_seq)
    }

    /// The earliest seq the journal still holds (or would hold: the next seq when empty).
    pub fn first_retained(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.expired_through + 1, |s| s.first_seq)
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The index of the segment holding `seq`, if a sealed one does.
    pub fn find(&self, seq: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.last_seq < seq);
        self.segments
            .get(i)
            .filter(|s| s.first_seq <= seq)
            .map(|_| i)
    }

    /// What is inconsistent in the list itself (order, contiguity with `expired_through`).
    pub fn check(&self) -> Result<(), String> {
        let mut next = self.expired_through + 1;
        for s in &self.segments {
            if s.first_seq != next {
                return Err(format!(
                    "segment {}..={} does not follow seq {} (expected to start at {next})",
                    s.first_seq,
                    s.last_seq,
                    next - 1
                ));
            }
            if s.last_seq < s.first_seq {
                return Err(format!("segment {}..={} is empty", s.first_seq, s.last_seq));
            }
            next = s.last_seq + 1;
        }
        Ok(())
    }
}

/// Reads the manifest at `path`: `Ok(None)` when absent, `Err(why)` when damaged.
pub fn read(path: &Path) -> io::Result<Result<Option<Manifest>, String>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(e),
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Ok(Err(format!(
            "{} bytes: larger than any manifest",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path)?;
    Ok(decode_framed::<Manifest>(MANIFEST_VERSION, &bytes)
        .map_err(|why| format!("does not decode: {why}"))
        .and_then(|m| m.check().map(|()| Some(m))))
}

/// Replaces the manifest at `path` atomically.
pub fn write(path: &Path, manifest: &Manifest) -> io::Result<()> {
    let bytes = encode_framed(MANIFEST_VERSION, manifest)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    crate::layout::write_atomic(path, &bytes)
}
