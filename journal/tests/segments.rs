//! Sealed segments, retention, read-only opens, import of a loss marker and truncation, on
//! real directories. Conditions reached by background threads (sealing) are waited for by
//! polling `usage()` under a deadline, never proven by a fixed sleep.

mod common;
#[path = "../../tests/support/mount.rs"]
mod mount;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{draft, TestEvent, TestSchema};
use pool_journal::layout::Layout;
use pool_journal::{
    repair_dir, verify_dir, Envelope, Journal, JournalClock, JournalConfig, JournalError,
};

type History = Vec<Envelope<TestEvent>>;

/// How long a background condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn config(dir: &Path, segment_records: usize) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    config.segment_records = segment_records;
    // The test events carry times from 1970: retention by age would drop them all.
    config.retain_ms = u64::MAX;
    config
}

fn open(config: &JournalConfig) -> Journal<TestSchema> {
    Journal::<TestSchema>::open(config.clone()).expect("open").0
}

/// Polls `done` until it holds; fails naming `what` after [`DEADLINE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until sealing has caught up: `segments` sealed and fewer than `segment_records`
/// records left in the tail.
fn wait_sealed(journal: &Journal<TestSchema>, segments: u64, segment_records: usize) {
    wait_until(&format!("{segments} sealed segments"), || {
        let usage = journal.usage();
        usage.segments == segments && usage.tail_records < segment_records as u64
    });
}

/// Appends drafts `from..=to`, one call each; returns what was acknowledged.
fn append(journal: &Journal<TestSchema>, from: u32, to: u32) -> History {
    (from..=to)
        .flat_map(|i| journal.append_blocking(vec![draft(i)]).expect("append"))
        .collect()
}

fn read_all(journal: &Journal<TestSchema>, seq: u64) -> History {
    journal.read_from(seq).map(|r| r.expect("read")).collect()
}

fn pool_of(envelope: &Envelope<TestEvent>) -> Option<&str> {
    envelope.pool_id.as_deref()
}

/// Every `read_from` and a spread of `read_pool` calls answer what `truth` says.
fn check_reads(journal: &Journal<TestSchema>, truth: &[Envelope<TestEvent>], when: &str) {
    let last = truth.last().map_or(0, |e| e.seq);
    assert_eq!(journal.last_seq(), last, "{when}: last_seq");
    assert_eq!(read_all(journal, 0), truth, "{when}: read_from(0)");
    for seq in 1..=last + 2 {
        let want: Vec<_> = truth.iter().filter(|e| e.seq >= seq).cloned().collect();
        assert_eq!(read_all(journal, seq), want, "{when}: read_from({seq})");
    }
    let sinces = [0, 1, 2, 7, 19, 20, 21, 33, 40, 41, last, last + 1];
    for pool in ["p0", "p1", "nobody"] {
        for since in sinces {
            for limit in [1, 3, 7, 1000] {
                let want: Vec<_> = truth
                    .iter()
                    .filter(|e| pool_of(e) == Some(pool) && e.seq >= since)
                    .take(limit)
                    .cloned()
                    .collect();
                let got = journal.read_pool(pool, since, limit).expect("read_pool");
                assert_eq!(got, want, "{when}: read_pool({pool}, {since}, {limit})");
            }
        }
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Layout::new(dir).segments())
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn seg_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.seg")
}

#[test]
fn appends_seal_into_segments_and_every_read_is_the_same_before_after_and_after_reopen() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), PER_SEGMENT);
    let journal = open(&config);

    // Below the threshold nothing is sealed: every read comes from the tail.
    let mut truth = append(&journal, 1, PER_SEGMENT as u32 - 1);
    assert_eq!(journal.usage().segments, 0);
    check_reads(&journal, &truth, "all in the tail");

    // Past it, the maintenance thread seals by itself, 20 records a segment.
    truth.extend(append(&journal, PER_SEGMENT as u32, 100));
    wait_sealed(&journal, 5, PER_SEGMENT);
    let usage = journal.usage();
    assert_eq!(
        (usage.tail_records, usage.first_seq, usage.last_seq),
        (0, 1, 100)
    );
    assert_eq!(
        segment_files(tmp.path()),
        (0..5)
            .map(|i| seg_name(i * 20 + 1, i * 20 + 20))
            .collect::<Vec<_>>()
    );
    check_reads(&journal, &truth, "all sealed");

    // Reads that cross from the segments into the tail.
    truth.extend(append(&journal, 101, 107));
    assert_eq!(journal.usage().tail_records, 7);
    check_reads(&journal, &truth, "sealed and tail");
    assert!(journal.verify().is_ok(), "{:?}", journal.verify());
    drop(journal);

    let journal = open(&config);
    assert_eq!(journal.usage().segments, 5);
    check_reads(&journal, &truth, "after reopen");
    // And appends continue after the sealed history.
    let next = journal.append_blocking(vec![draft(108)]).unwrap();
    assert_eq!(next[0].seq, 108);
    drop(journal);
    assert!(verify_dir::<TestSchema>(&config).unwrap().is_ok());
}

#[test]
fn retention_by_size_drops_the_oldest_segments_but_never_what_the_newest_snapshot_needs() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path(), PER_SEGMENT);
    config.retain_bytes = 1;
    let journal = open(&config);
    let truth = append(&journal, 1, 100);
    wait_sealed(&journal, 5, PER_SEGMENT);
    // No snapshot: start-up would replay from seq 1, so nothing may go.
    journal.apply_retention_now().unwrap();
    assert_eq!(journal.first_seq(), 1);

    journal.save_snapshot(10, 1, &"after 10").unwrap();
    journal.save_snapshot(45, 1, &"after 45").unwrap();
    journal.apply_retention_now().unwrap();
    // Segments 1..=20 and 21..=40 are before the newest snapshot; 41..=60 holds seqs after it.
    assert_eq!(journal.first_seq(), 41);
    assert_eq!(journal.usage().expired_through, 40);
    assert_eq!(
        segment_files(tmp.path()),
        vec![seg_name(41, 60), seg_name(61, 80), seg_name(81, 100)]
    );
    match journal.read_from(1).next() {
        Some(Err(JournalError::HistoryExpired {
            requested: 1,
            earliest: 41,
        })) => {}
        other => panic!("read_from(1) after retention: {other:?}"),
    }
    assert!(matches!(
        journal.read_from(40).next(),
        Some(Err(JournalError::HistoryExpired { earliest: 41, .. }))
    ));
    assert_eq!(read_all(&journal, 0), truth[40..].to_vec());
    assert_eq!(read_all(&journal, 41), truth[40..].to_vec());
    assert!(matches!(
        journal.read_pool("p1", 5, 10),
        Err(JournalError::HistoryExpired {
            requested: 5,
            earliest: 41
        })
    ));
    let p1: Vec<_> = truth[40..]
        .iter()
        .filter(|e| pool_of(e) == Some("p1"))
        .cloned()
        .collect();
    assert_eq!(journal.read_pool("p1", 0, 1000).unwrap(), p1);
    // The snapshot at 10 can start no replay any more: pruned. The one at 45 stays.
    assert_eq!(journal.snapshot_seqs(), vec![45]);
    assert_eq!(journal.time_travel_from(), 45);

    // A snapshot at the last seq: everything but the newest segment may go.
    journal.save_snapshot(100, 1, &"after 100").unwrap();
    journal.apply_retention_now().unwrap();
    assert_eq!(journal.first_seq(), 81);
    assert_eq!(segment_files(tmp.path()), vec![seg_name(81, 100)]);
    assert_eq!(journal.snapshot_seqs(), vec![100]);
    assert_eq!(read_all(&journal, 0), truth[80..].to_vec());
    drop(journal);

    // All of it holds after a reopen, and the files check out.
    let journal = open(&config);
    assert_eq!(journal.first_seq(), 81);
    assert!(matches!(
        journal.read_from(80).next(),
        Some(Err(JournalError::HistoryExpired { earliest: 81, .. }))
    ));
    assert_eq!(read_all(&journal, 0), truth[80..].to_vec());
    assert_eq!(
        journal.append_blocking(vec![draft(101)]).unwrap()[0].seq,
        101
    );
    drop(journal);
    let report = verify_dir::<TestSchema>(&config).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.first_seq, report.last_seq), (81, 101));
}

#[test]
fn retention_by_age_follows_the_injected_clock() {
    const PER_SEGMENT: usize = 20;
    const RETAIN_MS: u64 = 1_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(0));
    let mut config = config(tmp.path(), PER_SEGMENT);
    config.retain_bytes = u64::MAX;
    config.retain_ms = RETAIN_MS;
    let clock = Arc::clone(&now);
    config.clock = JournalClock(Arc::new(move || clock.load(Ordering::SeqCst)));
    let journal = open(&config);
    // draft(i) is stamped ts_ms = 1000 + i.
    let truth = append(&journal, 1, 100);
    wait_sealed(&journal, 5, PER_SEGMENT);
    journal.save_snapshot(100, 1, &"after 100").unwrap();

    // At the clock's start nothing is older than RETAIN_MS.
    journal.apply_retention_now().unwrap();
    assert_eq!(journal.first_seq(), 1);

    // Now the records up to seq 40 are older than RETAIN_MS; seq 41 on are not.
    now.store(1000 + 40 + RETAIN_MS + 1, Ordering::SeqCst);
    journal.apply_retention_now().unwrap();
    assert_eq!(journal.first_seq(), 41);
    assert_eq!(read_all(&journal, 0), truth[40..].to_vec());

    // Far in the future everything is old, but the newest segment always stays.
    now.store(u64::MAX / 2, Ordering::SeqCst);
    journal.apply_retention_now().unwrap();
    assert_eq!(journal.first_seq(), 81);
    assert_eq!(segment_files(tmp.path()), vec![seg_name(81, 100)]);
    assert_eq!(read_all(&journal, 0), truth[80..].to_vec());
}

#[test]
fn a_read_only_open_beside_the_writer_sees_the_same_history() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), PER_SEGMENT);
    let writer = open(&config);
    let truth = append(&writer, 1, 50);
    wait_sealed(&writer, 2, PER_SEGMENT);
    writer.save_snapshot(30, 1, &"after 30").unwrap();

    // The writer holds the lock: the read-only open copies the live store and reads the copy.
    let (reader, report) = Journal::<TestSchema>::open_read_only(config.clone()).unwrap();
    assert!(report.beside_daemon, "{report:?}");
    assert!(reader.is_read_only());
    check_reads(&reader, &truth, "read-only beside the writer");
    assert_eq!(reader.snapshot_seqs(), vec![30]);
    assert!(matches!(
        reader.append_blocking(vec![draft(51)]),
        Err(JournalError::ReadOnly { .. })
    ));

    // The writer goes on; a new read-only open sees that too, the first one what it opened.
    let mut truth2 = truth.clone();
    truth2.extend(append(&writer, 51, 60));
    let (later, _) = Journal::<TestSchema>::open_read_only(config.clone()).unwrap();
    check_reads(&later, &truth2, "a later read-only open");
    assert_eq!(read_all(&reader, 0), truth);
    // verify beside the writer: clean.
    let verified = verify_dir::<TestSchema>(&config).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    drop(writer);
}

#[test]
fn a_read_only_open_works_on_a_read_only_file_system() {
    const PER_SEGMENT: usize = 20;
    let Some(fs) = mount::Tmpfs::mount("32m") else {
        return;
    };
    let dir = fs.path().join("journal");
    let config = config(&dir, PER_SEGMENT);
    let journal = open(&config);
    let truth = append(&journal, 1, 50);
    wait_sealed(&journal, 2, PER_SEGMENT);
    journal.save_snapshot(40, 1, &"after 40").unwrap();
    drop(journal);
    fs.remount(true);
    // Root writes through permissions, not through a read-only mount.
    assert!(std::fs::write(dir.join("probe"), b"x").is_err());

    let (reader, report) = Journal::<TestSchema>::open_read_only(config.clone()).unwrap();
    assert!(!report.beside_daemon);
    check_reads(&reader, &truth, "read-only file system");
    assert_eq!(reader.snapshot_seqs(), vec![40]);
    let verified = verify_dir::<TestSchema>(&config).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    drop(reader);
}

#[test]
fn an_export_holding_a_loss_marker_imports_as_the_same_history() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    let config = config(&dir, PER_SEGMENT);
    let journal = open(&config);
    append(&journal, 1, 60);
    wait_sealed(&journal, 3, PER_SEGMENT);
    // The next commit removes the sealed records from the live store: after it, a segment
    // file is their only copy.
    append(&journal, 61, 65);
    drop(journal);
    std::fs::remove_file(Layout::new(&dir).segment_file(21, 40)).unwrap();
    // Their bytes may linger in sled's file (removed keys): damage those too, so that the
    // segment's records are really gone (repair would find them in the raw bytes otherwise).
    for seq in 21..=40 {
        common::corrupt_in_file(&dir, seq);
    }
    let refused = Journal::<TestSchema>::open(config.clone()).unwrap_err();
    assert!(
        matches!(refused, JournalError::Damaged { loss: true, .. }),
        "{refused}"
    );
    let report = repair_dir::<TestSchema>(config.clone(), true).unwrap();
    assert_eq!(report.lost, vec![(21, 40)]);

    let journal = open(&config);
    let history = read_all(&journal, 0);
    assert_eq!(history.len(), 65 - 20 + 1);
    assert!(matches!(
        &history[20].event,
        TestEvent::LostRecords {
            from: 21,
            to: 40,
            ..
        }
    ));
    assert_eq!(history[20].seq, 40);
    let mut exported = Vec::new();
    assert_eq!(journal.export(&mut exported).unwrap(), history.len() as u64);

    let other = tmp.path().join("imported");
    let mut import_config = config.clone();
    import_config.dir = other.clone();
    import_config.max_batch_records = 7; // several chunks, the marker inside one
    let imported = open(&import_config);
    assert_eq!(imported.import(&mut &exported[..]).unwrap(), 65);
    assert_eq!(read_all(&imported, 0), history);
    assert_eq!(read_all(&imported, 30), history[20..].to_vec());
    let mut again = Vec::new();
    imported.export(&mut again).unwrap();
    assert_eq!(again, exported);
    assert_eq!(
        imported.append_blocking(vec![draft(66)]).unwrap()[0].seq,
        66
    );
    drop(imported);
    let imported = open(&import_config);
    assert_eq!(read_all(&imported, 0)[..history.len()], history[..]);
    assert!(imported.verify().is_ok(), "{:?}", imported.verify());
}

#[test]
fn truncation_cuts_only_the_unsealed_tail_or_everything() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), PER_SEGMENT);
    let journal = open(&config);
    let truth = append(&journal, 1, 50);
    wait_sealed(&journal, 2, PER_SEGMENT);
    journal.save_snapshot(45, 1, &"after 45").unwrap();

    // Inside the sealed range: refused, nothing changed.
    for from in [2, 20, 40] {
        match journal.truncate_from(from) {
            Err(JournalError::InvalidArgument { what }) => {
                assert!(what.contains("sealed"), "{what}")
            }
            other => panic!("truncate_from({from}): {other:?}"),
        }
    }
    assert_eq!(read_all(&journal, 0), truth);

    // The unsealed tail: cut, to a quarantine file, with the snapshot covering it.
    let report = journal.truncate_from(44).unwrap();
    assert_eq!((report.removed_records, report.last_seq), (7, 43));
    assert_eq!(report.removed_snapshots, vec![45]);
    assert!(report.quarantine_file.as_ref().is_some_and(|f| f.exists()));
    assert_eq!(read_all(&journal, 0), truth[..43].to_vec());
    assert_eq!(journal.append_blocking(vec![draft(44)]).unwrap()[0].seq, 44);

    // From seq 1: everything, segments included (import's rollback).
    let report = journal.truncate_from(1).unwrap();
    assert_eq!((report.removed_records, report.last_seq), (44, 0));
    assert_eq!(journal.last_seq(), 0);
    assert_eq!(read_all(&journal, 0), vec![]);
    assert_eq!(journal.usage().segments, 0);
    assert!(segment_files(tmp.path()).is_empty());
    assert_eq!(journal.append_blocking(vec![draft(1)]).unwrap()[0].seq, 1);
    drop(journal);
    let journal = open(&config);
    assert_eq!(read_all(&journal, 0), truth[..1].to_vec());
    assert!(journal.verify().is_ok(), "{:?}", journal.verify());
}

#[test]
fn a_failed_import_rolls_back_sealed_segments_too() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let source = open(&config(&tmp.path().join("src"), PER_SEGMENT));
    append(&source, 1, 70);
    let mut good = Vec::new();
    source.export(&mut good).unwrap();
    // A gap at the end: the import fails after 70 lines.
    let mut bad = good.clone();
    bad.extend_from_slice(
        br#"{"seq":72,"ts_ms":1,"pool_id":null,"cause":null,"event":{"kind":"CircuitHalfOpened"}}"#,
    );
    bad.push(b'\n');

    // Two records a segment: the writer waits for sealing once the tail holds
    // TAIL_HARD_CAP_FACTOR times that, so most of the 70 records are sealed before line 71.
    let mut config = config(&tmp.path().join("dst"), 2);
    config.max_batch_records = 5;
    let journal = open(&config);
    let err = journal.import(&mut &bad[..]).unwrap_err();
    assert!(
        matches!(err, JournalError::Import { line: 71, .. }),
        "{err}"
    );
    assert_eq!(journal.last_seq(), 0);
    assert_eq!(read_all(&journal, 0), vec![]);
    assert_eq!(journal.usage().segments, 0);
    assert!(segment_files(&config.dir).is_empty());
    // The same journal takes the good export afterwards.
    assert_eq!(journal.import(&mut &good[..]).unwrap(), 70);
    assert_eq!(read_all(&journal, 0), read_all(&source, 0));
    drop(journal);
    let journal = open(&config);
    assert_eq!(read_all(&journal, 0), read_all(&source, 0));
}

/// Open reads only a segment's header and trailer; the background scrub then reads every
/// segment whole and reports damage in the journal's health (named, with the way out) while
/// appends go on.
#[test]
fn the_scrub_finds_damage_inside_a_sealed_segment_after_open() {
    const PER_SEGMENT: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), PER_SEGMENT);
    let journal = open(&config);
    append(&journal, 1, 60);
    wait_sealed(&journal, 3, PER_SEGMENT);
    drop(journal);
    let path = Layout::new(tmp.path()).segment_file(21, 40);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let journal = open(&config);
    wait_until("the scrub to report the damaged segment", || {
        !journal.health().damage.is_empty()
    });
    let health = journal.health();
    assert_eq!(health.damage.len(), 1, "{health:?}");
    assert!(
        health.damage[0].contains(&path.display().to_string()),
        "{health:?}"
    );
    assert!(health.damage[0].contains("journal repair"), "{health:?}");
    assert!(health.writable, "appends go on");
    append(&journal, 61, 61);
    wait_until("every segment scrubbed", || {
        journal.health().scrubbed_segments >= 3
    });
}

/// Group commits as large as the writer allows (1,024 records, each also removing 2,048
/// sealed ones) keep the live store small: it holds the unsealed tail, not the history.
/// (sled 0.34 kept the space of removed keys when one batch removed and inserted hundreds
/// of them: its directory grew by about 40 MB per 100,000 records.)
#[test]
fn the_live_store_stays_small_under_the_largest_group_commits() {
    const SEGMENT: usize = 4_096;
    const COMMITS: u32 = 200;
    const BOUND_BYTES: u64 = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), SEGMENT);
    let journal = open(&config);
    let batch = config.max_batch_records as u32;
    let live = pool_journal::live_store_dir(dir.path());
    let mut largest = 0;
    for commit in 0..COMMITS {
        let first = commit * batch + 1;
        let drafts = (first..first + batch).map(draft).collect();
        journal.append_blocking(drafts).expect("append");
        largest = largest.max(pool_journal::layout::dir_bytes(&live));
    }
    let records = u64::from(COMMITS * batch);
    wait_sealed(&journal, records / SEGMENT as u64, SEGMENT);
    assert!(
        largest <= BOUND_BYTES,
        "the live store {} reached {largest} bytes over {records} records in commits of \
         {batch} (bound {BOUND_BYTES}): it keeps the space of sealed records",
        live.display()
    );
}
