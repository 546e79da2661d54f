//! Removing and repairing: quarantine files, the writer's recovery after a refused write,
//! truncation, and `journal repair` (offline).
//!
//! Owns: the quarantine file format and every procedure that removes or rebuilds records:
//!
//! ```text
//! <dir>/quarantine/<unix_ms>-from-seq-<N>.ndjson
//! one line per removed record:
//! {"seq":N,"what":"<why it was removed>","raw_hex":"<the stored value>","envelope":<export form or null>}
//! ```
//!
//! `repair` reads everything it can (segments entry by entry, also those the manifest does
//! not list, the live store from a copy, key by key where sled fails), decides what is lost
//! against the witnesses (witness file, manifest, snapshots), and, when nothing acknowledged is
//! lost or the loss is accepted, writes a new set of files (`rebuild`) with a loss marker event
//! (`EventSchema::loss_accepted`) at the end of each lost range. The replaced files are kept in
//! `quarantine/`.
//!
//! **Must never:** delete a record before the quarantine file holding it is fsynced, lower the
//! witness after the records it vouches for are gone (it is lowered first), or change anything
//! when it refuses.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::JournalConfig;
use crate::journal::{take_lock, witness_reading};
use crate::layout::{self, Layout};
use crate::load::Depth;
use crate::manifest::{self, Manifest};
use crate::record::{decode_record, encode_record, framed_crc, Envelope, EventSchema, RecordFault};
use crate::report::{RepairReport, TruncateReport};
use crate::segment::{salvage_raw, SegmentFile, SegmentMeta};
use crate::shared::Shared;
use crate::snapshot;
use crate::store::{catch_sled, SledStore, Store};
use crate::witness::Reading;
use crate::JournalError;

/// Most attempts at a unique quarantine file name within one millisecond.
const MAX_QUARANTINE_NAME_ATTEMPTS: u32 = 100;

fn create_quarantine_file(
    dir: &Path,
    from_seq: u64,
) -> Result<(std::fs::File, PathBuf), JournalError> {
    let qdir = dir.join("quarantine");
    crate::private::create_dir_all(&qdir).map_err(|e| JournalError::io(&qdir, e))?;
    let ms = layout::system_now_ms();
    for attempt in 0..MAX_QUARANTINE_NAME_ATTEMPTS {
        let name = if attempt == 0 {
            format!("{ms}-from-seq-{from_seq}.ndjson")
        } else {
            format!("{ms}-from-seq-{from_seq}-{attempt}.ndjson")
        };
        let path = qdir.join(name);
        match crate::private::file_options()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(JournalError::io(&path, e)),
        }
    }
    Err(JournalError::InvalidArgument {
        what: format!(
            "could not find a free quarantine file name in {}",
            qdir.display()
        ),
    })
}

/// Writes `entries` (`seq, why, raw bytes`) to a new quarantine file, synced with its
/// directory; returns its path.
pub(crate) fn write_quarantine<S: EventSchema>(
    layout: &Layout,
    from_seq: u64,
    entries: &[(u64, String, Vec<u8>)],
) -> Result<PathBuf, JournalError> {
    let (file, path) = create_quarantine_file(&layout.dir, from_seq)?;
    let mut w = std::io::BufWriter::new(file);
    for (seq, what, raw) in entries {
        let envelope = match decode_record::<S>(*seq, raw) {
            Ok(env) => crate::json::envelope_to_json(&env)?,
            Err(_) => serde_json::Value::Null,
        };
        let line = serde_json::json!({
            "seq": seq,
            "what": what,
            "raw_hex": crate::hex(raw),
            "envelope": envelope,
        });
        serde_json::to_writer(&mut w, &line).map_err(|e| JournalError::Encode {
            what: format!("quarantine line: {e}"),
        })?;
        w.write_all(b"\n").map_err(|e| JournalError::io(&path, e))?;
    }
    let f = w
        .into_inner()
        .map_err(|e| JournalError::io(&path, e.into_error()))?;
    f.sync_all().map_err(|e| JournalError::io(&path, e))?;
    layout::sync_dir(&layout.quarantine()).map_err(|e| JournalError::io(layout.quarantine(), e))?;
    layout::sync_dir(&layout.dir).map_err(|e| JournalError::io(&layout.dir, e))?;
    Ok(path)
}

/// Removes the live store's records from `from_seq` on, synced.
pub(crate) fn remove_from_store<St: Store>(
    layout: &Layout,
    store: &St,
    from_seq: u64,
) -> Result<u64, JournalError> {
    // At open this runs on a store just found damaged (a torn tail): sled may panic.
    let removed =
        catch_sled(|| store.remove_from(from_seq)).map_err(|e| e.into_journal(&layout.dir))?;
    catch_sled(|| store.sync()).map_err(|e| e.into_journal(&layout.dir))?;
    Ok(removed)
}

/// Whether `dir` takes a write and an fsync now (a small probe file, removed again).
pub(crate) fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".probe-{}", std::process::id()));
    let result = (|| {
        let mut f = crate::private::file_options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()?;
        std::fs::remove_file(&path)?;
        layout::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// After the live store was reopened (recovery from a refused write): quarantines the records
/// it holds past the last acknowledged seq (the failed batch wrote them; nobody was told they
/// are durable) and writes again, from the tail in memory, any acknowledged record it no
/// longer holds as it was. Returns `(quarantined, rewritten)`.
pub(crate) fn reconcile_store<S: EventSchema, St: Store>(
    shared: &Shared,
    store: &St,
) -> Result<(u64, u64), JournalError> {
    let layout = &shared.layout;
    let acked = shared.last_seq();
    let se = |e: crate::store::StoreError| e.into_journal(&layout.dir);
    // Every sled call here runs inside `catch_sled`: the store was just reopened on a log
    // that the failed write may have left torn, and sled panics on some damaged logs (the
    // writer thread would die with it; an error instead leaves the journal unavailable and
    // the recovery is retried).
    let extra = catch_sled(|| {
        let mut extra = Vec::new();
        for item in store.iter_from(acked + 1) {
            let (seq, value) = item?;
            extra.push((
                seq,
                "not acknowledged: the append that wrote it failed".to_string(),
                value.as_ref().to_vec(),
            ));
        }
        Ok(extra)
    })
    .map_err(se)?;
    if !extra.is_empty() {
        write_quarantine::<S>(layout, acked + 1, &extra)?;
        catch_sled(|| store.remove_from(acked + 1)).map_err(se)?;
    }
    let tail: Vec<(u64, std::sync::Arc<[u8]>)> = shared
        .read_view()
        .tail
        .iter()
        .map(|r| (r.seq, std::sync::Arc::clone(&r.value)))
        .collect();
    let mut rewritten = 0u64;
    for (seq, value) in tail {
        let held = catch_sled(|| store.get(seq)).map_err(se)?;
        if held.as_ref().map(|v| v.as_ref()) != Some(&value[..]) {
            catch_sled(|| store.put_raw(seq, &value)).map_err(se)?;
            rewritten += 1;
        }
    }
    catch_sled(|| store.sync()).map_err(se)?;
    if rewritten > 0 {
        tracing::error!(dir = %layout.dir.display(), rewritten, "acknowledged records were missing from the live store after the disk failed (the kernel dropped them); they were written again from memory");
    }
    Ok((extra.len() as u64, rewritten))
}

/// Truncation (see `Journal::truncate_from`): the witness is lowered first, the records go to
/// a quarantine file, then they are removed.
pub(crate) fn truncate<S: EventSchema, St: Store>(
    shared: &Shared,
    store: &St,
    from_seq: u64,
) -> Result<TruncateReport, JournalError> {
    if from_seq == 0 {
        return Err(JournalError::InvalidArgument {
            what: "truncate_from: seqs start at 1".into(),
        });
    }
    let layout = &shared.layout;
    let last = shared.last_seq();
    let mut report = TruncateReport {
        from_seq,
        last_seq: last,
        ..TruncateReport::default()
    };
    if from_seq > last {
        return Ok(report);
    }
    let _seal = shared.seal_lock.lock().unwrap_or_else(|p| p.into_inner());
    let manifest = shared.manifest();
    let wipe = truncation_wipes(&manifest, from_seq)?;
    let below = from_seq - 1;
    lower_witness(shared, &manifest, below)?;
    let entries = truncated_entries::<S>(shared, &manifest, from_seq)?;
    if !entries.is_empty() {
        report.quarantine_file = Some(write_quarantine::<S>(layout, from_seq, &entries)?);
    }
    report.removed_records = entries.len() as u64;
    if wipe {
        wipe_sealed(shared, &manifest, below)?;
    }
    remove_snapshots_from(layout, from_seq, &mut report)?;
    remove_from_store(layout, store, from_seq)?;
    shared.write_view().tail.truncate_from(from_seq);
    shared
        .last_seq
        .store(below, std::sync::atomic::Ordering::Release);
    report.last_seq = below;
    tracing::warn!(dir = %layout.dir.display(), from_seq, removed = report.removed_records, "journal truncated");
    Ok(report)
}

/// Whether truncating from `from_seq` removes everything (it reaches the first retained seq,
/// so the sealed segments go too); refuses a cut inside the sealed segments otherwise.
fn truncation_wipes(manifest: &Manifest, from_seq: u64) -> Result<bool, JournalError> {
    let wipe = from_seq <= manifest.first_retained();
    if !wipe && from_seq <= manifest.sealed_through() {
        return Err(JournalError::InvalidArgument {
            what: format!(
                "seqs up to {} are sealed into segments; truncate_from cuts only the unsealed tail (from seq {}) or everything",
                manifest.sealed_through(),
                manifest.sealed_through() + 1
            ),
        });
    }
    Ok(wipe)
}

/// Lowers the witness (when the journal has one) to `below`, the last seq a truncation keeps,
/// with the CRC of the record there (0 when none is retained).
fn lower_witness(shared: &Shared, manifest: &Manifest, below: u64) -> Result<(), JournalError> {
    let below_crc = if below == 0 || below < manifest.first_retained() {
        0
    } else {
        crate::read::record_bytes(shared, below)?
            .as_deref()
            .and_then(framed_crc)
            .unwrap_or(0)
    };
    if let Some(witness) = &shared.witness {
        witness
            .write_both(below, below_crc)
            .map_err(|e| JournalError::io(witness.path(), e))?;
    }
    Ok(())
}

/// The retained records from `from_seq` on, as quarantine entries (`seq, why, raw bytes`).
fn truncated_entries<S: EventSchema>(
    shared: &Shared,
    manifest: &Manifest,
    from_seq: u64,
) -> Result<Vec<(u64, String, Vec<u8>)>, JournalError> {
    let mut entries = Vec::new();
    for item in crate::read::Reader::<S>::new(shared, from_seq.max(manifest.first_retained())) {
        let envelope = item?;
        let raw = encode_record::<S>(&envelope).map_err(|e| JournalError::Encode {
            what: e.to_string(),
        })?;
        entries.push((
            envelope.seq,
            format!("removed by truncate_from({from_seq})"),
            raw,
        ));
    }
    Ok(entries)
}

/// Removes the snapshot files that cover `from_seq` or later, noting each in `report`.
fn remove_snapshots_from(
    layout: &Layout,
    from_seq: u64,
    report: &mut TruncateReport,
) -> Result<(), JournalError> {
    for covers in snapshot::list(layout).map_err(|e| JournalError::io(layout.snapshots(), e))? {
        if covers >= from_seq {
            let _ = std::fs::remove_file(layout.snapshot_file(covers));
            report.removed_snapshots.push(covers);
        }
    }
    Ok(())
}

fn wipe_sealed(shared: &Shared, manifest: &Manifest, below: u64) -> Result<(), JournalError> {
    let layout = &shared.layout;
    let next = Manifest {
        generation: manifest.generation + 1,
        expired_through: below,
        segments: Vec::new(),
    };
    manifest::write(&layout.manifest(), &next)
        .map_err(|e| JournalError::io(layout.manifest(), e))?;
    for s in &manifest.segments {
        let _ = std::fs::remove_file(layout.segment_file(s.first_seq, s.last_seq));
    }
    let _ = layout::sync_dir(&layout.segments());
    let mut view = shared.write_view();
    view.manifest = std::sync::Arc::new(next);
    Ok(())
}

/// What the salvage found readable.
struct Salvage {
    /// Readable records, by seq (from the live store and damaged segments).
    records: BTreeMap<u64, Vec<u8>>,
    /// Intact segments kept as files: `(meta, crc of its last record)`.
    intact: Vec<(SegmentMeta, u32)>,
    /// The seqs the manifest (or the witness) says the history starts at.
    first_seq: u64,
    /// The highest seq some witness proves.
    proven: u64,
    /// Valid snapshots to keep.
    snapshots: Vec<u64>,
    /// Problems met, for the report.
    problems: Vec<String>,
}

/// `journal repair` (see the module docs). Takes the directory lock.
pub fn repair<S: EventSchema>(
    config: JournalConfig,
    accept_loss: bool,
) -> Result<RepairReport, JournalError> {
    config.validate()?;
    let layout = Layout::new(&config.dir);
    let _lock = take_lock(&layout)?;
    crate::rebuild::finish(&layout)?;
    let (loaded, _) = crate::open::load_under_own_lock::<S>(&config, Depth::Full)?;
    if loaded.findings.is_empty() && !layout.is_legacy() && loaded.torn.is_empty() {
        return Ok(RepairReport {
            nothing_to_do: true,
            last_seq: loaded.held_last(),
            ..RepairReport::default()
        });
    }
    let mut problems: Vec<String> = loaded
        .findings
        .iter()
        .map(|f| format!("{}: {}", f.file.display(), f.what))
        .collect();
    let salvage = salvage::<S>(&layout, &config)?;
    problems.extend(salvage.problems.iter().cloned());
    let holes = holes::<S>(&salvage);
    if !holes.is_empty() && !accept_loss {
        return Err(JournalError::LossNotAccepted {
            dir: layout.dir.clone(),
            lost: holes.iter().map(|(a, b)| b - a + 1).sum(),
            ranges: ranges_text(&holes),
        });
    }
    let reason = format!(
        "journal repair --accept-loss: {}",
        problems
            .first()
            .cloned()
            .unwrap_or_else(|| "unreadable records".into())
    );
    let (moved_to, kept, last_seq) =
        write_repaired::<S>(&layout, &config, &salvage, &holes, &reason)?;
    retire_pre_open_copies(&layout);
    let report = RepairReport {
        nothing_to_do: false,
        problems,
        lost: holes,
        kept_records: kept,
        last_seq,
        moved_to: Some(moved_to),
    };
    tracing::warn!(dir = %layout.dir.display(), lost = ?report.lost, last_seq, "journal repaired");
    Ok(report)
}

fn ranges_text(holes: &[(u64, u64)]) -> String {
    let mut parts: Vec<String> = holes
        .iter()
        .take(8)
        .map(|(a, b)| format!("seqs {a}..={b}"))
        .collect();
    if holes.len() > 8 {
        parts.push(format!("and {} more range(s)", holes.len() - 8));
    }
    parts.join(", ")
}

/// The lost ranges: seqs between the first and the proven (or last readable) one that no
/// intact segment, readable record or existing loss marker accounts for.
fn holes<S: EventSchema>(salvage: &Salvage) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = salvage
        .intact
        .iter()
        .map(|(m, _)| (m.first_seq, m.last_seq))
        .collect();
    for (seq, value) in &salvage.records {
        let from = match decode_record::<S>(*seq, value) {
            Ok(env) => S::loss_range(&env.event)
                .filter(|(_, to)| to == seq)
                .map_or(*seq, |(from, _)| from),
            Err(_) => *seq,
        };
        covered.push((from, *seq));
    }
    covered.sort_unstable();
    let last = covered
        .iter()
        .map(|c| c.1)
        .max()
        .unwrap_or(0)
        .max(salvage.proven);
    let mut holes = Vec::new();
    let mut next = salvage.first_seq.max(1);
    for (from, to) in covered {
        if to < next {
            continue;
        }
        if from > next {
            holes.push((next, from - 1));
        }
        next = to + 1;
    }
    if next <= last {
        holes.push((next, last));
    }
    holes
}

fn salvage<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
) -> Result<Salvage, JournalError> {
    let legacy = layout.is_legacy();
    let witness = if legacy {
        Reading::Missing
    } else {
        witness_reading(layout)
    };
    let mut salvage = Salvage {
        records: BTreeMap::new(),
        intact: Vec::new(),
        first_seq: 1,
        proven: witness.vouch().map_or(0, |v| v.seq),
        snapshots: Vec::new(),
        problems: Vec::new(),
    };
    let manifest = match manifest::read(&layout.manifest()) {
        Ok(Ok(Some(m))) => Some(m),
        _ => None,
    };
    salvage.first_seq = match (&manifest, witness.vouch()) {
        (Some(m), _) => m.first_retained(),
        (None, Some(v)) => v.first_seq.max(1),
        (None, None) => 1,
    };
    if let Some(m) = &manifest {
        salvage.proven = salvage.proven.max(m.sealed_through());
    }
    let unlisted = salvage_segments::<S>(layout, manifest.as_ref(), &mut salvage);
    salvage_store::<S>(layout, config, &mut salvage)?;
    salvage_snapshots(layout, &mut salvage);
    merge_unlisted::<S>(unlisted, &mut salvage);
    Ok(salvage)
}

/// Salvages the segments the manifest lists (every file when it is unreadable); returns the
/// entries of the segment files it does not list.
fn salvage_segments<S: EventSchema>(
    layout: &Layout,
    manifest: Option<&Manifest>,
    salvage: &mut Salvage,
) -> Vec<(u64, Vec<u8>)> {
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(layout.segments())
        .map(|e| {
            e.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    on_disk.sort();
    let paths: Vec<PathBuf> = match manifest {
        Some(m) => m
            .segments
            .iter()
            .map(|s| layout.segment_file(s.first_seq, s.last_seq))
            .collect(),
        None => on_disk.clone(),
    };
    // Segment files the manifest does not list (see `merge_unlisted`), read now, merged last.
    let unlisted: Vec<(u64, Vec<u8>)> = on_disk
        .into_iter()
        .filter(|p| !paths.contains(p))
        .flat_map(|path| match SegmentFile::open(&path) {
            Ok(file) => file.salvage().0,
            Err(_) => salvage_raw(&path).0,
        })
        .collect();
    for path in paths {
        let whole = SegmentFile::open(&path)
            .ok()
            .filter(|f| f.check_full().is_ok());
        if let Some(file) = whole {
            let (entries, _) = file.salvage();
            let all_decode = entries
                .iter()
                .all(|(seq, v)| decode_record::<S>(*seq, v).is_ok());
            let listed = manifest.and_then(|m| {
                m.segments
                    .iter()
                    .find(|s| {
                        s.first_seq == file.header.first_seq && s.last_seq == file.header.last_seq
                    })
                    .cloned()
            });
            if all_decode {
                let last_crc = entries.last().and_then(|(_, v)| framed_crc(v)).unwrap_or(0);
                let meta = listed.unwrap_or_else(|| meta_of(&file, &entries));
                salvage.intact.push((meta, last_crc));
                continue;
            }
        }
        let (entries, problems) = match SegmentFile::open(&path) {
            Ok(file) => file.salvage(),
            Err(f) => {
                let (entries, mut more) = salvage_raw(&path);
                more.insert(0, f.what);
                (entries, more)
            }
        };
        for p in problems {
            salvage.problems.push(format!("{}: {p}", path.display()));
        }
        keep_decodable::<S>(entries, salvage, &path);
    }
    unlisted
}

fn meta_of(file: &SegmentFile, entries: &[(u64, Vec<u8>)]) -> SegmentMeta {
    SegmentMeta {
        first_seq: file.header.first_seq,
        last_seq: file.header.last_seq,
        records: file.header.records,
        bytes: file.len,
        first_ts_ms: file.header.first_ts_ms,
        last_ts_ms: file.header.last_ts_ms,
        body_crc: file.trailer.body_crc,
        pools: (entries.is_empty()).then(Vec::new),
    }
}

/// Adds the records of segment files the manifest does not list: a seal or a retention that a
/// crash interrupted, or a manifest gone back in time (it lists fewer segments than there
/// are, and the live store no longer holds their records: without this, repair called those
/// events lost although their files are intact). Only where nothing else holds the seq, and
/// only up to what a witness proves or another file holds: such a file is vouched for by
/// nothing (a wipe that a crash interrupted can leave one from a history since truncated), so
/// it fills holes, never overrides, and never extends the history. Seqs before the retained
/// range are dropped by the rebuild.
fn merge_unlisted<S: EventSchema>(unlisted: Vec<(u64, Vec<u8>)>, salvage: &mut Salvage) {
    let held = salvage.records.keys().next_back().copied().unwrap_or(0);
    let sealed = salvage
        .intact
        .iter()
        .map(|(m, _)| m.last_seq)
        .max()
        .unwrap_or(0);
    let reach = salvage.proven.max(held).max(sealed);
    for (seq, value) in unlisted {
        let in_intact = salvage
            .intact
            .iter()
            .any(|(m, _)| m.first_seq <= seq && seq <= m.last_seq);
        if seq > reach || in_intact || salvage.records.contains_key(&seq) {
            continue;
        }
        if decode_record::<S>(seq, &value).is_ok() {
            salvage.records.insert(seq, value);
        }
    }
}

fn keep_decodable<S: EventSchema>(
    entries: Vec<(u64, Vec<u8>)>,
    salvage: &mut Salvage,
    from: &Path,
) {
    for (seq, value) in entries {
        match decode_record::<S>(seq, &value) {
            Ok(_) => {
                salvage.records.insert(seq, value);
            }
            Err(RecordFault::Unsupported { .. }) => {
                salvage.problems.push(format!(
                    "{}: seq {seq} is of a newer format; kept",
                    from.display()
                ));
                salvage.records.insert(seq, value);
            }
            Err(RecordFault::Bad(what)) => salvage
                .problems
                .push(format!("{}: seq {seq}: {what}", from.display())),
        }
    }
}

/// Reads the live store from a copy (so that a refusal changes nothing): through sled's
/// iterator, then key by key past the point where it failed.
fn salvage_store<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
    salvage: &mut Salvage,
) -> Result<(), JournalError> {
    let store_dir = layout.store_dir();
    let db = store_dir.join("db");
    if !db.exists() {
        return Ok(());
    }
    let scratch = crate::journal::scratch_dir(config);
    let result = (|| {
        crate::open::copy_store(&store_dir, &scratch).map_err(|e| JournalError::io(&scratch, e))?;
        let store = match SledStore::open(&scratch, config.cache_capacity_bytes) {
            Ok(store) => store,
            Err(first) => {
                salvage.problems.push(format!(
                    "{}: sled cannot open it: {first}; retrying without its snapshot files",
                    db.display()
                ));
                for entry in std::fs::read_dir(&scratch)
                    .map_err(|e| JournalError::io(&scratch, e))?
                    .flatten()
                {
                    if entry.file_name().to_string_lossy().starts_with("snap.") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                match SledStore::open(&scratch, config.cache_capacity_bytes) {
                    Ok(store) => store,
                    Err(e) => {
                        salvage
                            .problems
                            .push(format!("{}: sled cannot open it at all: {e}", db.display()));
                        return Ok(());
                    }
                }
            }
        };
        let mut read = Vec::new();
        let iterated: Result<(), crate::store::StoreError> = catch_sled(|| {
            for item in store.iter_from(0) {
                let (seq, value) = item?;
                read.push((seq, value.as_ref().to_vec()));
            }
            Ok(())
        });
        if let Err(e) = iterated {
            salvage.problems.push(format!(
                "{}: reading stopped: {e}; reading key by key",
                db.display()
            ));
            let after = read.last().map_or(0, |r| r.0);
            let upper = salvage.proven.max(after) + config.max_batch_records as u64;
            for seq in after + 1..=upper {
                if let Ok(Some(value)) = catch_sled(|| store.get(seq)) {
                    read.push((seq, value.as_ref().to_vec()));
                }
            }
        }
        keep_decodable::<S>(read, salvage, &db);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    salvage_raw_store::<S>(layout, salvage);
    Ok(())
}

/// Marks the pre-open copies a repair has used (`.used`), so that the next refused open keeps
/// a fresh one.
fn retire_pre_open_copies(layout: &Layout) {
    for path in crate::open::pre_open_copies(layout) {
        let mut used = path.clone().into_os_string();
        used.push(".used");
        let _ = std::fs::rename(&path, used);
    }
}

/// The last resort for the live store: records found in the raw bytes of sled's `db` file (and
/// of the copies a refused open saved before sled's recovery rewrote it, see `open`), for
/// acknowledged seqs (at most the proven one) that nothing else holds. sled stores a record's
/// bytes as they are; each one found passes its CRC and decodes. The one case it can get
/// wrong: a seq whose acknowledged record is gone from the file while a record that a failed
/// write left under the same seq (quarantined by recovery, never acknowledged) is not; a seq
/// found with two different records is never used.
fn salvage_raw_store<S: EventSchema>(layout: &Layout, salvage: &mut Salvage) {
    let mut sources = vec![layout.store_dir().join("db")];
    sources.extend(crate::open::pre_open_copies(layout));
    for source in sources {
        let Ok(bytes) = std::fs::read(&source) else {
            continue;
        };
        // A seq found with two different records is left out: the log may still hold a
        // record that a failed write left behind and recovery quarantined, whose seq a later
        // acknowledged record took.
        let mut found: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
        for (seq, value) in crate::record::scan_records::<S>(&bytes) {
            let slot = found.entry(seq).or_insert_with(|| Some(value.clone()));
            if slot.as_ref().is_some_and(|held| *held != value) {
                *slot = None;
            }
        }
        let mut added = 0u64;
        for (seq, value) in found {
            match value {
                // Only seqs a witness proves were acknowledged: a record past them may be one
                // that a failed write left and recovery quarantined.
                Some(value)
                    if seq >= salvage.first_seq
                        && seq <= salvage.proven
                        && !salvage.records.contains_key(&seq) =>
                {
                    salvage.records.insert(seq, value);
                    added += 1;
                }
                None => salvage.problems.push(format!(
                    "{}: seq {seq} is there with two different records; neither is used",
                    source.display()
                )),
                _ => {}
            }
        }
        if added > 0 {
            salvage.problems.push(format!(
                "{}: {added} record(s) that sled could not read were found in its raw bytes (each passes its CRC)",
                source.display()
            ));
        }
    }
}

fn salvage_snapshots(layout: &Layout, salvage: &mut Salvage) {
    let Ok(seqs) = snapshot::list(layout) else {
        return;
    };
    for covers in seqs {
        let path = layout.snapshot_file(covers);
        match snapshot::read(&path) {
            Ok(Ok(file)) if file.covers_seq == covers => {
                let held_crc = salvage.records.get(&covers).and_then(|v| framed_crc(v));
                if held_crc.is_some_and(|crc| crc != file.record_crc) {
                    salvage.problems.push(format!(
                        "{}: taken after another record at seq {covers}; dropped",
                        path.display()
                    ));
                    continue;
                }
                salvage.proven = salvage.proven.max(covers);
                salvage.snapshots.push(covers);
            }
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                salvage
                    .problems
                    .push(format!("{}: damaged; dropped", path.display()));
            }
        }
    }
}

/// Writes the repaired journal: intact segments as they are, readable records, a loss marker
/// at the end of each hole; then installs it. Returns `(moved_to, records kept, last seq)`.
fn write_repaired<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
    salvage: &Salvage,
    holes: &[(u64, u64)],
    reason: &str,
) -> Result<(PathBuf, u64, u64), JournalError> {
    let mut builder = crate::rebuild::Builder::<S>::new(layout, config, salvage.first_seq)?;
    let mut markers: BTreeMap<u64, u64> = holes.iter().map(|(a, b)| (*b, *a)).collect();
    let mut intact = salvage.intact.iter().peekable();
    let mut records = salvage.records.iter().peekable();
    let now = config.clock.now_ms();
    loop {
        let next_intact = intact.peek().map(|(m, _)| m.first_seq);
        let next_record = records.peek().map(|(s, _)| **s);
        let next_marker = markers.keys().next().copied();
        let Some(next) = [next_intact, next_record, next_marker]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        if next <= builder.last_seq() {
            // Already covered (a record inside an intact segment, a duplicate).
            if next_record == Some(next) {
                records.next();
            } else if next_marker == Some(next) {
                markers.remove(&next);
            } else {
                intact.next();
            }
            continue;
        }
        if next_marker == Some(next) {
            let from = markers.remove(&next).unwrap_or(next);
            builder.push(next, loss_marker::<S>(from, next, reason, now)?)?;
        } else if next_intact == Some(next) {
            if let Some((meta, crc)) = intact.next() {
                builder.link_segment(meta, *crc)?;
            }
        } else if let Some((seq, value)) = records.next() {
            builder.push(*seq, value.clone())?;
        }
    }
    let last = builder.last_seq();
    link_kept_snapshots(layout, &mut builder, &salvage.snapshots, holes, last)?;
    let kept = builder.records;
    let moved = builder.finish()?;
    Ok((moved, kept, last))
}

/// The encoded loss marker event for the lost seqs `from..=to`, stored at `to` (at `now_ms`,
/// for `reason`); an error when the schema cannot record a loss.
fn loss_marker<S: EventSchema>(
    from: u64,
    to: u64,
    reason: &str,
    now_ms: u64,
) -> Result<Vec<u8>, JournalError> {
    let event =
        S::loss_accepted(from, to, reason).ok_or_else(|| JournalError::InvalidArgument {
            what: "this journal's event schema cannot record a loss".into(),
        })?;
    let envelope = Envelope {
        seq: to,
        ts_ms: now_ms,
        pool_id: None,
        cause: None,
        event,
    };
    encode_record::<S>(&envelope).map_err(|e| JournalError::Encode {
        what: e.to_string(),
    })
}

/// Links into the repaired journal the valid `snapshots` that cover at most `last` and were
/// not taken after a lost record (inside one of the `holes`).
fn link_kept_snapshots<S: EventSchema>(
    layout: &Layout,
    builder: &mut crate::rebuild::Builder<'_, S>,
    snapshots: &[u64],
    holes: &[(u64, u64)],
    last: u64,
) -> Result<(), JournalError> {
    for covers in snapshots {
        // A snapshot taken after a lost record stays behind with the replaced files: nothing
        // can vouch for it any more, and at a range's end the loss marker now holds its seq,
        // so every later open would refuse it as taken after another record.
        if holes
            .iter()
            .any(|(from, to)| (*from..=*to).contains(covers))
        {
            tracing::warn!(dir = %layout.dir.display(), covers_seq = covers, "snapshot taken after a lost event dropped by repair");
            continue;
        }
        if *covers <= last {
            builder.link_snapshot(*covers)?;
        }
    }
    Ok(())
}
