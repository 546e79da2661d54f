//! The projection (journal -> registry) on a real sled journal: snapshots are a cache that can
//! only make start-up faster, never change the answer.

use std::path::Path;

use pool_core::{ExitReason, State, Timer};
use pool_journal::{Draft, JournalConfig};
use pool_managerd::projection::{replay, save_snapshot, ReplayLimit};
use pool_managerd::schema::{PoolEnvelope, PoolJournal};
use pool_managerd::script::{cpu_engine, Scripted};

const START_MS: u64 = 1_763_000_000_000;

/// A history with two pools: both ready, leases, one crash with a restart.
fn history() -> Scripted {
    let mut s = Scripted::new(START_MS, 7);
    for (pool, port) in [("alpha", 8101), ("beta", 8102)] {
        s.preload(pool, cpu_engine(pool, port, "/models/a.gguf", Some(4)))
            .unwrap();
        s.spawn_engine(pool).unwrap();
        s.pass_health(pool, 1_500, None).unwrap();
    }
    s.acquire_lease("alpha", "l1").unwrap();
    s.acquire_lease("beta", "l2").unwrap();
    s.advance(10_000);
    s.exit_engine("beta", None, Some(11), ExitReason::Signal, "segfault")
        .unwrap();
    s.fire_timer("beta", Timer::Restart).unwrap();
    s.spawn_engine("beta").unwrap();
    s.pass_health("beta", 900, None).unwrap();
    s.release_lease("alpha", "l1").unwrap();
    s
}

fn write(dir: &Path, envelopes: &[PoolEnvelope]) -> PoolJournal {
    let (journal, _) = PoolJournal::open(JournalConfig::new(dir)).unwrap();
    let drafts = envelopes.iter().cloned().map(Draft::from).collect();
    let written = journal.append_blocking(drafts).unwrap();
    assert_eq!(written, envelopes, "the journal assigns the script's seqs");
    journal
}

fn reopen(dir: &Path) -> PoolJournal {
    PoolJournal::open(JournalConfig::new(dir)).unwrap().0
}

/// The state after the first `n` envelopes, folded by hand.
fn fold_prefix(envelopes: &[PoolEnvelope], n: usize) -> State {
    envelopes
        .iter()
        .take(n)
        .fold(State::default(), pool_managerd::projection::apply)
}

#[test]
fn replay_equals_the_state_built_while_recording() {
    let script = history();
    let tmp = tempfile::tempdir().unwrap();
    let journal = write(tmp.path(), script.envelopes());
    drop(journal);
    let journal = reopen(tmp.path());
    let replayed = replay(&journal, ReplayLimit::NONE).unwrap();
    assert_eq!(&replayed.state, script.state());
    assert_eq!(replayed.from_snapshot_seq, None);
    assert_eq!(replayed.events_folded, script.envelopes().len() as u64);
}

#[test]
fn replay_until_seq_and_time_equals_the_folded_prefix() {
    let script = history();
    let envelopes = script.envelopes();
    let tmp = tempfile::tempdir().unwrap();
    let journal = write(tmp.path(), envelopes);
    for n in [1, 3, envelopes.len() / 2, envelopes.len()] {
        let by_seq = replay(
            &journal,
            ReplayLimit {
                until_seq: Some(n as u64),
                until_ts_ms: None,
            },
        )
        .unwrap();
        assert_eq!(by_seq.state, fold_prefix(envelopes, n), "until seq {n}");
    }
    // Until a time: every event at or before it, none after.
    let cut_ts = envelopes[envelopes.len() / 2].ts_ms;
    let admitted = envelopes.iter().take_while(|e| e.ts_ms <= cut_ts).count();
    let by_time = replay(
        &journal,
        ReplayLimit {
            until_seq: None,
            until_ts_ms: Some(cut_ts),
        },
    )
    .unwrap();
    assert_eq!(by_time.state, fold_prefix(envelopes, admitted));
    assert_eq!(by_time.as_of_ts_ms, Some(envelopes[admitted - 1].ts_ms));
}

#[test]
fn a_valid_snapshot_is_used_and_gives_the_same_state() {
    let script = history();
    let envelopes = script.envelopes();
    let half = envelopes.len() / 2;
    let tmp = tempfile::tempdir().unwrap();
    let journal = write(tmp.path(), &envelopes[..half]);
    save_snapshot(&journal, &fold_prefix(envelopes, half)).unwrap();
    let rest: Vec<Draft<_>> = envelopes[half..].iter().cloned().map(Draft::from).collect();
    journal.append_blocking(rest).unwrap();
    drop(journal);

    let journal = reopen(tmp.path());
    let replayed = replay(&journal, ReplayLimit::NONE).unwrap();
    assert_eq!(replayed.from_snapshot_seq, Some(half as u64));
    assert_eq!(replayed.events_folded, (envelopes.len() - half) as u64);
    assert_eq!(&replayed.state, script.state());

    // A bound before the snapshot cannot use it: full replay of the prefix.
    let early = replay(
        &journal,
        ReplayLimit {
            until_seq: Some(3),
            until_ts_ms: None,
        },
    )
    .unwrap();
    assert_eq!(early.from_snapshot_seq, None);
    assert_eq!(early.state, fold_prefix(envelopes, 3));
}

#[test]
fn a_corrupt_snapshot_gives_the_same_state_as_a_full_replay() {
    let script = history();
    let envelopes = script.envelopes();
    let tmp = tempfile::tempdir().unwrap();
    let journal = write(tmp.path(), envelopes);
    save_snapshot(&journal, script.state()).unwrap();
    let covers = script.state().last_seq();
    drop(journal);

    // Flip one byte of the snapshot file's payload, behind the journal's back: open refuses
    // (start-up reads the newest snapshot), and `journal repair` drops it, losing nothing.
    let file = pool_journal::layout::Layout::new(tmp.path()).snapshot_file(covers);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xA5;
    std::fs::write(&file, bytes).unwrap();
    let refused = PoolJournal::open(JournalConfig::new(tmp.path())).unwrap_err();
    assert!(
        matches!(
            refused,
            pool_journal::JournalError::Damaged { loss: false, .. }
        ),
        "{refused}"
    );
    let repaired = pool_journal::repair_dir::<pool_managerd::schema::PoolSchema>(
        JournalConfig::new(tmp.path()),
        false,
    )
    .unwrap();
    assert!(repaired.lost.is_empty());

    let journal = reopen(tmp.path());
    let replayed = replay(&journal, ReplayLimit::NONE).unwrap();
    assert_eq!(
        replayed.from_snapshot_seq, None,
        "the bad snapshot is not used"
    );
    assert_eq!(&replayed.state, script.state());
}

#[test]
fn a_snapshot_ahead_of_a_truncated_journal_is_ignored() {
    let script = history();
    let envelopes = script.envelopes();
    let tmp = tempfile::tempdir().unwrap();
    let journal = write(tmp.path(), envelopes);
    save_snapshot(&journal, script.state()).unwrap();
    let keep = envelopes.len() - 3;
    journal.truncate_from(keep as u64 + 1).unwrap();
    drop(journal);

    let journal = reopen(tmp.path());
    let replayed = replay(&journal, ReplayLimit::NONE).unwrap();
    assert_eq!(replayed.from_snapshot_seq, None);
    assert_eq!(replayed.state, fold_prefix(envelopes, keep));
}
