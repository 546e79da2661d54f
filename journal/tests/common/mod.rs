//! Shared helpers for the integration tests: a test event schema and raw-store access.
#![allow(dead_code)]

use std::path::Path;

use pool_journal::{Draft, EventSchema, Journal, JournalConfig, SledStore, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TestEvent {
    EngineSpawned { pid: u32, model: String },
    CircuitHalfOpened,
    Noted { task: u32, n: u32 },
    LostRecords { from: u64, to: u64, reason: String },
}

pub struct TestSchema;

impl EventSchema for TestSchema {
    type Event = TestEvent;
    const CURRENT_VERSION: u8 = 1;
    fn kind(event: &TestEvent) -> &'static str {
        match event {
            TestEvent::EngineSpawned { .. } => "EngineSpawned",
            TestEvent::CircuitHalfOpened => "CircuitHalfOpened",
            TestEvent::Noted { .. } => "Noted",
            TestEvent::LostRecords { .. } => "LostRecords",
        }
    }
    fn loss_accepted(from: u64, to: u64, reason: &str) -> Option<TestEvent> {
        Some(TestEvent::LostRecords {
            from,
            to,
            reason: reason.to_string(),
        })
    }
    fn loss_range(event: &TestEvent) -> Option<(u64, u64)> {
        match event {
            TestEvent::LostRecords { from, to, .. } => Some((*from, *to)),
            _ => None,
        }
    }
}

pub fn open(dir: &Path) -> Journal<TestSchema> {
    Journal::<TestSchema>::open(JournalConfig::new(dir))
        .expect("open")
        .0
}

/// Draft number `i`: alternating pools and kinds.
pub fn draft(i: u32) -> Draft<TestEvent> {
    let event = match i % 3 {
        0 => TestEvent::EngineSpawned {
            pid: i,
            model: format!("model-{i}"),
        },
        1 => TestEvent::CircuitHalfOpened,
        _ => TestEvent::Noted { task: 0, n: i },
    };
    Draft {
        ts_ms: 1_000 + u64::from(i),
        pool_id: if i % 4 == 0 {
            None
        } else {
            Some(format!("p{}", i % 2))
        },
        cause: if i > 0 { Some(u64::from(i)) } else { None },
        event,
    }
}

/// Appends `n` drafts (numbered from 1) one call each; returns nothing.
pub fn fill(journal: &Journal<TestSchema>, n: u32) {
    for i in 1..=n {
        journal.append_blocking(vec![draft(i)]).expect("append");
    }
}

/// Runs `f` on the raw live store of a closed journal dir, then syncs.
pub fn with_store(dir: &Path, f: impl FnOnce(&SledStore)) {
    let store = SledStore::open(&pool_journal::live_store_dir(dir), 8 * 1024 * 1024)
        .expect("raw store open");
    f(&store);
    store.sync().expect("sync");
}

/// Replaces the raw value of `seq` with `change(old)`.
pub fn damage(dir: &Path, seq: u64, change: impl FnOnce(&mut Vec<u8>)) {
    with_store(dir, |store| {
        let mut value = store.get(seq).expect("get").expect("present").to_vec();
        change(&mut value);
        store.put_raw(seq, &value).expect("put");
    });
}

/// Damages record `seq` where reality does: flips a byte of every copy of its bytes in the
/// live store's file (sled keeps a record's bytes as they are, possibly in several places of
/// its log), so that no raw scan can find it again. Returns how many copies were found.
pub fn corrupt_in_file(dir: &Path, seq: u64) -> usize {
    let db = pool_journal::live_store_dir(dir).join("db");
    let record = pool_journal::encode_record::<TestSchema>(&draft(seq as u32).into_envelope(seq))
        .expect("encode");
    let mut bytes = std::fs::read(&db).expect("read db");
    let mut copies = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(record.len())
        .position(|w| w == record.as_slice())
    {
        let start = at + found;
        bytes[start + record.len() - 2] ^= 0x5A;
        copies += 1;
        at = start + record.len();
    }
    std::fs::write(&db, &bytes).expect("write db");
    copies
}
