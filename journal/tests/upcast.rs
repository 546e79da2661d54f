//! Upcasting: a journal written by format version 1 of a test schema reads back as today's
//! (version 2) events.
//!
//! Fixture format (`tests/fixtures/test-schema-v1.records`): UTF-8 text; lines starting with
//! `#` are comments; every other line is `seq<TAB>hex of the raw record value` (the bytes sled
//! stored: `version | crc32c LE | bincode payload`). It was written once by
//! `write_v1_fixture` (ignored test, and a no-op unless `POOL_JOURNAL_WRITE_FIXTURE` is set) with the frozen `v1` types below and must never be
//! regenerated: it stands for journals already on disk. To add a version N, freeze today's
//! types as `vN`, write `test-schema-vN.records` the same way, and add a test like the one here.

use pool_journal::{
    decode_payload, Envelope, EventSchema, Journal, JournalConfig, SledStore, Store, UpcastError,
};
use serde::{Deserialize, Serialize};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/test-schema-v1.records"
);

/// Frozen version 1 shapes. Never change.
mod v1 {
    use serde::{Deserialize, Serialize};
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Event {
        Spawned { pid: u32, engine_name: String },
        Stopped { pid: u32 },
    }
}

/// Today's shapes (version 2): `engine_name` renamed to `engine`, `gpu` and `exit_code` added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Spawned {
        pid: u32,
        engine: String,
        gpu: Option<u32>,
    },
    Stopped {
        pid: u32,
        exit_code: Option<i32>,
    },
}

struct SchemaV2;

impl EventSchema for SchemaV2 {
    type Event = Event;
    const CURRENT_VERSION: u8 = 2;
    fn kind(event: &Event) -> &'static str {
        match event {
            Event::Spawned { .. } => "Spawned",
            Event::Stopped { .. } => "Stopped",
        }
    }
    fn upcast(version: u8, payload: &[u8]) -> Result<Envelope<Event>, UpcastError> {
        match version {
            1 => {
                let old: Envelope<v1::Event> = decode_payload(version, payload)?;
                let event = match old.event {
                    v1::Event::Spawned { pid, engine_name } => Event::Spawned {
                        pid,
                        engine: engine_name,
                        gpu: None,
                    },
                    v1::Event::Stopped { pid } => Event::Stopped {
                        pid,
                        exit_code: None,
                    },
                };
                Ok(Envelope {
                    seq: old.seq,
                    ts_ms: old.ts_ms,
                    pool_id: old.pool_id,
                    cause: old.cause,
                    event,
                })
            }
            other => Err(UpcastError::new(other, "unknown version")),
        }
    }
}

struct SchemaV1;
impl EventSchema for SchemaV1 {
    type Event = v1::Event;
    const CURRENT_VERSION: u8 = 1;
    fn kind(_: &v1::Event) -> &'static str {
        "v1"
    }
}

fn v1_envelopes() -> Vec<Envelope<v1::Event>> {
    vec![
        Envelope {
            seq: 1,
            ts_ms: 1_700_000_000_000,
            pool_id: Some("p1".into()),
            cause: None,
            event: v1::Event::Spawned {
                pid: 41,
                engine_name: "llama".into(),
            },
        },
        Envelope {
            seq: 2,
            ts_ms: 1_700_000_000_500,
            pool_id: None,
            cause: Some(1),
            event: v1::Event::Stopped { pid: 41 },
        },
        Envelope {
            seq: 3,
            ts_ms: 1_700_000_001_000,
            pool_id: Some("p2".into()),
            cause: None,
            event: v1::Event::Spawned {
                pid: 42,
                engine_name: "vllm".into(),
            },
        },
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
#[ignore = "writes the checked-in fixture; run once per new format version, never again"]
fn write_v1_fixture() {
    if std::env::var("POOL_JOURNAL_WRITE_FIXTURE").is_err() {
        return; // Guard against `cargo test -- --ignored` overwriting history.
    }
    let mut out = String::from("# pool-journal test schema, format version 1. Format: seq<TAB>hex(raw record value). Never regenerate.\n");
    for env in v1_envelopes() {
        let bytes = pool_journal::encode_record::<SchemaV1>(&env).unwrap();
        out.push_str(&format!("{}\t{}\n", env.seq, hex(&bytes)));
    }
    std::fs::write(FIXTURE, out).unwrap();
}

#[test]
fn v1_fixture_reads_back_as_todays_events() {
    let tmp = tempfile::tempdir().unwrap();
    {
        // A journal from before segments: sled's files in the directory itself.
        let store = SledStore::open(tmp.path(), 8 * 1024 * 1024).unwrap();
        let text = std::fs::read_to_string(FIXTURE).unwrap();
        let mut n = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (seq, value) = line.split_once('\t').unwrap();
            let value = unhex(value);
            assert_eq!(value[0], 1, "fixture records are version 1");
            store.put_raw(seq.parse().unwrap(), &value).unwrap();
            n += 1;
        }
        assert_eq!(n, 3);
        store.sync().unwrap();
    }
    let (journal, report) = Journal::<SchemaV2>::open(JournalConfig::new(tmp.path())).unwrap();
    assert_eq!(report.last_seq, 3);
    assert!(report.quarantined.is_empty());
    assert!(
        report.migrated,
        "the journal from before segments is migrated"
    );
    let events: Vec<_> = journal.read_from(1).map(|r| r.unwrap()).collect();
    assert_eq!(
        events,
        vec![
            Envelope {
                seq: 1,
                ts_ms: 1_700_000_000_000,
                pool_id: Some("p1".into()),
                cause: None,
                event: Event::Spawned {
                    pid: 41,
                    engine: "llama".into(),
                    gpu: None
                }
            },
            Envelope {
                seq: 2,
                ts_ms: 1_700_000_000_500,
                pool_id: None,
                cause: Some(1),
                event: Event::Stopped {
                    pid: 41,
                    exit_code: None
                }
            },
            Envelope {
                seq: 3,
                ts_ms: 1_700_000_001_000,
                pool_id: Some("p2".into()),
                cause: None,
                event: Event::Spawned {
                    pid: 42,
                    engine: "vllm".into(),
                    gpu: None
                }
            },
        ]
    );
    // New records are stamped version 2 and mix with the old ones.
    let env = journal
        .append_blocking(vec![pool_journal::Draft {
            ts_ms: 5,
            pool_id: Some("p1".into()),
            cause: None,
            event: Event::Stopped {
                pid: 41,
                exit_code: Some(0),
            },
        }])
        .unwrap();
    assert_eq!(env[0].seq, 4);
    assert_eq!(journal.read_pool("p1", 0, 10).unwrap().len(), 2);
    assert!(journal.verify().is_ok());
    drop(journal);
    let store =
        SledStore::open(&pool_journal::live_store_dir(tmp.path()), 8 * 1024 * 1024).unwrap();
    assert_eq!(store.get(4).unwrap().unwrap()[0], 2);
    assert_eq!(store.get(1).unwrap().unwrap()[0], 1);
}

#[test]
fn default_upcast_is_an_error_not_a_panic() {
    struct NoUpcast;
    impl EventSchema for NoUpcast {
        type Event = v1::Event;
        const CURRENT_VERSION: u8 = 3;
        fn kind(_: &v1::Event) -> &'static str {
            "x"
        }
    }
    let bytes = pool_journal::encode_record::<SchemaV1>(&v1_envelopes()[0]).unwrap();
    assert!(pool_journal::decode_record::<NoUpcast>(1, &bytes).is_err());
}
