//! Recovery at open: an unacknowledged torn tail is quarantined; damage to anything
//! acknowledged refuses (naming the file and the way out), and that way out works; newer
//! formats refuse; the decoder never panics. Damage is written through sled directly after the
//! journal is closed (the corruption campaign in `campaign.rs` flips bytes in the files).

mod common;

use common::{corrupt_in_file, damage, draft, fill, open, with_store, TestEvent, TestSchema};
use pool_journal::{
    decode_record, repair_dir, verify_dir, Journal, JournalConfig, JournalError, RecordFault,
    RecoveryMode, Store,
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

/// A record written (and synced) but never acknowledged: what a crash between the store's
/// sync and the witness's write, or a torn write, leaves above the witness.
fn unacknowledged(dir: &std::path::Path, seq: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let mut envelope = draft(seq as u32).into_envelope(seq);
    envelope.cause = None;
    let mut bytes = pool_journal::encode_record::<TestSchema>(&envelope).unwrap();
    change(&mut bytes);
    with_store(dir, |store| store.put_raw(seq, &bytes).unwrap());
}

fn loss_refusal(dir: &std::path::Path) -> JournalError {
    let err = open_result(dir, RecoveryMode::TolerateTailCorruption).unwrap_err();
    match &err {
        JournalError::Damaged { loss: true, .. } => {}
        other => panic!("expected a refusal with loss, got {other}"),
    }
    assert!(
        err.to_string().contains(&format!(
            "pool-managerd journal repair --journal-dir {} --accept-loss",
            dir.display()
        )),
        "{err}"
    );
    err
}

#[test]
fn an_unacknowledged_torn_tail_is_quarantined_and_appends_continue() {
    let tmp = written(10);
    unacknowledged(tmp.path(), 11, |v| {
        let i = v.len() - 3;
        v[i] ^= 0x01;
    });
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.last_seq, 10);
    assert_eq!(
        report.quarantined.iter().map(|q| q.seq).collect::<Vec<_>>(),
        vec![11]
    );
    let file = report.quarantine_file.clone().expect("quarantine file");
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.ends_with("-from-seq-11.ndjson"), "{name}");
    let text = std::fs::read_to_string(&file).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["seq"], 11);
    assert!(line["raw_hex"].as_str().is_some());
    assert_eq!(journal.append_blocking(vec![draft(99)]).unwrap()[0].seq, 11);
    drop(journal);
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(journal.last_seq(), 11);
    assert!(journal.verify().is_ok(), "{:?}", journal.verify());
}

#[test]
fn an_unacknowledged_valid_record_is_kept_and_vouched_for() {
    let tmp = written(4);
    unacknowledged(tmp.path(), 5, |_| {});
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.last_seq, 5);
    assert!(report.quarantined.is_empty());
    drop(journal);
    // The witness now vouches for it: removing it is a loss.
    with_store(tmp.path(), |store| {
        store.remove_from(5).unwrap();
    });
    loss_refusal(tmp.path());
}

#[test]
fn absolute_consistency_refuses_even_an_unacknowledged_tail() {
    let tmp = written(3);
    unacknowledged(tmp.path(), 4, |v| v[6] ^= 0xFF);
    let err = open_result(tmp.path(), RecoveryMode::AbsoluteConsistency).unwrap_err();
    assert!(
        matches!(err, JournalError::Damaged { loss: false, .. }),
        "{err}"
    );
    with_store(tmp.path(), |store| assert!(store.get(4).unwrap().is_some()));
}

#[test]
fn a_damaged_acknowledged_record_refuses_and_accept_loss_keeps_the_rest() {
    let tmp = written(20);
    assert!(corrupt_in_file(tmp.path(), 10) > 0);
    loss_refusal(tmp.path());
    // verify names it, and changes nothing.
    let report = verify_dir::<TestSchema>(&JournalConfig::new(tmp.path())).unwrap();
    assert!(
        report.problems.iter().any(|p| p.seq == 10 && p.loss),
        "{report:?}"
    );
    // repair without --accept-loss refuses, naming the range, and changes nothing.
    let err = repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), false).unwrap_err();
    match &err {
        JournalError::LossNotAccepted {
            lost: 1, ranges, ..
        } => assert!(ranges.contains("10..=10")),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--accept-loss"), "{err}");
    loss_refusal(tmp.path());
    // With --accept-loss: everything else is kept, the loss is an event at seq 10.
    let report = repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), true).unwrap();
    assert_eq!(report.lost, vec![(10, 10)]);
    assert!(report.moved_to.as_ref().is_some_and(|p| p.exists()));
    let (journal, _) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    let events: Vec<_> = journal.read_from(0).map(|r| r.unwrap()).collect();
    assert_eq!(events.len(), 20);
    assert!(matches!(
        &events[9].event,
        TestEvent::LostRecords {
            from: 10,
            to: 10,
            ..
        }
    ));
    assert_eq!(events[10], draft(11).into_envelope(11));
    assert_eq!(journal.append_blocking(vec![draft(21)]).unwrap()[0].seq, 21);
    assert!(journal.verify().is_ok(), "{:?}", journal.verify());
}

#[test]
fn a_lost_tail_keeps_its_seqs_the_next_append_follows_the_witness() {
    let tmp = written(10);
    with_store(tmp.path(), |store| {
        store.remove_from(8).unwrap();
    });
    for seq in 8..=10 {
        corrupt_in_file(tmp.path(), seq);
    }
    let err = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap_err();
    assert!(matches!(err, JournalError::Damaged { .. }), "{err}");
    let refused = repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), false).unwrap_err();
    assert!(refused.to_string().contains("seqs 8..=10"), "{refused}");
    let report = repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), true).unwrap();
    assert_eq!(report.lost, vec![(8, 10)]);
    let (journal, _) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(journal.last_seq(), 10);
    let tail: Vec<_> = journal.read_from(7).map(|r| r.unwrap().seq).collect();
    assert_eq!(tail, vec![7, 10], "seq 10 is the loss marker of 8..=10");
    // Reading from inside the lost range starts at the marker.
    assert_eq!(journal.read_from(9).next().unwrap().unwrap().seq, 10);
    assert_eq!(journal.append_blocking(vec![draft(11)]).unwrap()[0].seq, 11);
    // And an export of it imports back, marker and all.
    let mut out = Vec::new();
    journal.export(&mut out).unwrap();
    let other = tempfile::tempdir().unwrap();
    let imported = open(other.path());
    assert_eq!(imported.import(&mut &out[..]).unwrap(), 11);
    assert_eq!(imported.read_from(0).count(), 9);
}

#[test]
fn a_missing_record_mid_journal_refuses() {
    let tmp = written(20);
    with_store(tmp.path(), |store| {
        let five = store.get(5).unwrap().unwrap();
        store.remove_from(5).unwrap();
        // Put back everything after 5.
        drop(five);
    });
    let tmp2 = written(20);
    with_store(tmp2.path(), |store| {
        let rest: Vec<(u64, Vec<u8>)> = (6..=20)
            .map(|s| (s, store.get(s).unwrap().unwrap().to_vec()))
            .collect();
        store.remove_from(5).unwrap();
        for (s, v) in rest {
            store.put_raw(s, &v).unwrap();
        }
    });
    let err = loss_refusal(tmp2.path());
    assert!(err.to_string().contains("seqs 5..=5 are missing"), "{err}");
    loss_refusal(tmp.path());
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
}

#[test]
fn an_empty_journal_opens_and_a_wholly_damaged_one_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, report) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    assert_eq!(report.last_seq, 0);
    assert_eq!(journal.append_blocking(vec![draft(1)]).unwrap()[0].seq, 1);
    drop(journal);
    let tmp = written(2);
    damage(tmp.path(), 1, |v| v[5] ^= 1);
    damage(tmp.path(), 2, |v| v[5] ^= 1);
    loss_refusal(tmp.path());
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

/// A byte flipped in sled's own file (not through its API): sled drops everything after the
/// damaged message of its log, the witness catches it, and repair finds the records in the raw
/// bytes of the file as it was before the refused open: only the damaged record is lost.
#[test]
fn a_flip_in_the_live_store_file_loses_only_the_damaged_record_after_repair() {
    let tmp = written(30);
    let db = pool_journal::live_store_dir(tmp.path()).join("db");
    let record = pool_journal::encode_record::<TestSchema>(&draft(15).into_envelope(15)).unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(record.len())
        .position(|w| w == record.as_slice())
        .expect("sled keeps the record's bytes as they are");
    bytes[at + record.len() - 2] ^= 0x5A;
    std::fs::write(&db, &bytes).unwrap();
    let err = loss_refusal(tmp.path());
    let saved = std::fs::read_dir(tmp.path().join("quarantine"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with("-live-db-before-open")
        });
    assert!(saved, "the refused open kept the file as it was: {err}");
    let report = repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), true).unwrap();
    assert!(
        report.lost.iter().all(|&(a, b)| a == 15 && b == 15),
        "{report:?}"
    );
    let (journal, _) = open_result(tmp.path(), RecoveryMode::TolerateTailCorruption).unwrap();
    for envelope in journal.read_from(0).map(|e| e.unwrap()) {
        if envelope.seq != 15 {
            assert_eq!(
                envelope,
                draft(envelope.seq as u32).into_envelope(envelope.seq)
            );
        }
    }
    assert_eq!(journal.last_seq(), 30);
}
