//! Reading the history: sealed segments and the tail, as one run of seqs.
//!
//! Owns: the cursor behind `Journal::read_from`, `read_pool`, and the rules every read
//! checks: each record's CRC and decoding, `key == seq`, and no missing seq (a gap is
//! accepted only where the record after it is a loss marker declaring it).
//!
//! **Must never:** hold the view lock during file I/O, return a record past the last
//! acknowledged seq, or skip a missing seq silently.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::manifest::Manifest;
use crate::record::{decode_record, Envelope, EventSchema, RecordFault};
use crate::segment::{EntryCursor, SegmentFile, SegmentIndex};
use crate::shared::Shared;
use crate::JournalError;

/// Records fetched per refill.
const CHUNK: usize = 256;

fn corruption(shared: &Shared, seq: u64, what: String) -> JournalError {
    JournalError::Corruption {
        seq,
        what,
        dir: shared.layout.dir.clone(),
    }
}

fn fault(shared: &Shared, seq: u64, f: RecordFault) -> JournalError {
    match f {
        RecordFault::Unsupported { version, current } => JournalError::UnsupportedVersion {
            seq,
            version,
            current,
        },
        RecordFault::Bad(what) => corruption(shared, seq, what),
    }
}

/// An open segment being read sequentially.
struct SegmentSource {
    cursor: EntryCursor,
    last_seq: u64,
}

/// The cursor of `read_from`.
pub(crate) struct Reader<'a, S: EventSchema> {
    shared: &'a Shared,
    expected: u64,
    end: u64,
    buf: VecDeque<(u64, Arc<[u8]>)>,
    segment: Option<SegmentSource>,
    done: bool,
    _schema: PhantomData<S>,
}

impl<'a, S: EventSchema> Reader<'a, S> {
    /// Reads from `seq` (0: the earliest retained) to the last acknowledged seq at the call.
    pub(crate) fn new(shared: &'a Shared, seq: u64) -> Self {
        let first = shared.manifest().first_retained();
        let start = if seq == 0 { first } else { seq };
        let end = shared.last_seq();
        Reader {
            shared,
            expected: start,
            end,
            buf: VecDeque::new(),
            segment: None,
            done: start > end,
            _schema: PhantomData,
        }
    }

    fn refill(&mut self) -> Result<(), JournalError> {
        if let Some(source) = self.segment.as_mut() {
            if self.expected <= source.last_seq {
                return fill_from_segment(self.shared, source, self.end, &mut self.buf);
            }
            self.segment = None;
        }
        let manifest = {
            let view = self.shared.read_view();
            if self.expected > view.manifest.sealed_through() {
                let tail = view.tail.range(self.expected.max(1), self.end, CHUNK);
                self.buf.extend(tail);
                return Ok(());
            }
            Arc::clone(&view.manifest)
        };
        let mut source = open_segment(self.shared, &manifest, self.expected)?;
        fill_from_segment(self.shared, &mut source, self.end, &mut self.buf)?;
        self.segment = Some(source);
        Ok(())
    }

    fn step(&mut self) -> Result<Envelope<S::Event>, JournalError> {
        if self.buf.is_empty() {
            self.refill()?;
        }
        let Some((key, value)) = self.buf.pop_front() else {
            return Err(corruption(
                self.shared,
                self.expected,
                format!("missing: the journal ends before its last seq {}", self.end),
            ));
        };
        let envelope = decode_record::<S>(key, &value).map_err(|f| fault(self.shared, key, f))?;
        if key != self.expected {
            let declared = S::loss_range(&envelope.event)
                .is_some_and(|(from, to)| to == key && from <= self.expected);
            if key < self.expected || !declared {
                return Err(corruption(
                    self.shared,
                    self.expected,
                    format!("missing: the next record present is seq {key}"),
                ));
            }
        }
        self.expected = key + 1;
        Ok(envelope)
    }
}

impl<S: EventSchema> Iterator for Reader<'_, S> {
    type Item = Result<Envelope<S::Event>, JournalError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if item.is_err() || self.expected > self.end {
            self.done = true;
        }
        Some(item)
    }
}

/// Opens the segment holding `seq` (or, after a loss marker's gap, the next one) positioned
/// at the first entry with seq >= `seq`.
fn open_segment(
    shared: &Shared,
    manifest: &Manifest,
    seq: u64,
) -> Result<SegmentSource, JournalError> {
    let Some(i) = manifest.find(seq) else {
        return Err(JournalError::HistoryExpired {
            requested: seq,
            earliest: manifest.first_retained(),
        });
    };
    let meta = &manifest.segments[i];
    let path = shared.layout.segment_file(meta.first_seq, meta.last_seq);
    let bad = |what: String| corruption(shared, seq, format!("segment {}: {what}", path.display()));
    let file = match SegmentFile::open(&path) {
        Ok(file) => file,
        Err(f) => {
            // Retention may have dropped it since the manifest was read.
            let now = shared.manifest();
            if seq < now.first_retained() {
                return Err(JournalError::HistoryExpired {
                    requested: seq,
                    earliest: now.first_retained(),
                });
            }
            return Err(bad(f.what));
        }
    };
    let index = file.index().map_err(|f| bad(f.what))?;
    let pos = index.position(seq);
    let offset = index
        .entries
        .get(pos)
        .map_or(file.trailer.index_offset, |(_, o)| *o);
    let cursor = file.cursor(offset).map_err(|e| bad(e.to_string()))?;
    Ok(SegmentSource {
        cursor,
        last_seq: meta.last_seq,
    })
}

fn fill_from_segment(
    shared: &Shared,
    source: &mut SegmentSource,
    end: u64,
    buf: &mut VecDeque<(u64, Arc<[u8]>)>,
) -> Result<(), JournalError> {
    for _ in 0..CHUNK {
        match source.cursor.next_entry() {
            Some(Ok((seq, value))) => {
                if seq > end {
                    break;
                }
                buf.push_back((seq, value.into()));
            }
            Some(Err(f)) => {
                let at = buf.back().map_or(0, |b| b.0 + 1);
                return Err(corruption(
                    shared,
                    at,
                    format!("segment {}: {}", source.cursor.path().display(), f.what),
                ));
            }
            None => break,
        }
    }
    Ok(())
}

/// One partition's records, oldest first, `seq >= since` (0: from the earliest retained), at
/// most `limit`; each checked as in `read_from`.
pub(crate) fn read_pool<S: EventSchema>(
    shared: &Shared,
    pool_id: &str,
    since: u64,
    limit: usize,
) -> Result<Vec<Envelope<S::Event>>, JournalError> {
    let manifest = shared.manifest();
    let first = manifest.first_retained();
    if since != 0 && since < first {
        return Err(JournalError::HistoryExpired {
            requested: since,
            earliest: first,
        });
    }
    let end = shared.last_seq();
    let mut out = Vec::new();
    let mut raw: Vec<(u64, Arc<[u8]>)> = Vec::new();
    for meta in manifest.segments.iter().filter(|m| m.last_seq >= since) {
        if raw.len() >= limit {
            break;
        }
        if !meta.may_hold_pool(pool_id) {
            continue;
        }
        let path = shared.layout.segment_file(meta.first_seq, meta.last_seq);
        let bad = |what: String| {
            corruption(
                shared,
                meta.first_seq,
                format!("segment {}: {what}", path.display()),
            )
        };
        let file = SegmentFile::open(&path).map_err(|f| bad(f.what))?;
        let index: SegmentIndex = file.index().map_err(|f| bad(f.what))?;
        let Some(ordinals) = index.pools.get(pool_id) else {
            continue;
        };
        for ordinal in ordinals {
            let (seq, offset) = index.entries[*ordinal as usize];
            if seq < since {
                continue;
            }
            if raw.len() >= limit {
                break;
            }
            let (_, value) = file.entry_at(offset, Some(seq)).map_err(|f| bad(f.what))?;
            raw.push((seq, value.into()));
        }
    }
    if raw.len() < limit {
        let view = shared.read_view();
        let from = since.max(view.manifest.sealed_through() + 1);
        for seq in view.tail.pool_seqs(pool_id, from, limit - raw.len()) {
            if let Some(record) = view.tail.get(seq) {
                raw.push((seq, Arc::clone(&record.value)));
            }
        }
    }
    for (seq, value) in raw {
        if seq > end {
            break;
        }
        let envelope = decode_record::<S>(seq, &value).map_err(|f| fault(shared, seq, f))?;
        if envelope.pool_id.as_deref() == Some(pool_id) {
            out.push(envelope);
        }
    }
    Ok(out)
}

/// The stored bytes of the record at `seq`, if the journal holds one there.
pub(crate) fn record_bytes(shared: &Shared, seq: u64) -> Result<Option<Arc<[u8]>>, JournalError> {
    let manifest = {
        let view = shared.read_view();
        if let Some(record) = view.tail.get(seq) {
            return Ok(Some(Arc::clone(&record.value)));
        }
        Arc::clone(&view.manifest)
    };
    let Some(i) = manifest.find(seq) else {
        return Ok(None);
    };
    let meta = &manifest.segments[i];
    let path = shared.layout.segment_file(meta.first_seq, meta.last_seq);
    let bad = |what: String| corruption(shared, seq, format!("segment {}: {what}", path.display()));
    let file = SegmentFile::open(&path).map_err(|f| bad(f.what))?;
    let index = file.index().map_err(|f| bad(f.what))?;
    match index.entries.get(index.position(seq)) {
        Some((s, offset)) if *s == seq => {
            let (_, value) = file.entry_at(*offset, Some(seq)).map_err(|f| bad(f.what))?;
            Ok(Some(value.into()))
        }
        _ => Ok(None),
    }
}
