//! Unit tests of the stream reader's pure parts.
use super::*;

fn published(node: &str, seq: u64, event: Event) -> Published {
    Published {
        node: node.to_string(),
        stream_seq: seq,
        envelope: PoolEnvelope {
            seq,
            ts_ms: 1_000 + seq,
            pool_id: None,
            cause: None,
            event,
        },
    }
}

fn stopped() -> Event {
    Event::DaemonStopped {
        reason: "test".to_string(),
    }
}

#[test]
fn filters_name_the_node_and_the_pool_as_subject_tokens() {
    assert_eq!(filter_subject(None, None), "pool.events.>");
    assert_eq!(filter_subject(Some("a.b"), None), "pool.events.a~b.>");
    assert_eq!(filter_subject(None, Some("chat.a")), "pool.events.*.chat~a");
    assert_eq!(filter_subject(Some("n1"), Some("p")), "pool.events.n1.p");
}

#[test]
fn an_id_with_a_wildcard_or_a_space_is_refused() {
    assert!(check_id("node", "gpu-7.rack_2").is_ok());
    for bad in ["", "a*", ">", "a b", "a:b"] {
        let why = check_id("node", bad).unwrap_err();
        assert!(why.0.starts_with("node "), "{why}");
    }
}

#[test]
fn a_payload_decodes_back_to_its_envelope() {
    let envelope = PoolEnvelope {
        seq: 7,
        ts_ms: 1_700_000_000_123,
        pool_id: Some("p1".to_string()),
        cause: Some(3),
        event: stopped(),
    };
    let payload = pool_journal::envelope_to_json(&envelope)
        .unwrap()
        .to_string();
    assert_eq!(decode_payload(payload.as_bytes()).unwrap(), envelope);
    let why = decode_payload(
        br#"{"seq":1,"ts_ms":2,"pool_id":null,"cause":null,"event":{"kind":"Nope"}}"#,
    )
    .unwrap_err();
    assert!(why.contains("Nope"), "{why}");
    assert!(decode_payload(b"{}").is_err());
}

#[test]
fn a_node_history_starts_at_one_and_skips_only_a_declared_loss() {
    let mut seqs = Seqs {
        gap_free: Some("n1".to_string()),
        ..Seqs::default()
    };
    assert_eq!(
        seqs.admit(&published("n1", 1, stopped()), "S", "at"),
        Ok(true)
    );
    assert_eq!(
        seqs.admit(&published("n1", 2, stopped()), "S", "at"),
        Ok(true)
    );
    // Republished after the duplicate window: skipped and counted.
    assert_eq!(
        seqs.admit(&published("n1", 2, stopped()), "S", "at"),
        Ok(false)
    );
    assert_eq!(seqs.duplicates, 1);
    let loss = Event::JournalLossAccepted {
        from_seq: 3,
        to_seq: 5,
        reason: "disk".to_string(),
    };
    assert_eq!(seqs.admit(&published("n1", 5, loss), "S", "at"), Ok(true));
    let why = seqs
        .admit(&published("n1", 7, stopped()), "S", "at")
        .unwrap_err();
    assert!(why.0.contains("seq 6 is missing"), "{why}");
    let why = seqs
        .admit(&published("n2", 8, stopped()), "S", "at")
        .unwrap_err();
    assert!(why.0.contains("node n2"), "{why}");

    let mut late = Seqs {
        gap_free: Some("n1".to_string()),
        ..Seqs::default()
    };
    let why = late
        .admit(&published("n1", 4, stopped()), "S", "at")
        .unwrap_err();
    assert!(
        why.0.contains("first event on the stream S is seq 4"),
        "{why}"
    );
    assert!(why.0.contains("seqs 1..=3 are missing"), "{why}");
}

#[test]
fn every_node_read_skips_repeats_per_node_without_gap_checks() {
    let mut seqs = Seqs::default();
    assert_eq!(
        seqs.admit(&published("n1", 3, stopped()), "S", "at"),
        Ok(true)
    );
    assert_eq!(
        seqs.admit(&published("n2", 1, stopped()), "S", "at"),
        Ok(true)
    );
    assert_eq!(
        seqs.admit(&published("n1", 9, stopped()), "S", "at"),
        Ok(true)
    );
    assert_eq!(
        seqs.admit(&published("n1", 9, stopped()), "S", "at"),
        Ok(false)
    );
}
