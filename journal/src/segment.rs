//! Sealed segments: immutable files holding a contiguous run of old records, in a format of
//! our own, readable without sled (and so on a read-only file system and beside a running
//! daemon).
//!
//! Owns: the segment file format, writing one (temp file, fsync, rename, fsync of the
//! directory), and reading and checking one. **Must never:** modify a segment after its
//! rename (repair replaces a damaged one with a new file), or return a record whose entry
//! fails its checks.
//!
//! # Format
//!
//! ```text
//! header  (64 bytes) = magic "PMJSEG\0\x01" | first_seq u64 | last_seq u64 | records u64
//!                      | first_ts_ms u64 | last_ts_ms u64 | zeros | crc32c u32 of bytes 0..60
//! entries            = { len u32 | crc32c u32 of (seq LE | value) | seq u64 | value [len] }*
//!                      value = the record exactly as the live store held it (`record` framing)
//! index              = n u32 | { seq u64 | offset u64 }*n        (every entry, in seq order)
//!                      | pools u32 | { id_len u16 | id | k u32 | { entry ordinal u32 }*k }*
//! trailer (64 bytes) = magic "PMJSEGT\x01" | records u64 | index_offset u64 | index_len u64
//!                      | index_crc u32 | body_crc u32 (crc32c of header and entries)
//!                      | zeros | crc32c u32 of bytes 0..60
//! ```
//!
//! All integers are little endian. A segment's seqs are increasing; they are consecutive
//! except where a loss marker (`EventSchema::loss_range`) declares the seqs before it lost.
//! Opening a segment checks the header and trailer (cheap: what start-up does); the full check
//! (`check_full`, what `journal verify` does) reads every byte.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes of the header and of the trailer.
pub const HEADER_BYTES: u64 = 64;
/// See [`HEADER_BYTES`].
pub const TRAILER_BYTES: u64 = 64;
/// Bytes before an entry's value: len, crc, seq.
pub const ENTRY_HEADER_BYTES: u64 = 16;
const MAGIC: &[u8; 8] = b"PMJSEG\x00\x01";
const TRAILER_MAGIC: &[u8; 8] = b"PMJSEGT\x01";
/// Largest value an entry may claim (a record is at most `MAX_RECORD_BYTES`; some slack).
const MAX_ENTRY_VALUE_BYTES: u32 = 1 << 20;
/// Largest index block accepted when reading.
const MAX_INDEX_BYTES: u64 = 256 << 20;
/// Most distinct pool ids a manifest entry lists (beyond: `pools = None`, "any").
pub const MANIFEST_POOLS_MAX: usize = 64;

/// What the manifest records about one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// First seq held.
    pub first_seq: u64,
    /// Last seq held.
    pub last_seq: u64,
    /// Entries held.
    pub records: u64,
    /// File size.
    pub bytes: u64,
    /// `ts_ms` of the first and last record.
    pub first_ts_ms: u64,
    /// See `first_ts_ms`.
    pub last_ts_ms: u64,
    /// The trailer's `body_crc`.
    pub body_crc: u32,
    /// The pool ids with records in it, sorted; `None` when more than [`MANIFEST_POOLS_MAX`].
    pub pools: Option<Vec<String>>,
}

impl SegmentMeta {
    /// Whether the segment may hold records of `pool_id`.
    pub fn may_hold_pool(&self, pool_id: &str) -> bool {
        self.pools
            .as_ref()
            .is_none_or(|pools| pools.binary_search_by(|p| p.as_str().cmp(pool_id)).is_ok())
    }
}

/// One record to seal.
#[derive(Debug, Clone, Copy)]
pub struct SealRecord<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its stored bytes (`record` framing).
    pub value: &'a [u8],
    /// Its envelope's pool id.
    pub pool_id: Option<&'a str>,
    /// Its envelope's `ts_ms`.
    pub ts_ms: u64,
}

/// Why a segment file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct SegmentFault {
    /// What is wrong, naming the offset where it applies.
    pub what: String,
}

fn fault(what: impl Into<String>) -> SegmentFault {
    SegmentFault { what: what.into() }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(x)
}

fn entry_crc(seq: u64, value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), value)
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Entries.
    pub records: u64,
    /// `ts_ms` of the first record.
    pub first_ts_ms: u64,
    /// `ts_ms` of the last record.
    pub last_ts_ms: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut b = [0u8; HEADER_BYTES as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.last_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.records.to_le_bytes());
        b[32..40].copy_from_slice(&self.first_ts_ms.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_ts_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Header, SegmentFault> {
        if b.len() < HEADER_BYTES as usize || &b[0..8] != MAGIC {
            return Err(fault(
                "header: bad magic (not a segment, or damaged at offset 0)",
            ));
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return Err(fault("header (offset 0..64): crc32c mismatch"));
        }
        let header = Header {
            first_seq: u64_at(b, 8),
            last_seq: u64_at(b, 16),
            records: u64_at(b, 24),
            first_ts_ms: u64_at(b, 32),
            last_ts_ms: u64_at(b, 40),
        };
        if header.first_seq == 0
            || header.last_seq < header.first_seq
            || header.records == 0
            || header.records > header.last_seq - header.first_seq + 1
        {
            return Err(fault(format!("header: inconsistent fields {header:?}")));
        }
        Ok(header)
    }
}

/// The parsed trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Entries.
    pub records: u64,
    /// Where the index block starts.
    pub index_offset: u64,
    /// Its length.
    pub index_len: u64,
    /// Its crc32c.
    pub index_crc: u32,
    /// crc32c of the header and the entries.
    pub body_crc: u32,
}

impl Trailer {
    fn encode(&self) -> [u8; TRAILER_BYTES as usize] {
        let mut b = [0u8; TRAILER_BYTES as usize];
        b[0..8].copy_from_slice(TRAILER_MAGIC);
        b[8..16].copy_from_slice(&self.records.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.index_crc.to_le_bytes());
        b[36..40].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], at: u64) -> Result<Trailer, SegmentFault> {
        if b.len() < TRAILER_BYTES as usize || &b[0..8] != TRAILER_MAGIC {
            return Err(fault(format!(
                "trailer (offset {at}): bad magic (the file is truncated or damaged at its end)"
            )));
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return Err(fault(format!("trailer (offset {at}): crc32c mismatch")));
        }
        Ok(Trailer {
            records: u64_at(b, 8),
            index_offset: u64_at(b, 16),
            index_len: u64_at(b, 24),
            index_crc: u32_at(b, 32),
            body_crc: u32_at(b, 36),
        })
    }
}

/// Writes a segment covering seqs `first_seq..=` the last record's, holding `records` (at
/// least one, seqs increasing, the first >= `first_seq`: a loss marker may stand for the seqs
/// before it) to `path`: a temp file, fsync, rename, fsync of the directory. Returns its
/// manifest entry.
pub fn write(path: &Path, first_seq: u64, records: &[SealRecord<'_>]) -> io::Result<SegmentMeta> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a segment holds at least one record",
        ));
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if first.seq < first_seq {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a segment's first record precedes its range",
        ));
    }
    let result = write_file(&tmp, first_seq, records, first, last);
    let meta = match result {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path)?;
    crate::layout::sync_dir(dir)?;
    Ok(meta)
}

fn write_file(
    tmp: &Path,
    first_seq: u64,
    records: &[SealRecord<'_>],
    first: &SealRecord<'_>,
    last: &SealRecord<'_>,
) -> io::Result<SegmentMeta> {
    let file = crate::private::file_options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = Header {
        first_seq,
        last_seq: last.seq,
        records: records.len() as u64,
        first_ts_ms: first.ts_ms,
        last_ts_ms: last.ts_ms,
    };
    let header_bytes = header.encode();
    out.write_all(&header_bytes)?;
    let mut body_crc = crc32c::crc32c(&header_bytes);
    let mut offset = HEADER_BYTES;
    let mut entries: Vec<(u64, u64)> = Vec::with_capacity(records.len());
    let mut pools: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (ordinal, record) in records.iter().enumerate() {
        let len = u32::try_from(record.value.len())
            .ok()
            .filter(|len| *len <= MAX_ENTRY_VALUE_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut head = [0u8; ENTRY_HEADER_BYTES as usize];
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[4..8].copy_from_slice(&entry_crc(record.seq, record.value).to_le_bytes());
        head[8..16].copy_from_slice(&record.seq.to_le_bytes());
        out.write_all(&head)?;
        out.write_all(record.value)?;
        body_crc = crc32c::crc32c_append(body_crc, &head);
        body_crc = crc32c::crc32c_append(body_crc, record.value);
        entries.push((record.seq, offset));
        if let Some(pool) = record.pool_id {
            pools.entry(pool).or_default().push(ordinal as u32);
        }
        offset += ENTRY_HEADER_BYTES + u64::from(len);
    }
    let index = encode_index(&entries, &pools);
    out.write_all(&index)?;
    let trailer = Trailer {
        records: records.len() as u64,
        index_offset: offset,
        index_len: index.len() as u64,
        index_crc: crc32c::crc32c(&index),
        body_crc,
    };
    out.write_all(&trailer.encode())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let names: Vec<String> = pools.keys().map(|p| p.to_string()).collect();
    Ok(SegmentMeta {
        first_seq,
        last_seq: last.seq,
        records: records.len() as u64,
        bytes: offset + index.len() as u64 + TRAILER_BYTES,
        first_ts_ms: first.ts_ms,
        last_ts_ms: last.ts_ms,
        body_crc,
        pools: (names.len() <= MANIFEST_POOLS_MAX).then_some(names),
    })
}

fn encode_index(entries: &[(u64, u64)], pools: &BTreeMap<&str, Vec<u32>>) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + entries.len() * 16 + pools.len() * 32);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (seq, offset) in entries {
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }
    b.extend_from_slice(&(pools.len() as u32).to_le_bytes());
    for (pool, ordinals) in pools {
        let id = pool.as_bytes();
        b.extend_from_slice(&(id.len().min(u16::MAX as usize) as u16).to_le_bytes());
        b.extend_from_slice(&id[..id.len().min(u16::MAX as usize)]);
        b.extend_from_slice(&(ordinals.len() as u32).to_le_bytes());
        for ordinal in ordinals {
            b.extend_from_slice(&ordinal.to_le_bytes());
        }
    }
    b
}

/// A segment's index: every entry's seq and offset, and each pool's entries.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    /// `(seq, offset)` of every entry, in seq order.
    pub entries: Vec<(u64, u64)>,
    /// Pool id -> ordinals into `entries`.
    pub pools: BTreeMap<String, Vec<u32>>,
}

impl SegmentIndex {
    /// The ordinal of the first entry with seq >= `seq`.
    pub fn position(&self, seq: u64) -> usize {
        self.entries.partition_point(|(s, _)| *s < seq)
    }
}

fn decode_index(b: &[u8], header: &Header) -> Result<SegmentIndex, SegmentFault> {
    let bad = |what: &str| fault(format!("index: {what}"));
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], SegmentFault> {
        let slice = b.get(*at..*at + n).ok_or_else(|| bad("truncated"))?;
        *at += n;
        Ok(slice)
    };
    let n = u32_at(take(&mut at, 4)?, 0) as usize;
    if n as u64 != header.records {
        return Err(bad("entry count differs from the header's"));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let e = take(&mut at, 16)?;
        entries.push((u64_at(e, 0), u64_at(e, 8)));
    }
    if entries
        .windows(2)
        .any(|w| w[1].0 <= w[0].0 || w[1].1 <= w[0].1)
    {
        return Err(bad("entries out of order"));
    }
    let pools_n = u32_at(take(&mut at, 4)?, 0) as usize;
    let mut pools = BTreeMap::new();
    for _ in 0..pools_n {
        let l = take(&mut at, 2)?;
        let len = u16::from_le_bytes([l[0], l[1]]) as usize;
        let id = String::from_utf8(take(&mut at, len)?.to_vec()).map_err(|_| bad("pool id"))?;
        let k = u32_at(take(&mut at, 4)?, 0) as usize;
        let mut ordinals = Vec::with_capacity(k.min(n));
        for _ in 0..k {
            let ordinal = u32_at(take(&mut at, 4)?, 0);
            if ordinal as usize >= n {
                return Err(bad("pool ordinal out of range"));
            }
            ordinals.push(ordinal);
        }
        pools.insert(id, ordinals);
    }
    if at != b.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(SegmentIndex { entries, pools })
}

/// An open segment file whose header and trailer passed their checks.
#[derive(Debug)]
pub struct SegmentFile {
    /// Its path.
    pub path: PathBuf,
    file: File,
    /// The header.
    pub header: Header,
    /// The trailer.
    pub trailer: Trailer,
    /// The file's length.
    pub len: u64,
}

impl SegmentFile {
    /// Opens `path` and checks its header and trailer (what start-up does for every segment).
    pub fn open(path: &Path) -> Result<SegmentFile, SegmentFault> {
        let file = File::open(path).map_err(|e| fault(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| fault(format!("cannot stat: {e}")))?
            .len();
        if len < HEADER_BYTES + TRAILER_BYTES {
            return Err(fault(format!(
                "{len} bytes: shorter than a header and a trailer (truncated)"
            )));
        }
        let mut head = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| fault(format!("cannot read the header: {e}")))?;
        let header = Header::decode(&head)?;
        let mut tail = [0u8; TRAILER_BYTES as usize];
        let at = len - TRAILER_BYTES;
        file.read_exact_at(&mut tail, at)
            .map_err(|e| fault(format!("cannot read the trailer: {e}")))?;
        let trailer = Trailer::decode(&tail, at)?;
        if trailer.records != header.records
            || trailer.index_offset < HEADER_BYTES
            || trailer.index_offset.checked_add(trailer.index_len) != Some(at)
            || trailer.index_len > MAX_INDEX_BYTES
        {
            return Err(fault(format!(
                "trailer (offset {at}) does not match the header or the file length"
            )));
        }
        Ok(SegmentFile {
            path: path.to_path_buf(),
            file,
            header,
            trailer,
            len,
        })
    }

    /// Reads and checks the index block.
    pub fn index(&self) -> Result<SegmentIndex, SegmentFault> {
        let mut b = vec![0u8; self.trailer.index_len as usize];
        self.file
            .read_exact_at(&mut b, self.trailer.index_offset)
            .map_err(|e| fault(format!("cannot read the index: {e}")))?;
        if crc32c::crc32c(&b) != self.trailer.index_crc {
            return Err(fault(format!(
                "index (offset {}..{}): crc32c mismatch",
                self.trailer.index_offset,
                self.trailer.index_offset + self.trailer.index_len
            )));
        }
        let index = decode_index(&b, &self.header)?;
        let first = index.entries.first().map(|e| e.0);
        let last = index.entries.last().map(|e| e.0);
        if first.is_none_or(|f| f < self.header.first_seq) || last != Some(self.header.last_seq) {
            return Err(fault("index: first or last seq outside the header's range"));
        }
        Ok(index)
    }

    /// Reads and checks the entry at `offset`; `expected_seq` when known.
    pub fn entry_at(
        &self,
        offset: u64,
        expected_seq: Option<u64>,
    ) -> Result<(u64, Vec<u8>), SegmentFault> {
        let mut head = [0u8; ENTRY_HEADER_BYTES as usize];
        self.file
            .read_exact_at(&mut head, offset)
            .map_err(|e| fault(format!("entry at offset {offset}: cannot read: {e}")))?;
        let (len, crc, seq) = (u32_at(&head, 0), u32_at(&head, 4), u64_at(&head, 8));
        if len > MAX_ENTRY_VALUE_BYTES
            || offset + ENTRY_HEADER_BYTES + u64::from(len) > self.trailer.index_offset
        {
            return Err(fault(format!(
                "entry at offset {offset}: length {len} is impossible"
            )));
        }
        let mut value = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut value, offset + ENTRY_HEADER_BYTES)
            .map_err(|e| fault(format!("entry at offset {offset}: cannot read: {e}")))?;
        if entry_crc(seq, &value) != crc {
            return Err(fault(format!("entry at offset {offset}: crc32c mismatch")));
        }
        if expected_seq.is_some_and(|want| want != seq) {
            return Err(fault(format!(
                "entry at offset {offset}: seq {seq}, the index says {}",
                expected_seq.unwrap_or(0)
            )));
        }
        Ok((seq, value))
    }

    /// A sequential reader of the entries from `offset` (an entry's offset).
    pub fn cursor(&self, offset: u64) -> io::Result<EntryCursor> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(EntryCursor {
            reader: BufReader::with_capacity(256 * 1024, file),
            offset,
            end: self.trailer.index_offset,
            path: self.path.clone(),
        })
    }

    /// Reads every byte: the body checksum, the index, and every entry against the index.
    /// Stops at the first fault.
    pub fn check_full(&self) -> Result<(), SegmentFault> {
        let index = self.index()?;
        let mut cursor = self
            .cursor(HEADER_BYTES)
            .map_err(|e| fault(format!("cannot read: {e}")))?;
        let mut head = [0u8; HEADER_BYTES as usize];
        self.file
            .read_exact_at(&mut head, 0)
            .map_err(|e| fault(format!("cannot read: {e}")))?;
        let mut body_crc = crc32c::crc32c(&head);
        for (seq, offset) in &index.entries {
            if cursor.offset != *offset {
                return Err(fault(format!(
                    "entry of seq {seq}: the index says offset {offset}, it is at {}",
                    cursor.offset
                )));
            }
            let (got, value) = match cursor.next_entry() {
                Some(Ok(entry)) => entry,
                Some(Err(f)) => return Err(f),
                None => {
                    return Err(fault(format!(
                        "entry of seq {seq} at offset {offset}: missing"
                    )))
                }
            };
            if got != *seq {
                return Err(fault(format!(
                    "entry at offset {offset}: seq {got}, the index says {seq}"
                )));
            }
            let mut headb = [0u8; ENTRY_HEADER_BYTES as usize];
            headb[0..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
            headb[4..8].copy_from_slice(&entry_crc(got, &value).to_le_bytes());
            headb[8..16].copy_from_slice(&got.to_le_bytes());
            body_crc = crc32c::crc32c_append(body_crc, &headb);
            body_crc = crc32c::crc32c_append(body_crc, &value);
        }
        if cursor.offset != self.trailer.index_offset {
            return Err(fault("bytes between the last entry and the index"));
        }
        if body_crc != self.trailer.body_crc {
            return Err(fault("body checksum (header and entries) mismatch"));
        }
        Ok(())
    }

    /// Every entry that can still be read, for repair: through the index when it is intact,
    /// else sequentially until the first bad entry. Returns the entries and what was wrong.
    pub fn salvage(&self) -> (Vec<(u64, Vec<u8>)>, Vec<String>) {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        match self.index() {
            Ok(index) => {
                for (seq, offset) in &index.entries {
                    match self.entry_at(*offset, Some(*seq)) {
                        Ok(entry) => out.push(entry),
                        Err(f) => problems.push(format!("seq {seq}: {f}")),
                    }
                }
            }
            Err(f) => {
                problems.push(f.what);
                if let Ok(mut cursor) = self.cursor(HEADER_BYTES) {
                    for item in cursor.by_ref() {
                        match item {
                            Ok(entry) => out.push(entry),
                            Err(f) => {
                                problems.push(f.what);
                                break;
                            }
                        }
                    }
                }
            }
        }
        (out, problems)
    }
}

/// Salvages what can be read from a segment file whose header or trailer is damaged: the
/// entries from the start of the file (after a plausible header) until the first bad one.
pub fn salvage_raw(path: &Path) -> (Vec<(u64, Vec<u8>)>, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return (out, vec![format!("cannot open: {e}")]),
    };
    let end = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::new(file);
    if reader.seek(SeekFrom::Start(HEADER_BYTES)).is_err() {
        return (out, vec!["cannot seek".into()]);
    }
    let mut cursor = EntryCursor {
        reader,
        offset: HEADER_BYTES,
        end,
        path: path.to_path_buf(),
    };
    let mut last_seq = 0u64;
    loop {
        match cursor.next_entry() {
            Some(Ok((seq, value))) if seq > last_seq => {
                last_seq = seq;
                out.push((seq, value));
            }
            Some(Ok(_)) => break,
            Some(Err(f)) => {
                problems.push(f.what);
                break;
            }
            None => break,
        }
    }
    (out, problems)
}

/// Sequential reader of entries (see [`SegmentFile::cursor`]).
pub struct EntryCursor {
    reader: BufReader<File>,
    /// Offset of the next entry.
    pub offset: u64,
    end: u64,
    path: PathBuf,
}

impl EntryCursor {
    /// The next entry, checked; `None` at the index.
    pub fn next_entry(&mut self) -> Option<Result<(u64, Vec<u8>), SegmentFault>> {
        if self.offset + ENTRY_HEADER_BYTES > self.end {
            return None;
        }
        let at = self.offset;
        let mut head = [0u8; ENTRY_HEADER_BYTES as usize];
        if let Err(e) = self.reader.read_exact(&mut head) {
            return Some(Err(fault(format!(
                "entry at offset {at}: cannot read: {e}"
            ))));
        }
        let (len, crc, seq) = (u32_at(&head, 0), u32_at(&head, 4), u64_at(&head, 8));
        if len > MAX_ENTRY_VALUE_BYTES || at + ENTRY_HEADER_BYTES + u64::from(len) > self.end {
            self.offset = self.end;
            return Some(Err(fault(format!(
                "entry at offset {at}: length {len} is impossible"
            ))));
        }
        let mut value = vec![0u8; len as usize];
        if let Err(e) = self.reader.read_exact(&mut value) {
            self.offset = self.end;
            return Some(Err(fault(format!(
                "entry at offset {at}: cannot read: {e}"
            ))));
        }
        self.offset = at + ENTRY_HEADER_BYTES + u64::from(len);
        if entry_crc(seq, &value) != crc {
            return Some(Err(fault(format!("entry at offset {at}: crc32c mismatch"))));
        }
        Some(Ok((seq, value)))
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for EntryCursor {
    type Item = Result<(u64, Vec<u8>), SegmentFault>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(u64, Vec<u8>, Option<String>)> {
        (10..20u64)
            .map(|seq| {
                (
                    seq,
                    vec![seq as u8; 30 + seq as usize],
                    (seq % 3 != 0).then(|| format!("p{}", seq % 2)),
                )
            })
            .collect()
    }

    fn write_test(path: &Path) -> SegmentMeta {
        let owned = records();
        let seal: Vec<SealRecord<'_>> = owned
            .iter()
            .map(|(seq, value, pool)| SealRecord {
                seq: *seq,
                value,
                pool_id: pool.as_deref(),
                ts_ms: 1000 + seq,
            })
            .collect();
        write(path, 10, &seal).unwrap()
    }

    #[test]
    fn written_segment_reads_back_through_index_and_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.seg");
        let meta = write_test(&path);
        assert_eq!((meta.first_seq, meta.last_seq, meta.records), (10, 19, 10));
        assert_eq!(meta.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(meta.pools, Some(vec!["p0".to_string(), "p1".to_string()]));
        let seg = SegmentFile::open(&path).unwrap();
        seg.check_full().unwrap();
        let index = seg.index().unwrap();
        assert_eq!(index.position(15), 5);
        let (seq, value) = seg.entry_at(index.entries[5].1, Some(15)).unwrap();
        assert_eq!((seq, value.len()), (15, 45));
        let all: Vec<u64> = seg
            .cursor(HEADER_BYTES)
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(all, (10..20).collect::<Vec<_>>());
        let p1: Vec<u64> = index.pools["p1"]
            .iter()
            .map(|o| index.entries[*o as usize].0)
            .collect();
        assert_eq!(p1, vec![11, 13, 17, 19]);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_caught_by_the_full_check() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.seg");
        write_test(&path);
        let good = std::fs::read(&path).unwrap();
        let damaged = tmp.path().join("d.seg");
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x20;
            std::fs::write(&damaged, &b).unwrap();
            let caught = SegmentFile::open(&damaged).and_then(|s| s.check_full());
            assert!(caught.is_err(), "flip at {i} passed");
        }
        for cut in 0..good.len() {
            std::fs::write(&damaged, &good[..cut]).unwrap();
            let caught = SegmentFile::open(&damaged).and_then(|s| s.check_full());
            assert!(caught.is_err(), "truncation at {cut} passed");
        }
    }
}
