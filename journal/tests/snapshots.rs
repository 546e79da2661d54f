//! Snapshots are a cache: a corrupt, stale or wrong-version snapshot is never returned.

mod common;

use common::{fill, open, with_store, TestSchema};
use pool_journal::layout::Layout;
use pool_journal::{Journal, JournalConfig, JournalError, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    covers: u64,
    names: Vec<String>,
}

fn state(covers: u64) -> State {
    State {
        covers,
        names: (0..covers).map(|i| format!("n{i}")).collect(),
    }
}

#[test]
fn newest_valid_snapshot_is_loaded_and_older_ones_are_kept_for_time_travel() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), None);
    fill(&journal, 30);
    for covers in [10, 20, 30] {
        journal.save_snapshot(covers, 1, &state(covers)).unwrap();
    }
    assert_eq!(journal.load_snapshot::<State>(1), Some((30, state(30))));
    assert_eq!(journal.stats().unwrap().snapshot_seqs, vec![30, 20, 10]);
    // The nearest at or before a seq (a replay to it starts there).
    assert_eq!(
        journal.load_snapshot_at::<State>(1, 25),
        Some((20, state(20)))
    );
    assert_eq!(
        journal.load_snapshot_at::<State>(1, 10),
        Some((10, state(10)))
    );
    assert_eq!(journal.load_snapshot_at::<State>(1, 9), None);
    // Wrong state_version: ignored.
    assert_eq!(journal.load_snapshot::<State>(2), None);
    // Covering unacknowledged seqs is refused.
    assert!(matches!(
        journal.save_snapshot(31, 1, &state(31)),
        Err(JournalError::SnapshotAhead {
            covers_seq: 31,
            last_seq: 30
        })
    ));
}

fn flip(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_newest_snapshot_refuses_to_open_and_repair_falls_back_to_the_older_one() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 20);
    journal.save_snapshot(10, 1, &state(10)).unwrap();
    journal.save_snapshot(20, 1, &state(20)).unwrap();
    drop(journal);
    let newest = Layout::new(tmp.path()).snapshot_file(20);
    flip(&newest, 40);
    let err = Journal::<TestSchema>::open(JournalConfig::new(tmp.path())).unwrap_err();
    match &err {
        JournalError::Damaged { file, loss, .. } => {
            assert_eq!(file, &newest);
            assert!(!loss, "a snapshot is a cache: nothing acknowledged is lost");
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("journal repair --journal-dir"),
        "{err}"
    );
    let report =
        pool_journal::repair_dir::<TestSchema>(JournalConfig::new(tmp.path()), false).unwrap();
    assert!(report.lost.is_empty(), "{report:?}");
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), Some((10, state(10))));
    assert_eq!(journal.last_seq(), 20);
}

#[test]
fn a_snapshot_that_decodes_as_another_type_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 3);
    journal.save_snapshot(3, 1, &(1u8, 2u8)).unwrap();
    assert_eq!(journal.load_snapshot::<State>(1), None);
    assert_eq!(journal.load_snapshot::<(u8, u8)>(1), Some((3, (1, 2))));
}

#[test]
fn a_snapshot_past_the_journal_end_proves_a_loss_and_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 9);
    journal.save_snapshot(9, 1, &state(9)).unwrap();
    drop(journal);
    // The live store loses its last records (as sled does after damage); the snapshot and the
    // witness still prove seq 9 was acknowledged.
    with_store(tmp.path(), |store| {
        store.remove_from(6).unwrap();
    });
    let err = Journal::<TestSchema>::open(JournalConfig::new(tmp.path())).unwrap_err();
    match &err {
        JournalError::Damaged { loss, .. } => assert!(loss, "{err}"),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--accept-loss"), "{err}");
}

#[test]
fn truncate_from_removes_snapshots_covering_removed_records() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 20);
    journal.save_snapshot(8, 1, &state(8)).unwrap();
    journal.save_snapshot(15, 1, &state(15)).unwrap();
    let report = journal.truncate_from(10).unwrap();
    assert_eq!(report.removed_snapshots, vec![15]);
    fill(&journal, 10);
    assert_eq!(journal.last_seq(), 19);
    assert_eq!(journal.load_snapshot::<State>(1), Some((8, state(8))));
}

#[test]
fn a_large_snapshot_reloads_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 2);
    let big = State {
        covers: 2,
        names: (0..40_000).map(|i| format!("name-{i}")).collect(),
    };
    journal.save_snapshot(2, 1, &big).unwrap();
    drop(journal);
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), Some((2, big)));
}

#[test]
fn every_snapshot_below_the_bound_is_kept_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 40);
    for covers in 1..=40 {
        journal.save_snapshot(covers, 1, &covers).unwrap();
    }
    let seqs = journal.stats().unwrap().snapshot_seqs;
    assert_eq!(seqs, (1..=40).rev().collect::<Vec<u64>>());
    const { assert!(pool_journal::SNAPSHOTS_KEPT_MAX >= 1024) };
}
