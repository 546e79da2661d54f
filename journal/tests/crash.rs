//! A writer process killed with SIGKILL loses no acknowledged event.
//!
//! The test re-runs its own binary as a child (`crash_child_writer`, enabled by an env var)
//! that appends from several threads and prints `acked <seq> <thread> <n>` as soon as each
//! append returns; the parent reads some lines, kills the child, reopens and checks.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{open, TestEvent};
use pool_journal::Draft;

const CHILD_DIR_ENV: &str = "POOL_JOURNAL_CRASH_CHILD_DIR";
const CHILD_THREADS: u32 = 4;
const ACKS_BEFORE_KILL: usize = 400;

#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // Only acts when started by the parent test.
    };
    let journal = open(std::path::Path::new(&dir));
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|thread| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                // Bounded: the parent kills us long before this ends.
                for n in 0..1_000_000u32 {
                    let env = journal
                        .append_blocking(vec![Draft {
                            ts_ms: u64::from(n),
                            pool_id: Some(format!("t{thread}")),
                            cause: None,
                            event: TestEvent::Noted { task: thread, n },
                        }])
                        .expect("append");
                    println!("acked {} {thread} {n}", env[0].seq);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigkill_while_appending_loses_no_acknowledged_event() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("acked ") else {
            continue;
        };
        let parts: Vec<u64> = rest.split(' ').map(|p| p.parse().unwrap()).collect();
        acked.push((parts[0], parts[1] as u32, parts[2] as u32));
        if acked.len() >= ACKS_BEFORE_KILL {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "child must have been killed");
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "child ended early");

    let journal = open(tmp.path());
    assert!(journal.last_seq() >= acked.iter().map(|a| a.0).max().unwrap());
    for (seq, thread, n) in &acked {
        let env = journal
            .read_from(*seq)
            .next()
            .expect("acked record present")
            .expect("acked record decodes");
        assert_eq!(env.seq, *seq);
        assert_eq!(
            env.event,
            TestEvent::Noted {
                task: *thread,
                n: *n
            }
        );
        assert_eq!(env.pool_id.as_deref(), Some(format!("t{thread}").as_str()));
    }
    assert!(journal.verify().is_ok());
}
