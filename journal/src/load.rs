//! Loading a journal directory into memory and checking it: what open does before it hands
//! out a journal, and what `verify` does (the same check, plus every byte of every segment
//! and snapshot).
//!
//! Owns: the rules that decide whether a journal is whole. The history is whole when the
//! sealed segments listed by the manifest and the live store's records form one run of seqs
//! (gaps only where a loss marker declares them), every record passes its checks, and it
//! reaches at least as far as every witness proves: the witness file, the manifest, and the
//! snapshots (each names a seq and the CRC of the record there).
//!
//! **Must never:** write anything (the caller acts on what it finds), or accept a history
//! shorter than a witness proves.

use std::path::PathBuf;

use crate::layout::Layout;
use crate::manifest::{self, Manifest};
use crate::record::{decode_record, framed_crc, EventSchema, RecordFault};
use crate::segment::SegmentFile;
use crate::snapshot;
use crate::store::{catch_sled, Store, StoreError};
use crate::tail::{Tail, TailRecord};
use crate::witness::Reading;
use crate::JournalError;

/// Most findings kept (the rest are counted).
pub const MAX_FINDINGS: usize = 1000;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file (or directory) it is in.
    pub file: PathBuf,
    /// The seq concerned, when one is.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
    /// Whether acknowledged events are unreadable or gone because of it.
    pub loss: bool,
}

/// How much to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// What start-up reads: the manifest, every segment's header and trailer, the live store
    /// (every record), the witness, the newest snapshot.
    Start,
    /// Everything: also every entry of every segment and every snapshot file.
    Full,
}

/// How to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// How much to check.
    pub depth: Depth,
    /// The journal predates segments (sled's files in the directory itself): it has no
    /// witness and no manifest yet, which is not damage.
    pub legacy: bool,
    /// A daemon is writing the journal meanwhile (a read-only open beside it): a snapshot
    /// saved after the live store was copied may cover more than the copy, which is not loss.
    pub concurrent: bool,
}

impl LoadOptions {
    /// Start-up's checks on an own journal.
    pub const START: LoadOptions = LoadOptions {
        depth: Depth::Start,
        legacy: false,
        concurrent: false,
    };
}

/// What was loaded and found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The manifest (empty when missing or damaged: see `findings`).
    pub manifest: Manifest,
    /// The live store's records after the sealed ones.
    pub tail: Tail,
    /// The witness as read.
    pub witness: Option<Reading>,
    /// Damage.
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`].
    pub findings_omitted: usize,
    /// Damaged records above the witness with nothing valid after them: a write torn by a
    /// crash, never acknowledged. `(seq, what, raw bytes)`.
    pub torn: Vec<(u64, String, Vec<u8>)>,
    /// Keys in the live store at or below the sealed seq (sealed, not yet removed).
    pub sealed_in_store: Vec<u64>,
    /// The highest key in the live store (0 when empty).
    pub store_last_key: u64,
    /// Snapshot files, newest first.
    pub snapshots: Vec<u64>,
    /// Segment files in `segments/` that the manifest does not list (a seal or a retention
    /// interrupted by a crash), and temp files.
    pub stray_files: Vec<PathBuf>,
    /// Records checked (tail, plus segment entries at `Depth::Full`).
    pub records_checked: u64,
}

impl Loaded {
    /// The last seq the journal holds.
    pub fn held_last(&self) -> u64 {
        self.tail
            .last_seq()
            .unwrap_or_else(|| self.manifest.sealed_through())
    }

    fn find(&mut self, file: PathBuf, seq: Option<u64>, what: String, loss: bool) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                file,
                seq,
                what,
                loss,
            });
        } else {
            self.findings_omitted += 1;
        }
    }

    /// Whether any finding loses acknowledged events.
    pub fn loses_events(&self) -> bool {
        self.findings.iter().any(|f| f.loss)
    }

    /// The error open answers with, if anything was found.
    pub fn refusal(&self, layout: &Layout) -> Option<JournalError> {
        let first = self.findings.first()?;
        let what = match first.seq {
            Some(seq) => format!("seq {seq}: {}", first.what),
            None => first.what.clone(),
        };
        Some(JournalError::Damaged {
            dir: layout.dir.clone(),
            file: first.file.clone(),
            what,
            more: self.findings.len() - 1 + self.findings_omitted,
            loss: self.loses_events(),
        })
    }
}

/// Loads and checks the journal at `layout`: `witness` as read before the live store was
/// opened (or copied), and the live store `store` (opened by the caller; `None` when it could
/// not be, which the caller reports). The manifest is read after the store was opened: a
/// segment sealed meanwhile then overlaps the store, which is harmless, never a gap.
pub fn load<S: EventSchema, St: Store>(
    layout: &Layout,
    witness: Reading,
    store: Option<&St>,
    options: LoadOptions,
) -> Result<Loaded, JournalError> {
    let mut loaded = Loaded::default();
    if !options.legacy {
        load_manifest(layout, &witness, &mut loaded);
    }
    if let Some(store) = store {
        scan_store::<S, St>(layout, store, &witness, &mut loaded)?;
    }
    loaded.witness = Some(witness);
    if !options.legacy {
        check::<S>(layout, &mut loaded, options)?;
    }
    Ok(loaded)
}

/// The checks that follow loading (also what `verify` runs on an open journal's view).
pub fn check<S: EventSchema>(
    layout: &Layout,
    loaded: &mut Loaded,
    options: LoadOptions,
) -> Result<(), JournalError> {
    check_segments(layout, loaded, options.depth);
    check_witness(layout, loaded);
    check_snapshots(layout, options, loaded);
    if options.depth == Depth::Full {
        check_segment_entries::<S>(layout, loaded)?;
    }
    Ok(())
}

fn load_manifest(layout: &Layout, witness: &Reading, loaded: &mut Loaded) {
    let path = layout.manifest();
    match manifest::read(&path) {
        Ok(Ok(Some(manifest))) => loaded.manifest = manifest,
        Ok(Ok(None)) => {
            let has_segments = list_segment_files(layout)
                .iter()
                .any(|p| is_segment_name(p));
            let vouches = witness.vouch().is_some_and(|v| v.seq > 0);
            if has_segments || vouches {
                loaded.find(path, None, "the manifest is missing".into(), false);
            }
        }
        Ok(Err(why)) => loaded.find(path, None, format!("the manifest {why}"), false),
        Err(e) => loaded.find(path, None, format!("cannot read the manifest: {e}"), false),
    }
}

fn list_segment_files(layout: &Layout) -> Vec<PathBuf> {
    std::fs::read_dir(layout.segments())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn is_segment_name(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "seg")
}

/// Every listed segment file must exist (one directory listing). Start-up reads the header and
/// trailer of the newest segment only (its records follow into the live store), so that its
/// time does not grow with the history; `Depth::Full` (verify) reads every segment's, and the
/// maintenance thread's scrub reads every segment whole right after open.
fn check_segments(layout: &Layout, loaded: &mut Loaded, depth: Depth) {
    let segments = loaded.manifest.segments.clone();
    let present: std::collections::HashSet<PathBuf> =
        list_segment_files(layout).into_iter().collect();
    for (i, meta) in segments.iter().enumerate() {
        let path = layout.segment_file(meta.first_seq, meta.last_seq);
        if !present.contains(&path) {
            let what = format!(
                "segment file of seqs {}..={} is missing",
                meta.first_seq, meta.last_seq
            );
            loaded.find(path, Some(meta.first_seq), what, true);
            continue;
        }
        if depth == Depth::Start && i + 1 < segments.len() {
            continue;
        }
        match SegmentFile::open(&path) {
            Err(fault) => {
                let what = if path.exists() {
                    format!(
                        "segment of seqs {}..={}: {fault}",
                        meta.first_seq, meta.last_seq
                    )
                } else {
                    format!(
                        "segment file of seqs {}..={} is missing",
                        meta.first_seq, meta.last_seq
                    )
                };
                loaded.find(path, Some(meta.first_seq), what, true);
            }
            Ok(file) => {
                let h = file.header;
                if h.first_seq != meta.first_seq
                    || h.last_seq != meta.last_seq
                    || h.records != meta.records
                    || file.trailer.body_crc != meta.body_crc
                    || file.len != meta.bytes
                {
                    loaded.find(
                        path,
                        Some(meta.first_seq),
                        format!(
                            "segment of seqs {}..={} is not the one the manifest lists \
                             (header, checksum or size differ)",
                            meta.first_seq, meta.last_seq
                        ),
                        true,
                    );
                }
            }
        }
    }
    let listed: std::collections::HashSet<PathBuf> = segments
        .iter()
        .map(|m| layout.segment_file(m.first_seq, m.last_seq))
        .collect();
    for path in list_segment_files(layout) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if (is_segment_name(&path) && !listed.contains(&path)) || name.ends_with(".partial") {
            loaded.stray_files.push(path);
        }
    }
}

/// What the scan of the live store saw, in order.
struct Scan {
    expected: u64,
    /// Damaged records not yet followed by a valid one.
    pending: Vec<(u64, String, Vec<u8>)>,
}

fn scan_store<S: EventSchema, St: Store>(
    layout: &Layout,
    store: &St,
    witness: &Reading,
    loaded: &mut Loaded,
) -> Result<(), JournalError> {
    let sealed = loaded.manifest.sealed_through();
    let db = layout.store_dir().join("db");
    let mut scan = Scan {
        expected: sealed + 1,
        pending: Vec::new(),
    };
    let items: Result<Vec<(u64, Vec<u8>)>, StoreError> = catch_sled(|| {
        let mut out = Vec::new();
        for item in store.iter_from(0) {
            let (key, value) = item?;
            out.push((key, value.as_ref().to_vec()));
        }
        Ok(out)
    });
    let items = match items {
        Ok(items) => items,
        Err(e) => {
            let what = format!("the live store cannot be read: {e}");
            loaded.find(db, None, what, false);
            return Ok(());
        }
    };
    for (key, value) in items {
        loaded.store_last_key = loaded.store_last_key.max(key);
        if key <= sealed {
            loaded.sealed_in_store.push(key);
            continue;
        }
        loaded.records_checked += 1;
        scan_record::<S>(&db, &mut scan, loaded, key, value)?;
    }
    let acked = witness.vouch().map_or(0, |v| v.seq);
    for (seq, what, raw) in scan.pending {
        if seq > acked {
            loaded.torn.push((seq, what, raw));
        } else {
            let what = format!("{what} (an acknowledged record)");
            loaded.find(db.clone(), Some(seq), what, true);
        }
    }
    Ok(())
}

/// One unsealed record of the live store: a valid one joins the tail (the damaged ones before
/// it, and a gap not declared by a loss marker, are findings); a damaged one waits in
/// `scan.pending` (at the end it is torn, or damage when acknowledged).
fn scan_record<S: EventSchema>(
    db: &std::path::Path,
    scan: &mut Scan,
    loaded: &mut Loaded,
    key: u64,
    value: Vec<u8>,
) -> Result<(), JournalError> {
    match decode_record::<S>(key, &value) {
        Ok(envelope) => {
            for (seq, what, _) in std::mem::take(&mut scan.pending) {
                let what = format!("{what} (valid records follow it)");
                loaded.find(db.to_path_buf(), Some(seq), what, true);
            }
            if key != scan.expected {
                let declared = S::loss_range(&envelope.event)
                    .is_some_and(|(from, to)| to == key && from <= scan.expected);
                if !declared && key > scan.expected {
                    let what = format!("seqs {}..={} are missing", scan.expected, key - 1);
                    loaded.find(db.to_path_buf(), Some(scan.expected), what, true);
                }
            }
            scan.expected = key + 1;
            loaded.tail.push(TailRecord {
                seq: key,
                value: value.into(),
                pool_id: envelope.pool_id.as_deref().map(Into::into),
                ts_ms: envelope.ts_ms,
            });
        }
        Err(RecordFault::Unsupported { version, current }) => {
            return Err(JournalError::UnsupportedVersion {
                seq: key,
                version,
                current,
            })
        }
        Err(RecordFault::Bad(what)) => {
            scan.pending.push((key, what, value));
            scan.expected = key + 1;
        }
    }
    Ok(())
}

/// The CRC of the record at `seq` as the journal holds it: `Ok(None)` when it is not held (a
/// lost range declared by a marker, or expired), `Err` when it cannot be read.
pub fn held_record_crc(
    layout: &Layout,
    manifest: &Manifest,
    tail: &Tail,
    seq: u64,
) -> Result<Option<u32>, String> {
    if let Some(record) = tail.get(seq) {
        return Ok(framed_crc(&record.value));
    }
    if seq > manifest.sealed_through() {
        return Ok(None);
    }
    let Some(i) = manifest.find(seq) else {
        return Ok(None);
    };
    let meta = &manifest.segments[i];
    let file = SegmentFile::open(&layout.segment_file(meta.first_seq, meta.last_seq))
        .map_err(|f| f.what)?;
    let index = file.index().map_err(|f| f.what)?;
    let pos = index.position(seq);
    match index.entries.get(pos) {
        Some((s, offset)) if *s == seq => {
            let (_, value) = file.entry_at(*offset, Some(seq)).map_err(|f| f.what)?;
            Ok(framed_crc(&value))
        }
        _ => Ok(None),
    }
}

fn check_witness(layout: &Layout, loaded: &mut Loaded) {
    let path = layout.witness();
    let reading = loaded.witness.clone().unwrap_or(Reading::Missing);
    let non_empty = !loaded.tail.is_empty() || !loaded.manifest.segments.is_empty();
    match &reading {
        Reading::Missing if non_empty => loaded.find(
            path.clone(),
            None,
            "the witness file is missing".into(),
            false,
        ),
        Reading::Damaged(why) => loaded.find(
            path.clone(),
            None,
            format!("the witness is damaged: {why}"),
            false,
        ),
        Reading::OneSlotDamaged(_) => loaded.find(
            path.clone(),
            None,
            "one of the witness's two slots is damaged (the other still vouches)".into(),
            false,
        ),
        _ => {}
    }
    let Some(vouch) = reading.vouch() else { return };
    let held = loaded.held_last();
    if vouch.seq > held {
        let file = layout.store_dir().join("db");
        loaded.find(
            file,
            Some(held + 1),
            format!(
                "the witness ({}) proves that seq {} was acknowledged, but the journal holds \
                 events only up to seq {held}: {} acknowledged event(s) are gone",
                path.display(),
                vouch.seq,
                vouch.seq - held
            ),
            true,
        );
        return;
    }
    if vouch.seq == 0 || vouch.seq < loaded.manifest.first_retained() {
        return;
    }
    match held_record_crc(layout, &loaded.manifest, &loaded.tail, vouch.seq) {
        Ok(Some(crc)) if crc != vouch.record_crc => loaded.find(
            layout.store_dir().join("db"),
            Some(vouch.seq),
            format!(
                "the record at seq {} is not the one acknowledged (crc {crc:#010x}, the witness \
                 says {:#010x})",
                vouch.seq, vouch.record_crc
            ),
            true,
        ),
        Ok(_) => {}
        Err(why) => loaded.find(
            path,
            Some(vouch.seq),
            format!("cannot read the record the witness names: {why}"),
            true,
        ),
    }
}

fn check_snapshots(layout: &Layout, options: LoadOptions, loaded: &mut Loaded) {
    let seqs = match snapshot::list(layout) {
        Ok(seqs) => seqs,
        Err(e) => {
            let what = format!("cannot list the snapshots: {e}");
            loaded.find(layout.snapshots(), None, what, false);
            return;
        }
    };
    loaded.snapshots = seqs.clone();
    let to_check: Vec<u64> = match options.depth {
        Depth::Start => seqs.iter().copied().take(1).collect(),
        Depth::Full => seqs.clone(),
    };
    for covers in to_check {
        check_snapshot(layout, options, loaded, covers);
    }
}

/// One snapshot: readable, naming the seq its file name says, that seq held (not past what
/// the journal holds, unless a concurrent writer is ahead of this view), and the record it
/// was taken after the one held there (its CRC).
fn check_snapshot(layout: &Layout, options: LoadOptions, loaded: &mut Loaded, covers: u64) {
    let held = loaded.held_last();
    let first = loaded.manifest.first_retained();
    let path = layout.snapshot_file(covers);
    let file = match snapshot::read(&path) {
        Ok(Ok(file)) if file.covers_seq == covers => file,
        Ok(Ok(file)) => {
            let what = format!("names seq {} inside, not {covers}", file.covers_seq);
            return loaded.find(path, Some(covers), what, false);
        }
        Ok(Err(why)) => {
            let what = format!("snapshot damaged: {why}");
            return loaded.find(path, Some(covers), what, false);
        }
        Err(e) => {
            let what = format!("cannot read the snapshot: {e}");
            return loaded.find(path, Some(covers), what, false);
        }
    };
    if covers > held && options.concurrent {
        return;
    }
    if covers > held {
        let what = format!(
            "the snapshot {} covers seq {covers}, but the journal holds events only up \
             to seq {held}: acknowledged events are gone",
            path.display()
        );
        return loaded.find(layout.store_dir().join("db"), Some(held + 1), what, true);
    }
    if covers + 1 < first {
        return;
    }
    match held_record_crc(layout, &loaded.manifest, &loaded.tail, covers) {
        Ok(Some(crc)) if crc != file.record_crc => loaded.find(
            path,
            Some(covers),
            format!(
                "the record at seq {covers} is not the one this snapshot was taken after \
                 (crc {crc:#010x}, the snapshot says {:#010x})",
                file.record_crc
            ),
            false,
        ),
        Ok(_) => {}
        Err(why) => loaded.find(
            path,
            Some(covers),
            format!("cannot read the record it covers: {why}"),
            true,
        ),
    }
}

/// Full depth on an open journal's view: every tail record decodes (a load decodes them as it
/// scans the store, so this finds something only in memory gone wrong).
pub fn check_tail_records<S: EventSchema>(
    layout: &Layout,
    loaded: &mut Loaded,
) -> Result<(), JournalError> {
    let db = layout.store_dir().join("db");
    let mut expected = loaded.manifest.sealed_through() + 1;
    let records: Vec<(u64, std::sync::Arc<[u8]>)> = loaded
        .tail
        .iter()
        .map(|r| (r.seq, r.value.clone()))
        .collect();
    for (seq, value) in records {
        check_in_sequence::<S>(loaded, &db, &mut expected, seq, &value)?;
    }
    Ok(())
}

/// Checks one record read in seq order (`expected` is the seq it should have): it decodes,
/// and it follows the one before, or a loss marker declares the seqs between; records a
/// finding in `file` otherwise. A newer format refuses outright.
fn check_in_sequence<S: EventSchema>(
    loaded: &mut Loaded,
    file: &std::path::Path,
    expected: &mut u64,
    seq: u64,
    value: &[u8],
) -> Result<(), JournalError> {
    match decode_record::<S>(seq, value) {
        Ok(envelope) => {
            let declared = S::loss_range(&envelope.event)
                .is_some_and(|(from, to)| to == seq && from <= *expected);
            if seq != *expected && !declared {
                loaded.find(
                    file.to_path_buf(),
                    Some(*expected),
                    format!("seqs {}..={} are missing", *expected, seq.saturating_sub(1)),
                    true,
                );
            }
        }
        Err(RecordFault::Unsupported { version, current }) => {
            return Err(JournalError::UnsupportedVersion {
                seq,
                version,
                current,
            })
        }
        Err(RecordFault::Bad(what)) => loaded.find(file.to_path_buf(), Some(seq), what, true),
    }
    *expected = seq + 1;
    Ok(())
}

fn check_segment_entries<S: EventSchema>(
    layout: &Layout,
    loaded: &mut Loaded,
) -> Result<(), JournalError> {
    let segments = loaded.manifest.segments.clone();
    let mut expected = loaded.manifest.first_retained();
    for meta in &segments {
        let path = layout.segment_file(meta.first_seq, meta.last_seq);
        let Ok(file) = SegmentFile::open(&path) else {
            expected = meta.last_seq + 1;
            continue; // already a finding
        };
        if let Err(fault) = file.check_full() {
            loaded.find(
                path.clone(),
                Some(meta.first_seq),
                format!(
                    "segment of seqs {}..={}: {fault}",
                    meta.first_seq, meta.last_seq
                ),
                true,
            );
        }
        let (entries, _) = file.salvage();
        for (seq, value) in entries {
            loaded.records_checked += 1;
            check_in_sequence::<S>(loaded, &path, &mut expected, seq, &value)?;
        }
        expected = expected.max(meta.last_seq + 1);
    }
    Ok(())
}
