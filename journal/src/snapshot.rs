//! Snapshot files: a caller's projection saved at a seq, so that start-up and time travel
//! replay only the events after it.
//!
//! Owns: `<dir>/snapshots/<covers_seq>.snap`, their format, atomic writing, and which ones are
//! kept. **Must never:** keep a snapshot that retention made useless (one older than the
//! earliest retained seq minus one), or let a damaged file pass as a snapshot.
//!
//! A snapshot is also a witness: it names the CRC of the record at its `covers_seq`, so a
//! journal that no longer holds that record (or holds another one under its seq) is caught
//! at open.
//!
//! # Format
//!
//! ```text
//! magic "PMJSNAP\x01" | covers_seq u64 | record_crc u32 | state_version u8 | 3 zeros
//! | payload_len u64 | payload (bincode of the state) | crc32c u32 of everything before it
//! ```

use std::io;
use std::path::Path;

use crate::layout::Layout;

const MAGIC: &[u8; 8] = b"PMJSNAP\x01";
const HEADER_BYTES: usize = 32;
/// Largest snapshot file accepted when reading.
pub const MAX_SNAPSHOT_FILE_BYTES: u64 = 256 << 20;

/// The newest snapshots always kept (start-up loads the newest valid one; the one before it is
/// the fallback when it does not decode).
pub const SNAPSHOTS_KEPT: usize = 2;
/// At most this many snapshots are kept in all: the newest [`SNAPSHOTS_KEPT`] and older ones
/// spread over the retained history, so that a replay to an earlier seq (time travel,
/// `?at_seq=N`) starts from a snapshot near it. Past the bound, a save removes the older
/// snapshot whose neighbours are closest (the smallest merged gap; never the oldest or the
/// newest [`SNAPSHOTS_KEPT`]): the kept ones stay spread evenly, at most about
/// `2 * retained / SNAPSHOTS_KEPT_MAX` events apart. With the daemon's default of a snapshot
/// every 10,000 events, every snapshot of the first ten million events is kept.
pub const SNAPSHOTS_KEPT_MAX: usize = 1024;

/// One snapshot file, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// It covers seqs `1..=covers_seq`.
    pub covers_seq: u64,
    /// The CRC of the record at `covers_seq` when it was written.
    pub record_crc: u32,
    /// The caller's snapshot schema version.
    pub state_version: u8,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// Encodes a snapshot file.
pub fn encode(covers_seq: u64, record_crc: u32, state_version: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_BYTES + payload.len() + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&covers_seq.to_le_bytes());
    b.extend_from_slice(&record_crc.to_le_bytes());
    b.push(state_version);
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and checks a snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
    if bytes.len() < HEADER_BYTES + 4 || &bytes[0..8] != MAGIC {
        return Err(format!(
            "{} bytes: not a snapshot file (bad magic or truncated)",
            bytes.len()
        ));
    }
    let body = &bytes[..bytes.len() - 4];
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[bytes.len() - 4..]);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc) {
        return Err("crc32c mismatch (damaged)".into());
    }
    let u64_at = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(x)
    };
    let payload_len = u64_at(24);
    if payload_len != (body.len() - HEADER_BYTES) as u64 {
        return Err("payload length does not match the file".into());
    }
    let mut rc = [0u8; 4];
    rc.copy_from_slice(&bytes[16..20]);
    Ok(SnapshotFile {
        covers_seq: u64_at(8),
        record_crc: u32::from_le_bytes(rc),
        state_version: bytes[20],
        payload: body[HEADER_BYTES..].to_vec(),
    })
}

/// Reads and checks the snapshot file at `path`.
pub fn read(path: &Path) -> io::Result<Result<SnapshotFile, String>> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_SNAPSHOT_FILE_BYTES {
        return Ok(Err(format!("{len} bytes: larger than any snapshot")));
    }
    let bytes = std::fs::read(path)?;
    Ok(decode(&bytes))
}

/// The `covers_seq` of every snapshot file, newest first (from the file names; temp files
/// and other names are ignored).
pub fn list(layout: &Layout) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let entries = match std::fs::read_dir(layout.snapshots()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".snap") {
            if stem.len() == 20 {
                if let Ok(seq) = stem.parse::<u64>() {
                    seqs.push(seq);
                }
            }
        }
    }
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// Writes a snapshot file atomically.
pub fn write(
    layout: &Layout,
    covers_seq: u64,
    record_crc: u32,
    state_version: u8,
    payload: &[u8],
) -> io::Result<()> {
    crate::layout::create_dir_synced(&layout.snapshots())?;
    let bytes = encode(covers_seq, record_crc, state_version, payload);
    crate::layout::write_atomic(&layout.snapshot_file(covers_seq), &bytes)
}

/// Which snapshots to remove from `seqs` (any order) to keep at most [`SNAPSHOTS_KEPT_MAX`],
/// under the rule of its doc.
pub fn to_remove(seqs: &[u64]) -> Vec<u64> {
    let mut kept: Vec<u64> = seqs.to_vec();
    kept.sort_unstable();
    kept.dedup();
    let mut removed = Vec::new();
    while kept.len() > SNAPSHOTS_KEPT_MAX.max(SNAPSHOTS_KEPT + 1) {
        // Candidates: every snapshot but the oldest (index 0) and the newest SNAPSHOTS_KEPT.
        let last_candidate = kept.len() - SNAPSHOTS_KEPT - 1;
        let Some(victim) = (1..=last_candidate).min_by_key(|&i| kept[i + 1] - kept[i - 1]) else {
            break;
        };
        removed.push(kept.remove(victim));
    }
    removed
}

/// Removes the snapshot files beyond the bound and those older than `first_retained - 1`
/// (they cannot start a replay any more); returns the removed `covers_seq`s.
pub fn prune(layout: &Layout, first_retained: u64) -> io::Result<Vec<u64>> {
    let seqs = list(layout)?;
    let mut removed: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| s.saturating_add(1) < first_retained)
        .collect();
    let live: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| s.saturating_add(1) >= first_retained)
        .collect();
    removed.extend(to_remove(&live));
    for seq in &removed {
        match std::fs::remove_file(layout.snapshot_file(*seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        crate::layout::sync_dir(&layout.snapshots())?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damage_is_caught() {
        let good = encode(42, 7, 3, b"state bytes");
        let file = decode(&good).unwrap();
        assert_eq!(
            (file.covers_seq, file.record_crc, file.state_version),
            (42, 7, 3)
        );
        assert_eq!(file.payload, b"state bytes");
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x08;
            assert!(decode(&b).is_err(), "flip {i}");
        }
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn the_bound_keeps_the_oldest_and_newest_and_spreads_the_rest() {
        let seqs: Vec<u64> = (1..=(SNAPSHOTS_KEPT_MAX as u64 + 50))
            .map(|i| i * 10)
            .collect();
        let removed = to_remove(&seqs);
        assert_eq!(removed.len(), 50);
        assert!(!removed.contains(&10));
        assert!(!removed.contains(seqs.last().unwrap()));
    }
}
