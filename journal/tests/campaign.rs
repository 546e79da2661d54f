//! The corruption campaign: faults injected where reality injects them, by changing the bytes
//! of the real files on disk (never through sled's API).
//!
//! One real journal directory is built (several sealed segments and their manifest, records
//! still in the live store, two snapshot files, the witness). Then, for every file in it, in a
//! fresh copy of the directory per trial: one byte is flipped at offsets spread over the whole
//! file, the file is truncated at several lengths, and it is deleted. Each trial runs
//! `verify_dir` and then `Journal::open` on a thread of its own, under a timeout, with panics
//! caught, and must end in one of these ways:
//!
//! - **unchanged**: open succeeds, `read_from(0)` yields exactly the original history and
//!   `last_seq` is the same (verify may still list a problem in a file start-up does not read,
//!   such as an older snapshot: counted apart);
//! - **refused**: open returns an error naming the way out, and verify lists a problem;
//! - **loud at read**: open succeeds (it checks only each segment's header and trailer, by
//!   design: see the crate docs), and reading stops with an error at the damage after yielding
//!   an exact prefix of the history; verify lists the problem.
//!
//! Anything else fails the test: a history that differs or is shorter without an error, a
//! verify that says ok while open refuses or a read fails, a verify that writes anything, a
//! refused open that changed a file (but sled's own files in `live/`: its recovery rewrites
//! the damaged end of its log as it opens, and it replaces its `snap.*` files; counted), an
//! open that succeeds and leaves behind something the next open reads differently, a panic
//! (also on the journal's own threads), a hang. On a deterministic sample of the refused
//! trials the way out is run (`repair_dir` without, then with `accept_loss`): open must then
//! succeed, verify be clean, and the history equal the original except for the ranges the
//! repair lists as lost (a `LostRecords` marker at the end of each); where every event is
//! still on disk (an older manifest beside all the segment files), it must lose none.
//!
//! Besides the byte faults: 4 KiB pages read back as zeros, whole directories deleted, and
//! files gone back in time (the manifest, the witness and sled's `db` as they were at an
//! earlier seq).
//!
//! The trials run on a memory file system when there is one (`/dev/shm`): about 11 s for some
//! 1100 trials in a debug build on 2 cores, about 25 s on a disk. The same faults are then
//! injected into a journal from before segments (no witness), and one fault that spans files
//! (the live store and the witness gone back in time behind a snapshot) is checked end to end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{draft, TestEvent, TestSchema};
use pool_journal::{
    encode_record, repair_dir, verify_dir, Envelope, Journal, JournalConfig, JournalError,
    RepairReport, SledStore, Store, VerifyReport,
};

/// Records per sealed segment: several segments from a few hundred events.
const SEGMENT_RECORDS: usize = 50;
/// Events appended to the base journal.
const EVENTS: u32 = 330;
/// The snapshots saved (covers_seq).
const SNAPSHOTS: [u64; 2] = [140, 290];
/// A trial that has not answered by then is a hang.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Every `REPAIR_EVERY`-th refused trial also runs the way out.
const REPAIR_EVERY: usize = 7;

type History = Vec<Envelope<TestEvent>>;

fn config(dir: &Path) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    // Read-only opens copy the live store beside the trial's directory.
    config.scratch_dir = dir.parent().map(|p| p.join("scratch"));
    config.segment_records = SEGMENT_RECORDS;
    // The test events carry times from 1970: retention by age would drop them all.
    config.retain_ms = u64::MAX;
    config
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    SledDb,
    SledConf,
    SledSnap,
    SledOther,
    Witness,
    Segment,
    Manifest,
    Snapshot,
    Lock,
    Directory,
    Other,
}

impl Kind {
    fn of(rel: &Path) -> Kind {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if parent.starts_with("live") {
            return match name.as_str() {
                "db" => Kind::SledDb,
                "conf" => Kind::SledConf,
                n if n.starts_with("snap.") => Kind::SledSnap,
                _ => Kind::SledOther,
            };
        }
        match (parent.as_str(), name.as_str()) {
            ("", "witness") => Kind::Witness,
            ("", "LOCK") => Kind::Lock,
            ("segments", "MANIFEST") => Kind::Manifest,
            ("segments", n) if n.ends_with(".seg") => Kind::Segment,
            ("snapshots", n) if n.ends_with(".snap") => Kind::Snapshot,
            _ => Kind::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::SledDb => "live/db",
            Kind::SledConf => "live/conf",
            Kind::SledSnap => "live/snap.*",
            Kind::SledOther => "live/(other)",
            Kind::Witness => "witness",
            Kind::Segment => "segments/*.seg",
            Kind::Manifest => "segments/MANIFEST",
            Kind::Snapshot => "snapshots/*.snap",
            Kind::Lock => "LOCK",
            Kind::Directory => "(a directory)",
            Kind::Other => "(other)",
        }
    }

    /// How many flip offsets to sample (evenly) in a file of this kind.
    fn flip_samples(self) -> usize {
        match self {
            Kind::SledDb => 96,
            Kind::SledSnap | Kind::SledOther => 48,
            Kind::Segment => 32,
            Kind::Manifest | Kind::Snapshot => 64,
            Kind::Witness => 16,
            Kind::SledConf | Kind::Lock | Kind::Directory | Kind::Other => 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// XOR the byte at `at` with `mask`.
    Flip {
        at: u64,
        mask: u8,
    },
    /// The 4 KiB page at `at` reads back as zeros (what some file systems show after a crash).
    ZeroPage(u64),
    Truncate(u64),
    /// sled's `db` truncated, and its `snap.*` files deleted (sled must then rebuild
    /// everything from the truncated log).
    TruncateWithoutSledSnapshot(u64),
    Delete,
    /// A whole directory deleted.
    DeleteDir,
    /// The file as it was earlier, when the journal's last seq was `at_seq` (a file gone back
    /// in time: a restore, a lost rename).
    Older {
        at_seq: u64,
        bytes: std::sync::Arc<Vec<u8>>,
    },
}

impl Fault {
    /// A flip at `at`: whole bytes and single bits, low and high.
    fn flip(at: u64) -> Fault {
        const MASKS: [u8; 4] = [0xFF, 0x01, 0x80, 0x20];
        Fault::Flip {
            at,
            mask: MASKS[(at % 4) as usize],
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Flip { at, mask } => write!(f, "byte {at} xor {mask:#04x}"),
            Fault::Truncate(len) => write!(f, "truncate to {len} bytes"),
            Fault::TruncateWithoutSledSnapshot(len) => {
                write!(f, "truncate to {len} bytes, live/snap.* deleted")
            }
            Fault::ZeroPage(at) => write!(f, "zero the page at {at}"),
            Fault::Delete => write!(f, "delete"),
            Fault::DeleteDir => write!(f, "delete the whole directory"),
            Fault::Older { at_seq, .. } => write!(f, "replace by its version at seq {at_seq}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Trial {
    file: PathBuf,
    kind: Kind,
    fault: Fault,
    /// Every event is still on disk somewhere: the way out must lose none.
    nothing_lost: bool,
}

impl std::fmt::Display for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.fault)
    }
}

/// What a history read gave: the records read, and the error that stopped it, if any.
#[derive(Debug)]
struct Read {
    last_seq: u64,
    records: History,
    error: Option<String>,
}

fn read_all(journal: &Journal<TestSchema>) -> Read {
    let mut records = Vec::new();
    let mut error = None;
    for item in journal.read_from(0) {
        match item {
            Ok(envelope) => records.push(envelope),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Read {
        last_seq: journal.last_seq(),
        records,
        error,
    }
}

#[derive(Debug)]
struct Refusal {
    text: String,
    /// `Some(loss)` for `Damaged`.
    loss: Option<bool>,
}

fn refusal(e: &JournalError) -> Refusal {
    Refusal {
        text: e.to_string(),
        loss: match e {
            JournalError::Damaged { loss, .. } => Some(*loss),
            _ => None,
        },
    }
}

fn open_and_read(dir: &Path) -> Result<Read, Refusal> {
    let (journal, _) = Journal::<TestSchema>::open(config(dir)).map_err(|e| refusal(&e))?;
    let read = read_all(&journal);
    drop(journal);
    Ok(read)
}

/// The way out, as run.
#[derive(Debug)]
struct Repaired {
    /// `repair_dir(config, false)` answered `LossNotAccepted`.
    needed_accept_loss: bool,
    report: Result<RepairReport, String>,
    reopened: Result<Read, String>,
    verify: Result<VerifyReport, String>,
}

fn run_way_out(dir: &Path) -> Repaired {
    let mut needed_accept_loss = false;
    let report = match repair_dir::<TestSchema>(config(dir), false) {
        Err(JournalError::LossNotAccepted { .. }) => {
            needed_accept_loss = true;
            repair_dir::<TestSchema>(config(dir), true)
        }
        other => other,
    }
    .map_err(|e| e.to_string());
    let reopened = open_and_read(dir).map_err(|r| r.text);
    let verify = verify_dir::<TestSchema>(&config(dir)).map_err(|e| e.to_string());
    Repaired {
        needed_accept_loss,
        report,
        reopened,
        verify,
    }
}

#[derive(Debug)]
struct Outcome {
    verify: Result<VerifyReport, String>,
    /// Files that verify created, changed or removed (it must write nothing).
    changed_by_verify: Vec<PathBuf>,
    open: Result<Read, Refusal>,
    /// Files that a refused open created, changed or removed.
    changed_by_refusal: Vec<PathBuf>,
    /// A second open after an open that succeeded (what the first one left behind).
    reopened: Option<Result<Read, Refusal>>,
    repaired: Option<Repaired>,
}

/// Panics seen by the hook, with the name of their thread (drained after every trial).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// The two campaigns run one after the other, so that a panic is charged to the right trial.
static CAMPAIGN: Mutex<()> = Mutex::new(());
static RECORDER: std::sync::Once = std::sync::Once::new();

fn install_panic_recorder() {
    RECORDER.call_once(install_panic_hook);
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        if let Ok(mut panics) = PANICS.lock() {
            panics.push((thread, format!("{what} at {location}")));
        }
        default(info);
    }));
}

fn take_panics() -> Vec<(String, String)> {
    PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files_under(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// `n` offsets spread evenly over `0..len` (every offset when `len <= n`).
fn spread(len: u64, n: usize) -> Vec<u64> {
    if len == 0 {
        return Vec::new();
    }
    if len <= n as u64 {
        return (0..len).collect();
    }
    let n = n as u64;
    (0..n).map(|i| i * (len - 1) / (n - 1)).collect()
}

/// A file system page.
const PAGE: u64 = 4096;

/// The faults tried on one file of `bytes`.
fn faults_for(kind: Kind, bytes: &[u8]) -> Vec<Fault> {
    let len = bytes.len() as u64;
    let mut flips: BTreeSet<u64> = spread(len, kind.flip_samples()).into_iter().collect();
    match kind {
        // The two slots byte by byte (the rest is padding).
        Kind::Witness => {
            let stride = pool_journal::witness::SLOT_STRIDE;
            let slot = pool_journal::witness::SLOT_BYTES as u64;
            flips.extend(
                (0..slot)
                    .chain(stride..stride + slot)
                    .filter(|at| *at < len),
            );
        }
        // sled's files are mostly zeros (preallocated, freed): also sample the bytes it wrote.
        Kind::SledDb | Kind::SledSnap => {
            let written: Vec<u64> = (0..len).filter(|i| bytes[*i as usize] != 0).collect();
            for i in spread(written.len() as u64, 48) {
                flips.insert(written[i as usize]);
            }
        }
        // The header, the first entry's framing and the trailer densely (every third byte,
        // so that every mask meets every field; segment.rs's unit tests flip every byte).
        Kind::Segment => {
            flips.extend((0..80).step_by(3).filter(|at| *at < len));
            flips.extend((len.saturating_sub(64)..len).step_by(3));
        }
        _ => {}
    }
    let mut faults: Vec<Fault> = flips.into_iter().map(Fault::flip).collect();
    let pages = len.div_ceil(PAGE);
    let zeroed = if matches!(kind, Kind::SledDb | Kind::SledSnap) {
        8
    } else {
        2
    };
    faults.extend(
        spread(pages, zeroed)
            .into_iter()
            .map(|p| Fault::ZeroPage(p * PAGE)),
    );
    let cuts: BTreeSet<u64> = [0, 1, len / 3, len / 2, len.saturating_sub(1)]
        .into_iter()
        .filter(|cut| *cut < len)
        .collect();
    if kind == Kind::SledDb {
        faults.extend(cuts.iter().copied().map(Fault::TruncateWithoutSledSnapshot));
    }
    faults.extend(cuts.into_iter().map(Fault::Truncate));
    faults.push(Fault::Delete);
    faults
}

fn inject(dir: &Path, trial: &Trial) {
    let path = dir.join(&trial.file);
    match trial.fault {
        Fault::Flip { at, mask } => {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at as usize] ^= mask;
            std::fs::write(&path, bytes).unwrap();
        }
        Fault::Truncate(len) => truncate(&path, len),
        Fault::TruncateWithoutSledSnapshot(len) => {
            truncate(&path, len);
            let live = path.parent().unwrap();
            for entry in std::fs::read_dir(live).unwrap() {
                let entry = entry.unwrap();
                if entry.file_name().to_string_lossy().starts_with("snap.") {
                    std::fs::remove_file(entry.path()).unwrap();
                }
            }
        }
        Fault::ZeroPage(at) => {
            let mut bytes = std::fs::read(&path).unwrap();
            let end = bytes.len().min((at + PAGE) as usize);
            bytes[at as usize..end].fill(0);
            std::fs::write(&path, bytes).unwrap();
        }
        Fault::Delete => std::fs::remove_file(&path).unwrap(),
        Fault::DeleteDir => std::fs::remove_dir_all(&path).unwrap(),
        Fault::Older { ref bytes, .. } => std::fs::write(&path, &bytes[..]).unwrap(),
    }
}

/// Every file under `dir` (but `LOCK`, which open creates) and its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = Vec::new();
    files_under(dir, dir, &mut files);
    files
        .into_iter()
        .filter(|f| f != Path::new("LOCK"))
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// The files that differ between `before` and `after` (changed, created or removed).
fn changed(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    let names: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect()
}

fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
    file.sync_all().unwrap();
}

/// Runs one trial on its own thread; `Err` when it panicked or hung.
fn run_trial(dir: PathBuf, repair_if_refused: bool) -> Result<Outcome, String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("campaign-trial".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let before = contents(&dir);
                let verify = verify_dir::<TestSchema>(&config(&dir)).map_err(|e| e.to_string());
                let changed_by_verify = changed(&before, &contents(&dir));
                let open = open_and_read(&dir);
                let changed_by_refusal = match &open {
                    Err(_) => changed(&before, &contents(&dir)),
                    Ok(_) => Vec::new(),
                };
                let unchanged = open.as_ref().is_ok_and(|read| read.error.is_none());
                let reopened = unchanged.then(|| open_and_read(&dir));
                let loud_at_read = open.as_ref().is_ok_and(|read| read.error.is_some());
                let repaired = (repair_if_refused && (open.is_err() || loud_at_read))
                    .then(|| run_way_out(&dir));
                Outcome {
                    verify,
                    changed_by_verify,
                    open,
                    changed_by_refusal,
                    reopened,
                    repaired,
                }
            }));
            let _ = tx.send(outcome.map_err(|payload| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into())
            }));
        })
        .map_err(|e| format!("cannot spawn: {e}"))?;
    match rx.recv_timeout(TRIAL_TIMEOUT) {
        Ok(Ok(outcome)) => {
            let _ = spawned.join();
            Ok(outcome)
        }
        Ok(Err(panic)) => Err(format!("PANIC: {panic}")),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "HANG: no answer within {}s (thread left behind)",
            TRIAL_TIMEOUT.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the trial thread died".into()),
    }
}

/// The history a repair that lost `lost` should leave: the original without the lost seqs,
/// a `LostRecords { from, to }` marker at each range's `to`.
fn check_repaired_history(
    original: &[Envelope<TestEvent>],
    lost: &[(u64, u64)],
    got: &[Envelope<TestEvent>],
) -> Result<(), String> {
    let in_lost = |seq: u64| lost.iter().any(|(a, b)| *a <= seq && seq <= *b);
    let mut expected: Vec<Result<&Envelope<TestEvent>, (u64, u64)>> = original
        .iter()
        .filter(|e| !in_lost(e.seq))
        .map(Ok)
        .collect();
    expected.extend(lost.iter().map(|r| Err(*r)));
    let seq_of = |x: &Result<&Envelope<TestEvent>, (u64, u64)>| match x {
        Ok(e) => e.seq,
        Err((_, to)) => *to,
    };
    expected.sort_by_key(seq_of);
    if expected.len() != got.len() {
        return Err(format!(
            "{} records after repair, expected {} (lost {lost:?})",
            got.len(),
            expected.len()
        ));
    }
    for (want, have) in expected.iter().zip(got) {
        match want {
            Ok(e) if *e == have => {}
            Err((from, to))
                if have.seq == *to
                    && matches!(&have.event, TestEvent::LostRecords { from: f, to: t, .. } if f == from && t == to) =>
                {}
            _ => {
                return Err(format!(
                    "at seq {}: got {have:?}, expected {}",
                    seq_of(want),
                    match want {
                        Ok(e) => format!("{e:?}"),
                        Err((a, b)) => format!("a LostRecords {{ from: {a}, to: {b} }} marker"),
                    }
                ))
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Row {
    trials: usize,
    unchanged: usize,
    unchanged_flagged: usize,
    refused: usize,
    loud_at_read: usize,
    repaired: usize,
    repaired_ok: usize,
    failed: usize,
}

/// Where the trials run: a memory file system when there is one (the campaign tests what the
/// journal reads back, not what survives power loss, and fsync there costs nothing), else the
/// temp directory.
fn campaign_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("journal-campaign-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// The base journal: its directory, its history, and some of its files as they were earlier.
struct Base {
    dir: PathBuf,
    history: History,
    /// `(file, bytes)` when the last seq was [`OLDER_AT_SEQ`].
    older: Vec<(PathBuf, Vec<u8>)>,
}

/// When the older versions of some files are taken: four segments sealed, the first snapshot
/// saved, the second not yet.
const OLDER_AT_SEQ: u32 = 220;

/// Waits (bounded) until the maintenance thread has sealed what there is to seal.
fn wait_sealed(journal: &Journal<TestSchema>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal.usage().tail_records >= SEGMENT_RECORDS as u64 {
        assert!(
            Instant::now() < deadline,
            "sealing did not catch up: {:?}",
            journal.usage()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Builds the base journal.
fn build_base(root: &Path) -> Base {
    let dir = root.join("base");
    let (journal, _) = Journal::<TestSchema>::open(config(&dir)).unwrap();
    let mut older = Vec::new();
    let mut i = 0u32;
    while i < EVENTS {
        // Single appends and small batches, so that sled's log holds both.
        let n = if i < 100 { 1 } else { 5.min(EVENTS - i) };
        let drafts = (i + 1..=i + n).map(draft).collect();
        journal.append_blocking(drafts).unwrap();
        i += n;
        for covers in SNAPSHOTS {
            if u64::from(i) == covers {
                journal
                    .save_snapshot(covers, 1, &format!("state after {covers}"))
                    .unwrap();
            }
        }
        if i == OLDER_AT_SEQ {
            // Sealing runs on the maintenance thread: wait for it (bounded), never a fixed
            // sleep. Between appends the writer is idle: the files are at rest.
            wait_sealed(&journal);
            for file in ["segments/MANIFEST", "witness", "live/db"] {
                older.push((PathBuf::from(file), std::fs::read(dir.join(file)).unwrap()));
            }
        }
    }
    wait_sealed(&journal);
    let history: History = journal.read_from(0).map(|r| r.unwrap()).collect();
    assert_eq!(history.len(), EVENTS as usize);
    let usage = journal.usage();
    assert!(usage.segments >= 5, "{usage:?}");
    assert!(usage.tail_records > 0, "{usage:?}");
    journal.close().unwrap();
    drop(journal);
    // The base itself is whole.
    let report = verify_dir::<TestSchema>(&config(&dir)).unwrap();
    assert!(report.is_ok(), "{report:?}");
    let read = open_and_read(&dir).unwrap();
    assert_eq!(read.records, history);
    assert!(read.error.is_none());
    Base {
        dir,
        history,
        older,
    }
}

#[test]
fn every_byte_flip_truncation_and_deletion_changes_nothing_or_is_refused_loudly() {
    let _serial = CAMPAIGN.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    install_panic_recorder();
    let root = campaign_root();
    let Base {
        dir: base,
        history,
        older,
    } = build_base(root.path());
    let last_seq = history.last().map_or(0, |e| e.seq);
    let built = started.elapsed();

    let mut files = Vec::new();
    files_under(&base, &base, &mut files);
    let mut trials = Vec::new();
    for file in &files {
        let kind = Kind::of(file);
        let bytes = std::fs::read(base.join(file)).unwrap();
        for fault in faults_for(kind, &bytes) {
            trials.push(Trial {
                file: file.clone(),
                kind,
                fault,
                nothing_lost: false,
            });
        }
    }
    for dir in ["live", "segments", "snapshots"] {
        trials.push(Trial {
            file: PathBuf::from(dir),
            kind: Kind::Directory,
            fault: Fault::DeleteDir,
            nothing_lost: false,
        });
    }
    for (file, bytes) in older {
        trials.push(Trial {
            kind: Kind::of(&file),
            // An older manifest lists fewer segments, but their files are all there.
            nothing_lost: file.ends_with("MANIFEST"),
            file,
            fault: Fault::Older {
                at_seq: u64::from(OLDER_AT_SEQ),
                bytes: std::sync::Arc::new(bytes),
            },
        });
    }
    let kinds: BTreeSet<Kind> = trials.iter().map(|t| t.kind).collect();
    for wanted in [
        Kind::SledDb,
        Kind::SledConf,
        Kind::Witness,
        Kind::Segment,
        Kind::Manifest,
        Kind::Snapshot,
    ] {
        assert!(
            kinds.contains(&wanted),
            "the base has no {} file: {files:?}",
            wanted.label()
        );
    }

    let mut rows: BTreeMap<Kind, Row> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut refused_seen = 0usize;
    let mut repaired_kinds: BTreeSet<Kind> = BTreeSet::new();
    let mut caught_sled_panics = 0usize;
    let mut sled_rewrote = 0usize;
    for (n, trial) in trials.iter().enumerate() {
        let row = rows.entry(trial.kind).or_default();
        row.trials += 1;
        let dir = root.path().join(format!("trial-{n}"));
        copy_dir(&base, &dir);
        inject(&dir, trial);
        let repair = refused_seen % REPAIR_EVERY == 0
            || !repaired_kinds.contains(&trial.kind)
            || matches!(trial.fault, Fault::Older { .. } | Fault::DeleteDir);
        let result = run_trial(dir.clone(), repair);
        // Panics on the journal's or sled's own threads are never caught by anyone.
        for (thread, what) in take_panics() {
            if thread == "campaign-trial" {
                caught_sled_panics += 1;
            } else {
                failures.push(format!("{trial}: panic on thread {thread}: {what}"));
                row.failed += 1;
            }
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(why) => {
                failures.push(format!("{trial}: {why}"));
                row.failed += 1;
                continue;
            }
        };
        let verify_flags = match &outcome.verify {
            Ok(report) => !report.is_ok(),
            Err(_) => true,
        };
        let mut problems: Vec<String> = Vec::new();
        if !outcome.changed_by_verify.is_empty() {
            problems.push(format!("verify changed {:?}", outcome.changed_by_verify));
        }
        // sled has no read-only mode: as it opens, its recovery rewrites the damaged end of
        // its log (zeros), and it writes and removes its own `snap.*` files (a missing store
        // it creates). Those are the only files a refused open may have changed, besides the
        // copy of `live/db` as it was before, which it keeps in quarantine for repair.
        let (sled, others): (Vec<&PathBuf>, Vec<&PathBuf>) = outcome
            .changed_by_refusal
            .iter()
            .filter(|f| {
                !(f.starts_with("quarantine")
                    && f.to_string_lossy().ends_with("-live-db-before-open"))
            })
            .partition(|f| f.starts_with("live"));
        if !others.is_empty() {
            problems.push(format!("a refused open changed {others:?}"));
        }
        if !sled.is_empty() {
            sled_rewrote += 1;
        }
        if let Some(reopened) = &outcome.reopened {
            match reopened {
                Ok(read) if read.error.is_none() && read.records == history => {}
                Ok(read) => problems.push(format!(
                    "the second open read {} records (error {:?}): the first left damage behind",
                    read.records.len(),
                    read.error
                )),
                Err(refused) => problems.push(format!(
                    "the first open succeeded, the second refuses: {}",
                    refused.text
                )),
            }
        }
        let way_out_expected = match &outcome.open {
            Ok(read) if read.error.is_none() => {
                if read.records == history && read.last_seq == last_seq {
                    row.unchanged += 1;
                    if verify_flags {
                        row.unchanged_flagged += 1;
                    }
                } else {
                    problems.push(format!(
                        "SILENTLY DIFFERENT: open succeeded with {} records up to seq {} (the original: {} up to {last_seq})",
                        read.records.len(),
                        read.last_seq,
                        history.len()
                    ));
                }
                false
            }
            Ok(read) => {
                let prefix = read.records.len() <= history.len()
                    && read.records[..] == history[..read.records.len()];
                if !prefix {
                    problems.push(format!(
                        "open succeeded and the read yielded records that differ before it failed: {:?}",
                        read.error
                    ));
                } else if !verify_flags {
                    problems.push(format!(
                        "verify says ok, but the read fails: {:?}",
                        read.error
                    ));
                } else {
                    row.loud_at_read += 1;
                }
                true
            }
            Err(refused) => {
                if !verify_flags {
                    problems.push(format!(
                        "verify says ok, but open refuses: {}",
                        refused.text
                    ));
                } else if !refused.text.contains("journal repair") {
                    problems.push(format!("the refusal names no way out: {}", refused.text));
                } else if refused.loss == Some(true) && !refused.text.contains("--accept-loss") {
                    problems.push(format!(
                        "a refusal with loss that does not name --accept-loss: {}",
                        refused.text
                    ));
                } else {
                    row.refused += 1;
                }
                true
            }
        };
        if way_out_expected {
            refused_seen += 1;
        }
        if let Some(repaired) = &outcome.repaired {
            row.repaired += 1;
            repaired_kinds.insert(trial.kind);
            let checked = (|| -> Result<(), String> {
                let report = repaired
                    .report
                    .as_ref()
                    .map_err(|e| format!("repair failed: {e}"))?;
                let read = repaired
                    .reopened
                    .as_ref()
                    .map_err(|e| format!("open after repair refused: {e}"))?;
                if let Some(e) = &read.error {
                    return Err(format!("read after repair failed: {e}"));
                }
                let verify = repaired
                    .verify
                    .as_ref()
                    .map_err(|e| format!("verify after repair failed: {e}"))?;
                if !verify.is_ok() {
                    return Err(format!(
                        "verify after repair lists problems: {:?}",
                        verify.problems
                    ));
                }
                if trial.nothing_lost && !report.lost.is_empty() {
                    return Err(format!(
                        "every event is still on disk, but the repair lost {:?}",
                        report.lost
                    ));
                }
                if repaired.needed_accept_loss == report.lost.is_empty() {
                    return Err(format!(
                        "repair without --accept-loss answered LossNotAccepted = {}, but the repair lost {:?}",
                        repaired.needed_accept_loss, report.lost
                    ));
                }
                check_repaired_history(&history, &report.lost, &read.records)
                    .map_err(|e| format!("history after repair: {e}"))
            })();
            match checked {
                Ok(()) => row.repaired_ok += 1,
                Err(why) => problems.push(format!("the way out does not work: {why}")),
            }
        }
        if !problems.is_empty() {
            row.failed += 1;
            failures.extend(problems.into_iter().map(|p| format!("{trial}: {p}")));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    let scratch = root.path().join("scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|e| e.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "read-only opens left scratch copies behind: {left:?}"
    );

    let elapsed = started.elapsed();
    eprintln!();
    eprintln!(
        "corruption campaign: {} files, {} trials; base built in {:.1}s, total {:.1}s; sled panics caught by the journal: {caught_sled_panics}",
        files.len(),
        trials.len(),
        built.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    eprintln!(
        "refused opens after which sled had rewritten some of its own files in live/: {sled_rewrote}"
    );
    eprintln!(
        "{:<18} {:>6} {:>9} {:>14} {:>7} {:>12} {:>8} {:>11} {:>6}",
        "file kind",
        "trials",
        "unchanged",
        "(verify flags)",
        "refused",
        "loud at read",
        "repaired",
        "repaired OK",
        "FAILED"
    );
    let mut total = Row::default();
    for (kind, row) in &rows {
        eprintln!(
            "{:<18} {:>6} {:>9} {:>14} {:>7} {:>12} {:>8} {:>11} {:>6}",
            kind.label(),
            row.trials,
            row.unchanged,
            row.unchanged_flagged,
            row.refused,
            row.loud_at_read,
            row.repaired,
            row.repaired_ok,
            row.failed
        );
        total.trials += row.trials;
        total.unchanged += row.unchanged;
        total.unchanged_flagged += row.unchanged_flagged;
        total.refused += row.refused;
        total.loud_at_read += row.loud_at_read;
        total.repaired += row.repaired;
        total.repaired_ok += row.repaired_ok;
        total.failed += row.failed;
    }
    eprintln!(
        "{:<18} {:>6} {:>9} {:>14} {:>7} {:>12} {:>8} {:>11} {:>6}",
        "total",
        total.trials,
        total.unchanged,
        total.unchanged_flagged,
        total.refused,
        total.loud_at_read,
        total.repaired,
        total.repaired_ok,
        total.failed
    );
    for kind in &kinds {
        if !matches!(kind, Kind::Lock) && rows[kind].refused + rows[kind].loud_at_read > 0 {
            assert!(
                repaired_kinds.contains(kind),
                "no refused trial of {} ran the way out",
                kind.label()
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} trials failed:\n{}",
        failures.len(),
        trials.len(),
        failures.join("\n")
    );
}

/// Files that went back in time together (a disk that lost its last writes, a partial restore):
/// the live store and the witness say seq 285, a snapshot proves seq 290 was acknowledged.
/// Open refuses with loss; the way out must see the same loss (repair holds the directory
/// lock itself and must not take it for a daemon writing beside it), and the repaired journal
/// must open (the snapshot taken after a lost record cannot vouch for anything any more).
#[test]
fn a_store_and_witness_behind_a_snapshot_are_a_loss_that_the_way_out_repairs() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("j");
    let older = root.path().join("older");
    let (journal, _) = Journal::<TestSchema>::open(config(&dir)).unwrap();
    journal
        .append_blocking((1..=285).map(draft).collect())
        .unwrap();
    drop(journal);
    copy_dir(&dir, &older);
    let (journal, _) = Journal::<TestSchema>::open(config(&dir)).unwrap();
    journal
        .append_blocking((286..=295).map(draft).collect())
        .unwrap();
    journal.save_snapshot(290, 1, &"state after 290").unwrap();
    let history: History = journal.read_from(0).map(|r| r.unwrap()).collect();
    drop(journal);
    std::fs::remove_dir_all(dir.join("live")).unwrap();
    copy_dir(&older.join("live"), &dir.join("live"));
    std::fs::copy(older.join("witness"), dir.join("witness")).unwrap();

    let refused = Journal::<TestSchema>::open(config(&dir)).unwrap_err();
    assert!(
        matches!(refused, JournalError::Damaged { loss: true, .. }),
        "{refused}"
    );
    let report = verify_dir::<TestSchema>(&config(&dir)).unwrap();
    assert!(report.loses_events(), "{report:?}");
    match repair_dir::<TestSchema>(config(&dir), false) {
        Err(JournalError::LossNotAccepted {
            lost: 5, ranges, ..
        }) => {
            assert!(ranges.contains("286..=290"), "{ranges}")
        }
        other => panic!("repair without --accept-loss: {other:?}"),
    }
    let report = repair_dir::<TestSchema>(config(&dir), true).unwrap();
    assert_eq!(report.lost, vec![(286, 290)]);
    let read = open_and_read(&dir).unwrap_or_else(|r| panic!("open after repair: {}", r.text));
    assert!(read.error.is_none(), "{:?}", read.error);
    check_repaired_history(&history[..290], &report.lost, &read.records).unwrap();
    assert!(verify_dir::<TestSchema>(&config(&dir)).unwrap().is_ok());
}

/// A journal from before segments (sled's files in the directory itself, no witness): the
/// same faults in its files. Its migration reads damaged sled files, so it must never panic
/// or hang, must refuse naming the way out, and the way out must work. Without a witness, a
/// store that sled silently shortened cannot be told from a shorter journal: such a trial
/// must still read back an exact prefix of the history (counted apart).
#[test]
fn a_damaged_journal_from_before_segments_never_panics_and_the_way_out_works() {
    let _serial = CAMPAIGN.lock().unwrap_or_else(|p| p.into_inner());
    install_panic_recorder();
    let root = campaign_root();
    let base = root.path().join("legacy");
    let history: History = (1..=150u32)
        .map(|i| draft(i).into_envelope(u64::from(i)))
        .collect();
    {
        let store = SledStore::open(&base, 8 * 1024 * 1024).unwrap();
        for chunk in history.chunks(10) {
            for envelope in chunk {
                let bytes = encode_record::<TestSchema>(envelope).unwrap();
                store.put_raw(envelope.seq, &bytes).unwrap();
            }
            store.sync().unwrap();
        }
    }
    let mut files = Vec::new();
    files_under(&base, &base, &mut files);
    let mut trials = Vec::new();
    for file in &files {
        let kind = match file.to_string_lossy().as_ref() {
            "db" => Kind::SledDb,
            "conf" => Kind::SledConf,
            n if n.starts_with("snap.") => Kind::SledSnap,
            _ => Kind::SledOther,
        };
        let bytes = std::fs::read(base.join(file)).unwrap();
        let mut faults = faults_for(kind, &bytes);
        // A quarter of the main campaign's sampling: the same code reads these files.
        faults.retain(|f| !matches!(f, Fault::Flip { at, .. } if at % 4 != 0 && bytes.len() > 256));
        trials.extend(faults.into_iter().map(|fault| Trial {
            file: file.clone(),
            kind,
            fault,
            nothing_lost: false,
        }));
    }
    let (mut whole, mut shorter, mut refused, mut repaired) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (n, trial) in trials.iter().enumerate() {
        let dir = root.path().join(format!("legacy-trial-{n}"));
        copy_dir(&base, &dir);
        inject(&dir, trial);
        let (tx, rx) = mpsc::channel();
        let trial_dir = dir.clone();
        std::thread::Builder::new()
            .name("campaign-trial".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(|| {
                    let open = open_and_read(&trial_dir);
                    let way_out = open.is_err().then(|| run_way_out(&trial_dir));
                    (open, way_out)
                });
                let _ = tx.send(outcome.map_err(|_| "PANIC".to_string()));
            })
            .unwrap();
        let outcome = match rx.recv_timeout(TRIAL_TIMEOUT) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(why)) => {
                failures.push(format!("{trial}: {why}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("{trial}: HANG or the trial thread died"));
                continue;
            }
        };
        for (thread, what) in take_panics() {
            if thread != "campaign-trial" {
                failures.push(format!("{trial}: panic on thread {thread}: {what}"));
            }
        }
        match outcome {
            (Ok(read), _) => {
                let prefix = read.error.is_none()
                    && read.records.len() <= history.len()
                    && read.records[..] == history[..read.records.len()];
                if !prefix {
                    failures.push(format!(
                        "{trial}: migrated to {} records (error {:?}), not a prefix of the history",
                        read.records.len(),
                        read.error
                    ));
                } else if read.records.len() == history.len() {
                    whole += 1;
                } else {
                    shorter += 1;
                }
            }
            (Err(refusal), way_out) => {
                refused += 1;
                if !refusal.text.contains("journal repair") {
                    failures.push(format!(
                        "{trial}: the refusal names no way out: {}",
                        refusal.text
                    ));
                }
                let Some(way_out) = way_out else { continue };
                let checked = (|| -> Result<(), String> {
                    let report = way_out
                        .report
                        .as_ref()
                        .map_err(|e| format!("repair: {e}"))?;
                    let read = way_out
                        .reopened
                        .as_ref()
                        .map_err(|e| format!("open after repair: {e}"))?;
                    let verify = way_out
                        .verify
                        .as_ref()
                        .map_err(|e| format!("verify after repair: {e}"))?;
                    if read.error.is_some() || !verify.is_ok() {
                        return Err(format!(
                            "after repair: read {:?}, verify {:?}",
                            read.error, verify.problems
                        ));
                    }
                    // What sled could still read, without a witness to prove more: a prefix.
                    let kept: Vec<_> = read
                        .records
                        .iter()
                        .filter(|e| !matches!(e.event, TestEvent::LostRecords { .. }))
                        .collect();
                    if !kept
                        .iter()
                        .all(|e| history.get(e.seq as usize - 1) == Some(*e))
                    {
                        return Err(format!(
                            "after repair the records differ from the history (lost {:?})",
                            report.lost
                        ));
                    }
                    Ok(())
                })();
                match checked {
                    Ok(()) => repaired += 1,
                    Err(why) => failures.push(format!("{trial}: the way out does not work: {why}")),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "legacy campaign: {} trials: {whole} migrated whole, {shorter} migrated shorter (sled dropped its log's end; no witness to tell), {refused} refused ({repaired} repaired)",
        trials.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} legacy trials failed:\n{}",
        failures.len(),
        trials.len(),
        failures.join("\n")
    );
}
