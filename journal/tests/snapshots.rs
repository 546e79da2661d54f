//! Snapshots are a cache: a corrupt, stale or wrong-version snapshot is never returned.

mod common;

use common::{fill, open, with_store};
use pool_journal::{JournalError, Store};
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

#[test]
fn corrupt_snapshot_falls_back_to_the_older_one_then_none() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 20);
    journal.save_snapshot(10, 1, &state(10)).unwrap();
    journal.save_snapshot(20, 1, &state(20)).unwrap();
    drop(journal);
    with_store(tmp.path(), |store| {
        let mut v = store.snapshot_get(20).unwrap().unwrap().to_vec();
        let i = v.len() - 2;
        v[i] ^= 0x55;
        store.snapshot_put(20, &v).unwrap();
    });
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), Some((10, state(10))));
    drop(journal);
    with_store(tmp.path(), |store| {
        store.snapshot_put(10, &[1, 0, 0]).unwrap()
    });
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), None);
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
fn stale_snapshot_past_the_journal_end_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 5);
    drop(journal);
    // A snapshot claiming to cover seq 9 of a 5-record journal (e.g. written before a tail was lost).
    with_store(tmp.path(), |store| {
        let framed = pool_journal::record::encode_framed(1, &state(9)).unwrap();
        store.snapshot_put(9, &framed).unwrap();
    });
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), None);
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
fn large_snapshot_goes_through_sled_blobs_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 2);
    let big = State {
        covers: 2,
        names: (0..40_000).map(|i| format!("name-{i}")).collect(),
    };
    journal.save_snapshot(2, 1, &big).unwrap();
    let blobs = std::fs::read_dir(tmp.path().join("blobs")).unwrap().count();
    assert!(blobs >= 1, "a ~500 KB value is stored as a sled blob");
    drop(journal);
    let journal = open(tmp.path());
    assert_eq!(journal.load_snapshot::<State>(1), Some((2, big)));
}

#[test]
fn snapshots_past_the_bound_are_thinned_evenly() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    let n = pool_journal::SNAPSHOTS_KEPT_MAX as u64 * 3;
    fill(&journal, n as u32);
    for covers in 1..=n {
        journal.save_snapshot(covers, 1, &covers).unwrap();
    }
    let seqs = journal.stats().unwrap().snapshot_seqs;
    assert_eq!(seqs.len(), pool_journal::SNAPSHOTS_KEPT_MAX);
    // The newest two and the oldest stay; no gap is much wider than an even spread.
    assert_eq!(&seqs[..2], &[n, n - 1]);
    assert_eq!(seqs.last(), Some(&1));
    let widest = seqs.windows(2).map(|w| w[0] - w[1]).max().unwrap();
    let even = n / pool_journal::SNAPSHOTS_KEPT_MAX as u64;
    assert!(
        widest <= 2 * even + 1,
        "widest gap {widest}, even spread {even}: {seqs:?}"
    );
}
