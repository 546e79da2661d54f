//! Opening a journal: for writing (the daemon, import, repair's final check) and read-only
//! (tools).
//!
//! Owns: the order of open. Writable: lock; finish a rebuild that a crash interrupted
//! (`rebuild::finish`); migrate a journal from before segments; create a new journal's files
//! (manifest, then witness); read the witness; open the live store; load and check
//! (`load`); quarantine a torn unacknowledged tail; clean stray files; start the writer and
//! the maintenance thread. Read-only: read the witness, copy the live store to the scratch
//! directory, open the copy, load and check, delete the copy (retried when a running daemon
//! changed the store during the copy).
//!
//! **Must never:** write anything in a read-only open, or hand out a journal that failed a
//! check.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::config::{JournalConfig, RecoveryMode};
use crate::error::WriteErrorKind;
use crate::journal::{
    scratch_dir, take_lock, witness_reading, writable_witness, Journal, READ_ONLY_ATTEMPTS,
};
use crate::layout::{self, Layout};
use crate::load::{load, Depth, LoadOptions, Loaded};
use crate::manifest::{self, Manifest};
use crate::record::{framed_crc, EventSchema};
use crate::report::{OpenReport, QuarantinedRecord};
use crate::store::SledStore;
use crate::witness::Reading;
use crate::writer::Writer;
use crate::JournalError;

/// The suffix of the copies of sled's `db` file that a refused open keeps in `quarantine/`:
/// sled's own recovery rewrites the damaged end of its log as it opens, so the bytes as they
/// were before are saved for repair's raw scan (`repair::salvage_raw_store`).
pub(crate) const PRE_OPEN_COPY_SUFFIX: &str = "-live-db-before-open";
/// A `db` file larger than this is not copied.
const PRE_OPEN_COPY_MAX_BYTES: u64 = 256 << 20;

/// What a writable open hands the writer.
pub(crate) struct WriterParts<S: EventSchema> {
    pub(crate) store: Option<SledStore>,
    pub(crate) rx: mpsc::Receiver<crate::writer::Command<S::Event>>,
    pub(crate) tx: mpsc::Sender<crate::writer::Command<S::Event>>,
    pub(crate) removal_from: u64,
    pub(crate) next_seq: u64,
}

impl<S: EventSchema> WriterParts<S> {
    pub(crate) fn into_writer(
        self,
        shared: std::sync::Arc<crate::shared::Shared>,
    ) -> (
        Writer<S, SledStore>,
        mpsc::Sender<crate::writer::Command<S::Event>>,
    ) {
        let live = shared.layout.live();
        let cache = shared.config.cache_capacity_bytes;
        let writer = Writer {
            max_batch_records: shared.config.max_batch_records,
            shared,
            store: self.store,
            opener: Box::new(move || SledStore::open(&live, cache)),
            next_seq: self.next_seq,
            rx: self.rx,
            removal_from: self.removal_from,
            _schema: std::marker::PhantomData,
        };
        (writer, self.tx)
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |e| JournalError::io(path, e)
}

/// Creates the files of a new journal (nothing acknowledged yet): the directories and an
/// empty manifest. The witness is created once the live store opened.
fn create_new(layout: &Layout) -> Result<(), JournalError> {
    layout::create_dir_synced(&layout.segments()).map_err(io(&layout.segments()))?;
    layout::create_dir_synced(&layout.snapshots()).map_err(io(&layout.snapshots()))?;
    manifest::write(&layout.manifest(), &Manifest::default()).map_err(io(&layout.manifest()))
}

fn is_new(layout: &Layout) -> bool {
    let live_empty = std::fs::read_dir(layout.live()).map_or(true, |mut e| e.next().is_none());
    !layout.witness().exists() && !layout.manifest().exists() && live_empty
}

/// Before the store opens: the configuration checked, the directory's lock taken, a rebuild
/// left half-done finished, a journal from before segments migrated, a new one created.
fn prepare<S: EventSchema>(
    config: &JournalConfig,
) -> Result<(Layout, std::fs::File, OpenReport), JournalError> {
    config.validate()?;
    if S::CURRENT_VERSION == 0 {
        return Err(JournalError::InvalidArgument {
            what: "EventSchema::CURRENT_VERSION must be >= 1".into(),
        });
    }
    let layout = Layout::new(&config.dir);
    let lock = take_lock(&layout)?;
    let mut report = OpenReport::default();
    crate::rebuild::finish(&layout)?;
    if layout.is_legacy() {
        crate::rebuild::migrate::<S>(&layout, config)?;
        report.migrated = true;
    }
    if is_new(&layout) {
        create_new(&layout)?;
    }
    Ok((layout, lock, report))
}

/// Opens the store and loads the directory, its modes tightened; a load that refuses keeps
/// the copy of sled's `db` taken before the open when the live store is what it found damaged.
fn open_checked<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
) -> Result<Opened, JournalError> {
    let witness = witness_reading(layout);
    let before_open = PreOpenCopy::take(layout);
    let opened = open_store::<S>(layout, config, witness);
    // After sled created its files (which follow the umask): every file owner-only.
    if let Err(e) = crate::private::tighten_tree(&layout.dir) {
        tracing::warn!(dir = %layout.dir.display(), error = %e, "cannot tighten the journal's modes; check its owner");
    }
    let (store, loaded, unavailable) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            before_open.discard();
            return Err(e);
        }
    };
    if let Some(refusal) = loaded.refusal(layout) {
        if loaded
            .findings
            .iter()
            .any(|f| f.file.starts_with(layout.live()))
        {
            before_open.keep(layout);
        } else {
            before_open.discard();
        }
        return Err(refusal);
    }
    before_open.discard();
    Ok((store, loaded, unavailable))
}

/// See the module docs.
pub(crate) fn open_writable<S: EventSchema>(
    config: JournalConfig,
) -> Result<(Journal<S>, OpenReport), JournalError> {
    let (layout, lock, mut report) = prepare::<S>(&config)?;
    let (store, mut loaded, unavailable) = open_checked::<S>(&layout, &config)?;
    if !loaded.torn.is_empty() {
        quarantine_torn::<S>(&layout, &config, store.as_ref(), &mut loaded, &mut report)?;
    }
    for stray in &loaded.stray_files {
        let _ = std::fs::remove_file(stray);
    }
    let held = loaded.held_last();
    let held_crc = held_record_crc(&layout, &loaded, held);
    let first = loaded.manifest.first_retained();
    let reading = loaded.witness.clone().unwrap_or(Reading::Missing);
    let witness = writable_witness(&layout, &reading, held, held_crc, first)?;
    if let Err(e) = crate::snapshot::prune(&layout, first) {
        tracing::warn!(dir = %layout.dir.display(), error = %e, "cannot prune old snapshots");
    }
    report.last_seq = held;
    report.segments = loaded.manifest.segments.len();
    let (tx, rx) = mpsc::channel(config.queue_depth);
    let parts = WriterParts::<S> {
        removal_from: loaded
            .sealed_in_store
            .first()
            .copied()
            .unwrap_or(loaded.manifest.sealed_through() + 1),
        next_seq: held + 1,
        store,
        rx,
        tx,
    };
    let journal = Journal::from_loaded(config, loaded, Some(witness), Some(parts), Some(lock));
    if let Some((kind, error)) = unavailable {
        tracing::error!(dir = %layout.dir.display(), error = %error, "the journal opened unavailable: its disk refuses writes ({}); reads work, appends are refused until it recovers", kind.remedy());
        journal.shared().set_unavailable(kind, error.clone());
        report.unavailable = Some(error);
    }
    Ok((journal, report))
}

/// The copies of sled's `db` that refused opens kept in `quarantine/`
/// ([`PRE_OPEN_COPY_SUFFIX`]), oldest first.
pub(crate) fn pre_open_copies(layout: &Layout) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(layout.quarantine()) else {
        return Vec::new();
    };
    let mut copies: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(PRE_OPEN_COPY_SUFFIX))
        .collect();
    copies.sort();
    copies
}

/// The live store's `db` as it was before sled opened it (see [`PRE_OPEN_COPY_SUFFIX`]).
enum PreOpenCopy {
    /// A copy made by the kernel (`copy_file_range`) in `quarantine/`: no process memory.
    File(PathBuf),
    /// Where no such file can be written (a full or read-only disk): the bytes in memory.
    Memory(Vec<u8>),
    None,
}

/// The name of the pending copy in `quarantine/` (replaced by each open, removed after one
/// that succeeds).
const PRE_OPEN_COPY_PENDING: &str = ".live-db-before-open.pending";

impl PreOpenCopy {
    /// Copies `<live>/db` before sled's recovery may rewrite it; best effort.
    fn take(layout: &Layout) -> PreOpenCopy {
        let db = layout.live().join("db");
        let Ok(meta) = std::fs::metadata(&db) else {
            return PreOpenCopy::None;
        };
        if meta.len() > PRE_OPEN_COPY_MAX_BYTES {
            return PreOpenCopy::None;
        }
        let pending = layout.quarantine().join(PRE_OPEN_COPY_PENDING);
        let copied = crate::private::create_dir_all(&layout.quarantine())
            .and_then(|()| std::fs::copy(&db, &pending))
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::Permissions::from_mode(crate::private::FILE_MODE);
                std::fs::set_permissions(&pending, mode)
            });
        match copied {
            Ok(_) => PreOpenCopy::File(pending),
            Err(_) => {
                let _ = std::fs::remove_file(&pending);
                std::fs::read(&db).map_or(PreOpenCopy::None, PreOpenCopy::Memory)
            }
        }
    }

    /// The open succeeded: the copy is not needed.
    fn discard(self) {
        if let PreOpenCopy::File(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Keeps the copy in `quarantine/` for repair's raw scan, unless one is kept already
    /// (only the first refused open's copy is worth keeping: later ones see the file after
    /// sled's recovery rewrote it, and a daemon restarted in a loop must not fill the disk).
    /// Best effort: a failure is logged.
    fn keep(self, layout: &Layout) {
        if !pre_open_copies(layout).is_empty() {
            return self.discard();
        }
        let path = layout
            .quarantine()
            .join(format!("{}{PRE_OPEN_COPY_SUFFIX}", layout::system_now_ms()));
        let saved = match self {
            PreOpenCopy::None => return,
            PreOpenCopy::Memory(bytes) => crate::private::create_dir_all(&layout.quarantine())
                .and_then(|()| layout::write_atomic(&path, &bytes)),
            PreOpenCopy::File(pending) => std::fs::File::open(&pending)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&pending, &path))
                .and_then(|()| layout::sync_dir(&layout.quarantine())),
        };
        if let Err(e) = saved {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep a copy of the damaged live store for repair");
        }
    }
}

type Opened = (Option<SledStore>, Loaded, Option<(WriteErrorKind, String)>);

/// Opens the live store and loads; on a disk that refuses writes, loads from a copy instead
/// and reports the journal unavailable.
fn open_store<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
    witness: Reading,
) -> Result<Opened, JournalError> {
    match SledStore::open(&layout.live(), config.cache_capacity_bytes) {
        Ok(store) => {
            let loaded = load::<S, SledStore>(layout, witness, Some(&store), LoadOptions::START)?;
            Ok((Some(store), loaded, None))
        }
        Err(e) if e.kind() != WriteErrorKind::Other => {
            let (loaded, _) = load_under_own_lock::<S>(config, Depth::Start)?;
            Ok((
                None,
                loaded,
                Some((e.kind(), format!("{}: {e}", layout.live().display()))),
            ))
        }
        Err(e) => {
            // Still check what the witnesses prove, so that the refusal says whether
            // acknowledged events are gone (and so names the way out that fits).
            let mut loaded = load::<S, SledStore>(layout, witness, None, LoadOptions::START)?;
            loaded.findings.insert(
                0,
                crate::load::Finding {
                    file: layout.live().join("db"),
                    seq: None,
                    what: format!("the live store (sled) cannot be opened: {e}"),
                    loss: false,
                },
            );
            Ok((None, loaded, None))
        }
    }
}

fn held_record_crc(layout: &Layout, loaded: &Loaded, seq: u64) -> u32 {
    if seq == 0 {
        return 0;
    }
    crate::load::held_record_crc(layout, &loaded.manifest, &loaded.tail, seq)
        .ok()
        .flatten()
        .unwrap_or(0)
}

fn quarantine_torn<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
    store: Option<&SledStore>,
    loaded: &mut Loaded,
    report: &mut OpenReport,
) -> Result<(), JournalError> {
    let first = loaded.torn.first().map(|t| t.0).unwrap_or(0);
    if config.recovery == RecoveryMode::AbsoluteConsistency {
        let what = loaded.torn.first().map(|t| t.1.clone()).unwrap_or_default();
        return Err(JournalError::Damaged {
            dir: layout.dir.clone(),
            file: layout.live().join("db"),
            what: format!("seq {first}: {what} (an unacknowledged tail; RecoveryMode::AbsoluteConsistency refuses to drop it)"),
            more: loaded.torn.len() - 1,
            loss: false,
        });
    }
    let Some(store) = store else { return Ok(()) };
    let entries: Vec<(u64, String, Vec<u8>)> = std::mem::take(&mut loaded.torn);
    let path = crate::repair::write_quarantine::<S>(layout, first, &entries)?;
    crate::repair::remove_from_store(layout, store, first)?;
    for (seq, what, _) in &entries {
        tracing::warn!(seq, what = %what, dir = %layout.dir.display(), "unacknowledged journal tail record quarantined");
    }
    report.quarantined = entries
        .into_iter()
        .map(|(seq, what, _)| QuarantinedRecord { seq, what })
        .collect();
    report.quarantine_file = Some(path);
    Ok(())
}

/// Loads without writing anything (see the module docs); beside a daemon when some process
/// holds the directory lock.
pub(crate) fn load_read_only<S: EventSchema>(
    config: &JournalConfig,
    depth: Depth,
) -> Result<(Loaded, OpenReport), JournalError> {
    let beside = layout::is_locked_by_other(&Layout::new(&config.dir));
    load_without_writing::<S>(config, depth, beside)
}

/// Like [`load_read_only`], for a caller that holds the directory lock itself (repair, and a
/// writable open whose disk refuses writes). `is_locked_by_other` sees that very lock (flock
/// locks conflict between two descriptors of one process), which would take the caller for a
/// daemon writing beside it: every damaged load retried `READ_ONLY_ATTEMPTS` times for
/// nothing, and, worse, a snapshot covering more than the journal holds excused as a daemon's
/// newer write instead of reported as a loss (so repair answered "nothing to do" to a journal
/// that open refuses).
pub(crate) fn load_under_own_lock<S: EventSchema>(
    config: &JournalConfig,
    depth: Depth,
) -> Result<(Loaded, OpenReport), JournalError> {
    load_without_writing::<S>(config, depth, false)
}

fn load_without_writing<S: EventSchema>(
    config: &JournalConfig,
    depth: Depth,
    beside: bool,
) -> Result<(Loaded, OpenReport), JournalError> {
    config.validate()?;
    let layout = Layout::new(&config.dir);
    let legacy = layout.is_legacy();
    let options = LoadOptions {
        depth,
        legacy,
        concurrent: beside,
    };
    let attempts = if beside { READ_ONLY_ATTEMPTS } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let witness = if legacy {
            Reading::Missing
        } else {
            witness_reading(&layout)
        };
        let loaded = load_copy::<S>(&layout, config, witness, options)?;
        if loaded.findings.is_empty() || attempt >= attempts {
            let report = OpenReport {
                last_seq: loaded.held_last(),
                segments: loaded.manifest.segments.len(),
                beside_daemon: beside,
                legacy,
                ..OpenReport::default()
            };
            return Ok((loaded, report));
        }
        std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
    }
}

fn load_copy<S: EventSchema>(
    layout: &Layout,
    config: &JournalConfig,
    witness: Reading,
    options: LoadOptions,
) -> Result<Loaded, JournalError> {
    let store_dir = layout.store_dir();
    if !store_dir.join("db").exists() {
        return load::<S, SledStore>(layout, witness, None, options);
    }
    let scratch = scratch_dir(config);
    let result = (|| {
        copy_store(&store_dir, &scratch).map_err(|e| JournalError::Io {
            path: scratch.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "cannot copy the live store {} to read it: {e} (read-only tools copy it to \
                     the temp directory; set TMPDIR to a directory with space)",
                    store_dir.display()
                ),
            ),
        })?;
        match SledStore::open(&scratch, config.cache_capacity_bytes) {
            Ok(store) => load::<S, SledStore>(layout, witness, Some(&store), options),
            Err(e) => {
                let mut loaded = load::<S, SledStore>(layout, witness, None, options)?;
                loaded.findings.insert(
                    0,
                    crate::load::Finding {
                        file: store_dir.join("db"),
                        seq: None,
                        what: format!("the live store (sled) cannot be opened: {e}"),
                        loss: false,
                    },
                );
                Ok(loaded)
            }
        }
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Copies sled's files (`conf`, `db`, `snap.*`, `blobs/`) of `from` into `to`.
pub(crate) fn copy_store(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        let is_sled =
            name_s == "conf" || name_s == "db" || name_s.starts_with("snap.") || name_s == "blobs";
        if !is_sled {
            continue;
        }
        if entry.file_type()?.is_dir() {
            let target = to.join(&name);
            std::fs::create_dir_all(&target)?;
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    std::fs::copy(inner.path(), target.join(inner.file_name()))?;
                }
            }
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// The record CRC a new witness starts from, when one must be created for a loaded journal.
#[allow(dead_code)]
pub(crate) fn crc_of(value: &[u8]) -> u32 {
    framed_crc(value).unwrap_or(0)
}
