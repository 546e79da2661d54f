//! Group commit, read-back, close, lock and the per-pool index, on real sled in a tempdir.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{draft, fill, open, TestEvent, TestSchema};
use pool_journal::{Draft, Journal, JournalConfig, JournalError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_64_tasks_x_1000_are_gap_free_ordered_and_durable() {
    const TASKS: u32 = 64;
    const PER_TASK: u32 = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let journal = journal.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::with_capacity(PER_TASK as usize);
            for n in 0..PER_TASK {
                let env = journal
                    .append(vec![Draft {
                        ts_ms: u64::from(n),
                        pool_id: Some(format!("task-{task}")),
                        cause: None,
                        event: TestEvent::Noted { task, n },
                    }])
                    .await
                    .expect("append");
                assert_eq!(env.len(), 1);
                acked.push(env.into_iter().next().unwrap());
            }
            acked
        }));
    }
    let mut all = HashMap::new();
    for handle in handles {
        let acked = handle.await.unwrap();
        for pair in acked.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "a task's acked seqs must increase"
            );
        }
        for env in acked {
            assert!(all.insert(env.seq, env).is_none(), "duplicate seq");
        }
    }
    let total = u64::from(TASKS * PER_TASK);
    assert_eq!(all.len() as u64, total);
    assert!((1..=total).all(|s| all.contains_key(&s)), "gap in seqs");
    assert_eq!(journal.last_seq(), total);

    journal.close().unwrap();
    drop(journal);
    let journal = tokio::task::spawn_blocking({
        let dir = tmp.path().to_path_buf();
        move || open(&dir)
    })
    .await
    .unwrap();
    assert_eq!(journal.last_seq(), total);
    let mut count = 0u64;
    for item in journal.read_from(1) {
        let env = item.expect("read back");
        assert_eq!(all.get(&env.seq), Some(&env), "read back differs");
        count += 1;
    }
    assert_eq!(count, total);
    // The index holds each task's events in order.
    let pool = journal.read_pool("task-7", 0, 5000).unwrap();
    assert_eq!(pool.len(), PER_TASK as usize);
    assert!(pool.iter().enumerate().all(|(i, e)| e.event
        == TestEvent::Noted {
            task: 7,
            n: i as u32
        }));
}

#[test]
fn append_blocking_assigns_consecutive_seqs_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    assert_eq!(journal.last_seq(), 0);
    assert_eq!(journal.read_from(1).count(), 0);
    let envs = journal
        .append_blocking((1..=5).map(draft).collect())
        .unwrap();
    assert_eq!(
        envs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(journal.append_blocking(vec![]).unwrap(), vec![]);
    let more = journal.append_blocking(vec![draft(6)]).unwrap();
    assert_eq!(more[0].seq, 6);
    let read: Vec<_> = journal.read_from(3).map(Result::unwrap).collect();
    assert_eq!(read.len(), 4);
    assert_eq!(read[0], envs[2]);
    assert_eq!(read[3], more[0]);
    assert_eq!(journal.read_from(0).count(), 6);
    assert_eq!(journal.read_from(7).count(), 0);
}

#[test]
fn append_after_close_fails_with_closed_and_reads_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 3);
    journal.close().unwrap();
    journal.close().unwrap();
    assert!(matches!(
        journal.append_blocking(vec![draft(1)]),
        Err(JournalError::Closed)
    ));
    assert_eq!(journal.read_from(1).count(), 3);
}

#[test]
fn oversized_requests_and_bad_pool_ids_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(tmp.path());
    config.max_batch_records = 4;
    let (journal, _) = Journal::<TestSchema>::open(config).unwrap();
    let err = journal
        .append_blocking((0..5).map(draft).collect())
        .unwrap_err();
    assert!(matches!(
        err,
        JournalError::BatchTooLarge {
            records: 5,
            max_records: 4
        }
    ));
    let mut bad = draft(1);
    bad.pool_id = Some("a\0b".into());
    assert!(matches!(
        journal.append_blocking(vec![bad]),
        Err(JournalError::InvalidArgument { .. })
    ));
    let huge = Draft {
        ts_ms: 0,
        pool_id: None,
        cause: None,
        event: TestEvent::EngineSpawned {
            pid: 1,
            model: "x".repeat(100_000),
        },
    };
    assert!(matches!(
        journal.append_blocking(vec![huge]),
        Err(JournalError::RecordTooLarge { seq: 1, .. })
    ));
    // Nothing consumed a seq.
    assert_eq!(journal.append_blocking(vec![draft(1)]).unwrap()[0].seq, 1);
}

#[test]
fn second_open_of_a_held_dir_fails_fast_with_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 2);
    let started = Instant::now();
    let err = Journal::<TestSchema>::open(JournalConfig::new(tmp.path())).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "must not hang");
    match &err {
        JournalError::Locked { dir } => assert_eq!(dir, tmp.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("in use") && msg.contains("pool-managerd"),
        "{msg}"
    );
    // A clone keeps it held; dropping the last one releases it.
    let clone = journal.clone();
    drop(journal);
    assert!(matches!(
        Journal::<TestSchema>::open(JournalConfig::new(tmp.path())),
        Err(JournalError::Locked { .. })
    ));
    drop(clone);
    let reopened = open(tmp.path());
    assert_eq!(reopened.last_seq(), 2);
}

#[test]
fn read_pool_filters_by_pool_since_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = open(tmp.path());
    fill(&journal, 20);
    let p1 = journal.read_pool("p1", 0, 100).unwrap();
    let expected: Vec<u64> = (1..=20u64).filter(|i| i % 4 != 0 && i % 2 == 1).collect();
    assert_eq!(p1.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
    let since = journal.read_pool("p1", 10, 2).unwrap();
    assert_eq!(
        since.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![11, 13]
    );
    assert!(journal.read_pool("nope", 0, 10).unwrap().is_empty());
    assert!(journal.read_pool("p1", 0, 0).unwrap().is_empty());
}

#[test]
fn read_pool_reads_across_sealed_segments_and_the_tail_and_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(tmp.path());
    config.segment_records = 5;
    let (journal, _) = Journal::<TestSchema>::open(config.clone()).unwrap();
    fill(&journal, 23);
    journal.seal_now().unwrap();
    journal.seal_now().unwrap();
    assert!(journal.usage().segments >= 2, "{:?}", journal.usage());
    let expected: Vec<u64> = (1..=23u64).filter(|i| i % 4 != 0 && i % 2 == 0).collect();
    let seqs = |j: &Journal<TestSchema>, since, limit| -> Vec<u64> {
        j.read_pool("p0", since, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(&journal, 0, 100), expected);
    assert_eq!(seqs(&journal, 7, 2), vec![10, 14]);
    assert_eq!(seqs(&journal, 19, 100), vec![22]);
    drop(journal);
    let (journal, report) = Journal::<TestSchema>::open(config).unwrap();
    assert!(report.segments >= 2);
    assert_eq!(seqs(&journal, 0, 100), expected);
    assert_eq!(journal.read_from(0).count(), 23);
}

#[test]
fn journal_is_send_sync_clone_and_errors_are_send_sync_static() {
    fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
    fn assert_err<T: Send + Sync + 'static + std::error::Error>() {}
    assert_bounds::<Journal<TestSchema>>();
    assert_err::<JournalError>();
}

/// The journal holds every `env{}` value a caller gave: whatever the umask, its directories
/// are 0700 and its files 0600, and a loose tree is tightened at the next open.
#[test]
fn the_journal_directory_is_0700_and_its_files_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: umask is a plain syscall; 0022 is the usual default of a test process.
    unsafe { libc_umask(0o022) };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let journal = open(&dir);
    fill(&journal, 3);
    drop(journal);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let journal = open(&dir);
    let mut seen = 0;
    let mut stack = vec![dir.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 4, "the journal's files were walked");
    drop(journal);
}

extern "C" {
    #[link_name = "umask"]
    fn libc_umask(mask: u32) -> u32;
}
