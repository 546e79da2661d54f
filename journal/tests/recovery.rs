//! Recovery at open: tail corruption is quarantined, mid-journal corruption refuses, newer
//! formats refuse, and the decoder never panics. Damage is written through sled directly
//! after the journal is closed.

mod common;

use common::{damage, draft, fill, open, with_store, TestSchema};
use pool_journal::{
    decode_record, Journal, JournalConfig, JournalError, RecordFault, RecoveryMode, Store,
};
use proptest::prelude::*;

fn open_result(
    dir: &std::path::Path,
    mode: RecoveryMode,
) -> Result<(Journal<TestSchema>, pool_journal::OpenReport), JournalError> {
    let mut config = JournalConfig::new(dir);
    config.recovery = mode;
    Journal::<TestSchema>::open(config)
}

fn written(n: u32) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, n);
    journal.close().unwrap();
    drop(journal);
    tmp
}

fn check_tail_quarantined(tmp: &tempfile::TempDir, bad_seq: u64) {
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.last_seq, bad_seq - 1);
    assert_eq!(journal.last_seq(), bad_seq - 1);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].seq, bad_seq);
    let file = report.quarantine_file.clone().expect("quarantine file");
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.ends_with(&format!("-from-seq-{bad_seq}.ndjson")),
        "{name}"
    );
    assert_eq!(file.parent().unwrap(), tmp.path().join("quarantine"));
    let text = std::fs::read_to_string(&file).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["seq"], bad_seq);
    assert!(line["raw_hex"].as_str().is_some());
    assert!(line["what"].as_str().is_some());
    assert_eq!(text.lines().count(), 1);
    // The record is gone, and appending continues gap-free from there.
    assert_eq!(journal.read_from(1).count() as u64, bad_seq - 1);
    let env = journal.append_blocking(vec![draft(99)]).unwrap();
    assert_eq!(env[0].seq, bad_seq);
    drop(journal);
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(journal.last_seq(), bad_seq);
    assert!(journal.verify().is_ok());
}

#[test]
fn flipped_byte_in_last_record_is_quarantined() {
    let tmp = written(10);
    damage(tmp.path(), 10, |v| {
        let i = v.len() - 3;
        v[i] ^= 0x01;
    });
    check_tail_quarantined(&tmp, 10);
}

#[test]
fn truncated_last_value_is_quarantined() {
    let tmp = written(10);
    damage(tmp.path(), 10, |v| v.truncate(v.len() / 2));
    check_tail_quarantined(&tmp, 10);
}

#[test]
fn short_last_value_and_key_mismatch_are_tail_corruption() {
    let tmp = written(6);
    with_store(tmp.path(), |store| {
        // seq 6 holds seq 5's (valid) record: key != envelope seq.
        let five = store.get(5).unwrap().unwrap();
        store.put_raw(6, &five).unwrap();
        store.put_raw(7, &[1, 2]).unwrap();
    });
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(
        report.quarantined.iter().map(|q| q.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert_eq!(journal.last_seq(), 5);
}

#[test]
fn snapshots_covering_a_quarantined_tail_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 10);
    journal
        .save_snapshot(10, 1, &"state at 10".to_string())
        .unwrap();
    drop(journal);
    damage(tmp.path(), 10, |v| v[6] ^= 0xFF);
    let (journal, _) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    // Even after the seq is reused, the old snapshot must not come back.
    journal.append_blocking(vec![draft(50)]).unwrap();
    assert_eq!(journal.last_seq(), 10);
    assert_eq!(journal.load_snapshot::<String>(1), None);
}

#[test]
fn mid_journal_corruption_refuses_naming_the_seq_and_truncate_from_repairs() {
    let tmp = written(20);
    damage(tmp.path(), 5, |v| {
        let i = v.len() - 1;
        v[i] ^= 0x10;
    });
    let err = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap_err();
    match &err {
        JournalError::Corruption { seq, .. } => assert_eq!(*seq, 5),
        other => panic!("expected Corruption, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("seq 5"), "{msg}");
    assert!(
        msg.contains("pool-managerd journal repair --journal-dir"),
        "{msg}"
    );
    assert!(msg.contains("--from-seq 5"), "{msg}");

    let (journal, _) =
        Journal::<TestSchema>::open_for_repair(JournalConfig::new(tmp.path())).unwrap();
    let verify = journal.verify();
    assert_eq!(verify.problems.len(), 1);
    assert_eq!(verify.problems[0].seq, 5);
    let report = journal.truncate_from(5).unwrap();
    assert_eq!(report.removed_records, 16);
    assert_eq!(report.last_seq, 4);
    let qfile = report.quarantine_file.expect("quarantine file");
    assert_eq!(std::fs::read_to_string(qfile).unwrap().lines().count(), 16);
    drop(journal);
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.last_seq, 4);
    assert_eq!(journal.last_seq(), 4);
    assert_eq!(journal.append_blocking(vec![draft(1)]).unwrap()[0].seq, 5);
}

#[test]
fn a_missing_record_mid_journal_refuses() {
    let tmp = written(8);
    with_store(tmp.path(), |store| {
        // Remove 3..=8 then put back 4..=8: seq 3 is missing.
        let keep: Vec<_> = (4..=8)
            .map(|s| (s, store.get(s).unwrap().unwrap()))
            .collect();
        store.remove_from(3).unwrap();
        for (s, v) in keep {
            store.put_raw(s, &v).unwrap();
        }
    });
    match open_result(tmp.path(), RecoveryMode::TolerateTailCorruption) {
        Err(JournalError::Corruption { seq: 3, .. }) => {}
        other => panic!("expected Corruption at 3, got {other:?}"),
    }
}

#[test]
fn mid_journal_damage_older_than_the_window_is_found_by_read_from_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    let window = pool_journal::recovery::OPEN_CHECK_WINDOW_RECORDS as u32;
    for chunk in 0..((window + 10) / 100 + 1) {
        journal
            .append_blocking((0..100).map(|i| draft(chunk * 100 + i)).collect())
            .unwrap();
    }
    drop(journal);
    damage(tmp.path(), 3, |v| v[5] ^= 1);
    let journal = open(tmp.path());
    let results: Vec<_> = journal.read_from(1).collect();
    assert_eq!(results.len(), 3, "iteration stops at the bad record");
    assert!(matches!(
        results[2],
        Err(JournalError::Corruption { seq: 3, .. })
    ));
    assert_eq!(journal.verify().problems[0].seq, 3);
}

#[test]
fn absolute_consistency_refuses_tail_corruption() {
    let tmp = written(5);
    damage(tmp.path(), 5, |v| v[7] ^= 4);
    match open_result(tmp.path(), RecoveryMode::AbsoluteConsistency) {
        Err(JournalError::Corruption { seq: 5, .. }) => {}
        other => panic!("expected Corruption, got {other:?}"),
    }
    // Nothing was removed.
    with_store(tmp.path(), |store| assert!(store.get(5).unwrap().is_some()));
    assert!(!tmp.path().join("quarantine").exists());
}

#[test]
fn a_newer_format_version_is_unsupported_not_quarantined() {
    let tmp = written(5);
    damage(tmp.path(), 5, |v| v[0] = 2);
    let err = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap_err();
    match &err {
        JournalError::UnsupportedVersion {
            seq: 5,
            version: 2,
            current: 1,
        } => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("newer pool-managerd"));
    with_store(tmp.path(), |store| assert!(store.get(5).unwrap().is_some()));
    // Also from read_from when it is older than the window checked at open.
    let (journal, _) =
        Journal::<TestSchema>::open_for_repair(JournalConfig::new(tmp.path())).unwrap();
    let last = journal.read_from(1).last().unwrap();
    assert!(matches!(
        last,
        Err(JournalError::UnsupportedVersion { seq: 5, .. })
    ));
}

#[test]
fn empty_and_fully_corrupt_journals_open() {
    let tmp = written(2);
    damage(tmp.path(), 1, |v| v[5] ^= 1);
    damage(tmp.path(), 2, |v| v[5] ^= 1);
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.quarantined.len(), 2);
    assert_eq!(journal.last_seq(), 0);
    assert_eq!(journal.append_blocking(vec![draft(1)]).unwrap()[0].seq, 1);
}

#[test]
fn a_damaged_tail_longer_than_one_group_commit_refuses_and_drops_nothing() {
    let tmp = written(10);
    for seq in 6..=10 {
        damage(tmp.path(), seq, |v| v[5] ^= 1);
    }
    let mut config = JournalConfig::new(tmp.path());
    config.max_batch_records = 4;
    let err = match Journal::<TestSchema>::open(config) {
        Err(err) => err,
        Ok(_) => panic!("five damaged tail records with batches of four must refuse"),
    };
    assert!(
        matches!(err, JournalError::Corruption { seq: 6, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not a torn write"), "{err}");
    // Nothing was dropped: with room for five, the same journal quarantines the five.
    let mut config = JournalConfig::new(tmp.path());
    config.max_batch_records = 5;
    let (journal, report) = Journal::<TestSchema>::open(config).unwrap();
    assert_eq!(report.quarantined.len(), 5);
    assert_eq!(journal.last_seq(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic_and_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..300), seq in 0u64..10) {
        let result = decode_record::<TestSchema>(seq, &bytes);
        prop_assert!(result.is_err());
    }

    #[test]
    fn arbitrary_payload_with_a_valid_crc_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300), version in 0u8..4) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        match decode_record::<TestSchema>(1, &bytes) {
            Ok(env) => prop_assert_eq!(env.seq, 1),
            Err(RecordFault::Unsupported { version: v, .. }) => prop_assert!(v > 1),
            Err(RecordFault::Bad(_)) => {}
        }
    }
}
