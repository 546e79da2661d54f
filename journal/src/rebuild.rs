//! Rebuilding a journal directory's files from records: the migration of a journal from
//! before segments, and repair.
//!
//! Owns: the staging directory `<dir>/.rebuild/`, where a complete new set of files
//! (`segments/` with its manifest, `snapshots/`, `live/`, `witness`) is written and synced, then
//! marked `DONE`, then installed: each file it replaces is moved into
//! `<dir>/quarantine/<unix_ms>-replaced/` (never deleted) and the new one renamed into place.
//! Open finishes an installation that a crash interrupted, and deletes a staging directory
//! that never reached `DONE`.
//!
//! **Must never:** replace a file before the whole new set is durable, or delete the files it
//! replaces.

use std::path::{Path, PathBuf};

use crate::config::JournalConfig;
use crate::layout::{self, Layout};
use crate::manifest::{self, Manifest};
use crate::record::{decode_record, framed_crc, EventSchema, RecordFault};
use crate::segment::{self, SealRecord, SegmentMeta};
use crate::store::{catch_sled, SledStore, Store};
use crate::witness::{Vouch, Witness};
use crate::JournalError;

/// The staging directory's name.
pub const STAGING: &str = ".rebuild";
const DONE: &str = "DONE";
/// What a staging directory installs, in this order.
const INSTALLED: [&str; 4] = ["segments", "snapshots", "live", "witness"];

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |e| JournalError::io(path, e)
}

fn is_legacy_file(name: &str) -> bool {
    name == "conf" || name == "db" || name == "blobs" || name.starts_with("snap.")
}

/// Installs a completed staging directory, or deletes one that never completed. Returns where
/// the replaced files went, if anything was installed.
pub fn finish(layout: &Layout) -> Result<Option<PathBuf>, JournalError> {
    let staging = layout.dir.join(STAGING);
    if !staging.exists() {
        return Ok(None);
    }
    if !staging.join(DONE).exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        layout::sync_dir(&layout.dir).map_err(io(&layout.dir))?;
        return Ok(None);
    }
    install(layout, &staging).map(Some)
}

fn install(layout: &Layout, staging: &Path) -> Result<PathBuf, JournalError> {
    let old = layout
        .quarantine()
        .join(format!("{}-replaced", layout::system_now_ms()));
    std::fs::create_dir_all(&old).map_err(io(&old))?;
    for name in INSTALLED {
        let src = staging.join(name);
        if !src.exists() {
            continue;
        }
        let dst = layout.dir.join(name);
        if dst.exists() {
            std::fs::rename(&dst, old.join(name)).map_err(io(&dst))?;
        }
        std::fs::rename(&src, &dst).map_err(io(&dst))?;
    }
    let entries = std::fs::read_dir(&layout.dir).map_err(io(&layout.dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_legacy_file(&name) {
            std::fs::rename(entry.path(), old.join(&name)).map_err(io(&entry.path()))?;
        }
    }
    layout::sync_dir(&layout.dir).map_err(io(&layout.dir))?;
    layout::sync_dir(&old).map_err(io(&old))?;
    std::fs::remove_dir_all(staging).map_err(io(staging))?;
    layout::sync_dir(&layout.dir).map_err(io(&layout.dir))?;
    Ok(old)
}

/// Writes a new set of journal files into the staging directory, record by record.
pub struct Builder<'a, S: EventSchema> {
    layout: &'a Layout,
    config: &'a JournalConfig,
    staging: PathBuf,
    manifest: Manifest,
    /// Records not yet in a segment: `(seq, value, pool_id, ts_ms)`.
    buf: Vec<(u64, Vec<u8>, Option<String>, u64)>,
    last: Option<(u64, u32)>,
    /// Records written.
    pub records: u64,
    _schema: std::marker::PhantomData<S>,
}

impl<'a, S: EventSchema> Builder<'a, S> {
    /// Starts a rebuild whose history begins at `first_seq` (older seqs expired).
    pub fn new(
        layout: &'a Layout,
        config: &'a JournalConfig,
        first_seq: u64,
    ) -> Result<Self, JournalError> {
        let staging = layout.dir.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        for dir in [staging.join("segments"), staging.join("snapshots")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Builder {
            layout,
            config,
            staging,
            manifest: Manifest {
                generation: 0,
                expired_through: first_seq.saturating_sub(1),
                segments: Vec::new(),
            },
            buf: Vec::new(),
            last: None,
            records: 0,
            _schema: std::marker::PhantomData,
        })
    }

    /// The last seq pushed (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.last.map_or(self.manifest.sealed_through(), |l| l.0)
    }

    /// Adds one record (seqs increasing; it must decode).
    pub fn push(&mut self, seq: u64, value: Vec<u8>) -> Result<(), JournalError> {
        let envelope = decode_record::<S>(seq, &value).map_err(|f| match f {
            RecordFault::Unsupported { version, current } => JournalError::UnsupportedVersion {
                seq,
                version,
                current,
            },
            RecordFault::Bad(what) => JournalError::Corruption {
                seq,
                what,
                dir: self.layout.dir.clone(),
            },
        })?;
        self.last = Some((seq, framed_crc(&value).unwrap_or(0)));
        self.records += 1;
        self.buf
            .push((seq, value, envelope.pool_id, envelope.ts_ms));
        if self.buf.len() >= self.config.segment_records {
            self.flush_segment()?;
        }
        Ok(())
    }

    /// Adds an intact sealed segment as it is (a hard link; a copy across file systems).
    pub fn link_segment(&mut self, meta: &SegmentMeta, last_crc: u32) -> Result<(), JournalError> {
        self.flush_segment()?;
        let from = self.layout.segment_file(meta.first_seq, meta.last_seq);
        let name = from
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let to = self.staging.join("segments").join(name);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io(&to))?;
        }
        if meta.first_seq != self.manifest.sealed_through() + 1 {
            return Err(JournalError::InvalidArgument {
                what: format!(
                    "segment {}..={} does not follow seq {}",
                    meta.first_seq,
                    meta.last_seq,
                    self.manifest.sealed_through()
                ),
            });
        }
        self.manifest.segments.push(meta.clone());
        self.last = Some((meta.last_seq, last_crc));
        self.records += meta.records;
        Ok(())
    }

    fn flush_segment(&mut self) -> Result<(), JournalError> {
        let Some(last) = self.buf.last().map(|r| r.0) else {
            return Ok(());
        };
        let first = self.manifest.sealed_through() + 1;
        let path = self
            .staging
            .join("segments")
            .join(format!("{first:020}-{last:020}.seg"));
        let seal: Vec<SealRecord<'_>> = self
            .buf
            .iter()
            .map(|(seq, value, pool, ts)| SealRecord {
                seq: *seq,
                value,
                pool_id: pool.as_deref(),
                ts_ms: *ts,
            })
            .collect();
        let meta = segment::write(&path, first, &seal).map_err(io(&path))?;
        self.manifest.segments.push(meta);
        self.buf.clear();
        Ok(())
    }

    /// Adds a snapshot file (checked by the caller) as it is.
    pub fn link_snapshot(&mut self, covers_seq: u64) -> Result<(), JournalError> {
        let from = self.layout.snapshot_file(covers_seq);
        let name = from
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let to = self.staging.join("snapshots").join(name);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io(&to))?;
        }
        Ok(())
    }

    /// Writes a snapshot file from bytes (the migration of a legacy snapshot).
    pub fn write_snapshot(
        &mut self,
        covers_seq: u64,
        record_crc: u32,
        state_version: u8,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        let path = self
            .staging
            .join("snapshots")
            .join(format!("{covers_seq:020}.snap"));
        let bytes = crate::snapshot::encode(covers_seq, record_crc, state_version, payload);
        std::fs::write(&path, bytes).map_err(io(&path))
    }

    /// Writes the live store (the records not in a segment), the manifest and the witness,
    /// syncs everything, marks the staging directory `DONE`, and installs it. Returns where
    /// the replaced files went.
    pub fn finish(self) -> Result<PathBuf, JournalError> {
        let live = self.staging.join("live");
        {
            let store = SledStore::open(&live, self.config.cache_capacity_bytes)
                .map_err(|e| e.into_journal(&self.layout.dir))?;
            for chunk in self.buf.chunks(self.config.max_batch_records.max(1)) {
                let pairs: Vec<(u64, Vec<u8>)> = chunk.iter().map(|r| (r.0, r.1.clone())).collect();
                store
                    .write_batch(&pairs, &[])
                    .map_err(|e| e.into_journal(&self.layout.dir))?;
            }
            store.sync().map_err(|e| e.into_journal(&self.layout.dir))?;
        }
        let manifest_path = self.staging.join("segments").join("MANIFEST");
        manifest::write(&manifest_path, &self.manifest).map_err(io(&manifest_path))?;
        for dir in [
            self.staging.join("segments"),
            self.staging.join("snapshots"),
        ] {
            sync_all_files(&dir)?;
        }
        let (seq, crc) = self.last.unwrap_or((self.manifest.sealed_through(), 0));
        let witness_path = self.staging.join("witness");
        Witness::create(
            &witness_path,
            Vouch {
                seq,
                record_crc: crc,
                first_seq: self.manifest.first_retained(),
                counter: 0,
            },
        )
        .map_err(io(&witness_path))?;
        let done = self.staging.join(DONE);
        std::fs::write(&done, b"complete\n").map_err(io(&done))?;
        std::fs::File::open(&done)
            .and_then(|f| f.sync_all())
            .map_err(io(&done))?;
        layout::sync_dir(&self.staging).map_err(io(&self.staging))?;
        layout::sync_dir(&self.layout.dir).map_err(io(&self.layout.dir))?;
        install(self.layout, &self.staging)
    }
}

fn sync_all_files(dir: &Path) -> Result<(), JournalError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        std::fs::File::open(entry.path())
            .and_then(|f| f.sync_all())
            .map_err(io(&entry.path()))?;
    }
    layout::sync_dir(dir).map_err(io(dir))
}

/// Migrates a journal from before segments (sled's files in `<dir>`, trees `records`,
/// `pool_index`, `snapshots`) to today's layout: every record into segments and the live
/// store, its snapshots into files, a witness of its last record. The old files go to
/// `quarantine/<unix_ms>-replaced/`. A damaged record refuses (repair handles it).
pub fn migrate<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
) -> Result<(), JournalError> {
    let store = SledStore::open(&layout.dir, config.cache_capacity_bytes).map_err(|e| {
        JournalError::Damaged {
            dir: layout.dir.clone(),
            file: layout.dir.join("db"),
            what: format!("the journal (from before segments) cannot be opened to migrate it: {e}"),
            more: 0,
            loss: false,
        }
    })?;
    let mut builder = Builder::<S>::new(layout, config, 1)?;
    let mut crcs = std::collections::BTreeMap::new();
    // The old store is read inside `catch_sled`: these are the damaged files a journal from
    // before segments may bring, and sled panics on some of them. A fault of the records
    // themselves comes out as the inner error.
    let read = catch_sled(|| {
        let mut expected = 1u64;
        for item in store.iter_from(0) {
            let (seq, value) = item?;
            let damaged = |what: String| JournalError::Damaged {
                dir: layout.dir.clone(),
                file: layout.dir.join("db"),
                what: format!("seq {seq}: {what} (found while migrating the journal to segments)"),
                more: 0,
                loss: true,
            };
            if seq != expected {
                return Ok(Err(damaged(format!(
                    "seqs {expected}..={} are missing",
                    seq.saturating_sub(1)
                ))));
            }
            if let Err(RecordFault::Bad(what)) = decode_record::<S>(seq, value.as_ref()) {
                return Ok(Err(damaged(what)));
            }
            crcs.insert(seq, framed_crc(value.as_ref()).unwrap_or(0));
            if let Err(e) = builder.push(seq, value.to_vec()) {
                return Ok(Err(e));
            }
            expected = seq + 1;
        }
        Ok(Ok(store.legacy_snapshots()?))
    });
    let snapshots = read.map_err(|e| JournalError::Damaged {
        dir: layout.dir.clone(),
        file: layout.dir.join("db"),
        what: format!("the journal (from before segments) cannot be read to migrate it: {e}"),
        more: 0,
        loss: false,
    })??;
    drop(store);
    for (covers, value) in snapshots {
        let (Some(crc), Some(version)) = (crcs.get(&covers), value.first()) else {
            continue;
        };
        builder.write_snapshot(covers, *crc, *version, value.as_ref())?;
    }
    let records = builder.records;
    let moved = builder.finish()?;
    tracing::info!(
        dir = %layout.dir.display(),
        records,
        old_files = %moved.display(),
        "journal migrated to segments (the old files are kept in quarantine; delete them once the daemon runs well)"
    );
    Ok(())
}
