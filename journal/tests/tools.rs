//! verify, stats, export, import and truncate_from.

mod common;

use common::{damage, draft, fill, open, TestSchema};
use pool_journal::{Journal, JournalConfig, JournalError};

fn export_string(journal: &Journal<TestSchema>) -> String {
    let mut out = Vec::new();
    let n = journal.export(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count() as u64, n);
    text
}

#[test]
fn export_then_import_into_a_fresh_dir_is_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let journal = open(a.path());
    fill(&journal, 25);
    let exported = export_string(&journal);
    let first = exported.lines().next().unwrap();
    assert!(first.starts_with(r#"{"seq":1,"ts_ms":1001,"pool_id":"p1","cause":1,"event":{"kind":"CircuitHalfOpened"}}"#), "{first}");
    let b = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(b.path());
    config.max_batch_records = 7; // import in several chunks
    let (imported, _) = Journal::<TestSchema>::open(config).unwrap();
    assert_eq!(imported.import(&mut exported.as_bytes()).unwrap(), 25);
    assert_eq!(imported.last_seq(), 25);
    assert_eq!(export_string(&imported), exported);
    assert_eq!(
        imported.read_pool("p0", 0, 100).unwrap(),
        journal.read_pool("p0", 0, 100).unwrap()
    );
    // Import into a non-empty journal is refused, naming the dir.
    let err = imported.import(&mut exported.as_bytes()).unwrap_err();
    assert!(matches!(&err, JournalError::NotEmpty { dir } if dir == b.path()));
    assert!(err.to_string().contains(&b.path().display().to_string()));
}

fn import_err(input: &str) -> (JournalError, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    let err = journal.import(&mut input.as_bytes()).unwrap_err();
    (err, journal.last_seq())
}

#[test]
fn import_rejects_gaps_and_bad_lines_naming_the_line_and_imports_nothing() {
    let src = tempfile::tempdir().unwrap();
    let journal = open(src.path());
    fill(&journal, 4);
    let text = export_string(&journal);
    let lines: Vec<&str> = text.lines().collect();

    let gap = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3]);
    let (err, last) = import_err(&gap);
    match &err {
        JournalError::Import { line: 3, what } => assert!(
            what.contains("seq 4") && what.contains("expected 3"),
            "{what}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("line 3"));
    assert_eq!(last, 0, "a failed import leaves the journal empty");

    let (err, last) = import_err(&format!("{}\n\n{{not json\n", lines[0]));
    assert!(
        matches!(err, JournalError::Import { line: 3, .. }),
        "{err:?}"
    );
    assert_eq!(last, 0);

    let (err, _) = import_err(lines[1]);
    assert!(matches!(err, JournalError::Import { line: 1, .. }));

    let bad_event = lines[0].replace("CircuitHalfOpened", "NoSuchKind");
    let (err, _) = import_err(&bad_event);
    assert!(matches!(err, JournalError::Import { line: 1, .. }));
}

#[test]
fn verify_reports_problems_by_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 10);
    let report = journal.verify();
    assert!(report.is_ok());
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (10, 1, 10)
    );
    drop(journal);
    damage(tmp.path(), 4, |v| v[5] ^= 1);
    damage(tmp.path(), 7, |v| v.truncate(3));
    let report = pool_journal::verify_dir::<TestSchema>(&JournalConfig::new(tmp.path())).unwrap();
    assert_eq!(
        report.problems.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![4, 7]
    );
    assert!(report.problems[0].what.contains("crc32c"));
    assert!(report.problems.iter().all(|p| p.loss));
}

#[test]
fn stats_counts_kinds_and_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    let empty = journal.stats().unwrap();
    assert_eq!((empty.records, empty.first_seq, empty.last_seq), (0, 0, 0));
    fill(&journal, 9);
    journal.save_snapshot(9, 1, &1u32).unwrap();
    let stats = journal.stats().unwrap();
    assert_eq!(stats.records, 9);
    assert_eq!(stats.by_kind.get("EngineSpawned"), Some(&3));
    assert_eq!(stats.by_kind.get("CircuitHalfOpened"), Some(&3));
    assert_eq!(stats.by_kind.get("Noted"), Some(&3));
    assert_eq!((stats.first_seq, stats.last_seq), (1, 9));
    assert_eq!((stats.first_ts_ms, stats.last_ts_ms), (1001, 1009));
    assert!(stats.size_on_disk_bytes > 0);
    assert_eq!(stats.snapshot_seqs, vec![9]);
}

#[test]
fn truncate_from_quarantines_and_continues_gap_free() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 10);
    let report = journal.truncate_from(7).unwrap();
    assert_eq!(
        (report.from_seq, report.removed_records, report.last_seq),
        (7, 4, 6)
    );
    let q = std::fs::read_to_string(report.quarantine_file.unwrap()).unwrap();
    let first: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 7);
    assert_eq!(first["envelope"]["seq"], 7);
    assert_eq!(journal.last_seq(), 6);
    // Stale index entries for 7..10 must not leak into read_pool.
    assert!(journal
        .read_pool("p1", 0, 100)
        .unwrap()
        .iter()
        .all(|e| e.seq <= 6));
    assert_eq!(journal.append_blocking(vec![draft(8)]).unwrap()[0].seq, 7);
    assert_eq!(journal.truncate_from(100).unwrap().removed_records, 0);
    assert!(matches!(
        journal.truncate_from(0),
        Err(JournalError::InvalidArgument { .. })
    ));
    drop(journal);
    let journal = open(tmp.path());
    assert_eq!(journal.last_seq(), 7);
    assert!(journal.verify().is_ok());
}
