//! The journal: a real one in a temporary directory that records everything the script
//! records; closing and reopening it, replaying it (whole or up to an event), and damaging a
//! record through the raw store to see recovery quarantine the tail or refuse mid-journal
//! corruption.

use cucumber::{given, then, when};

use pool_journal::{Draft, JournalConfig, JournalError, OpenReport, SledStore, Store};
use pool_managerd::core::State;
use pool_managerd::projection::{replay, ReplayLimit};
use pool_managerd::schema::{PoolEnvelope, PoolJournal};

use crate::world::PoolWorld;

/// sled's page cache for the raw store opened to damage a record.
const RAW_STORE_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A journal in a temporary directory, and what the scenario observed of it.
#[derive(Debug)]
pub struct JournalFixture {
    /// The open journal; `None` while closed (the directory is locked until it is dropped).
    journal: Option<PoolJournal>,
    /// The journal directory, removed at the end of the scenario.
    dir: tempfile::TempDir,
    /// The registry just before the journal was closed.
    before_restart: Option<State>,
    /// The journal's last seq just before it was closed.
    last_seq_before: u64,
    /// What the last reopen found.
    reopened: Option<OpenReport>,
    /// The error of the last reopen or replay.
    error: Option<JournalError>,
}

impl JournalFixture {
    /// An empty journal in a fresh temporary directory.
    fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let (journal, report) = PoolJournal::open(JournalConfig::new(dir.path()))
            .unwrap_or_else(|e| panic!("opening a fresh journal: {e}"));
        assert_eq!(report.last_seq, 0, "a fresh journal is empty");
        JournalFixture {
            journal: Some(journal),
            dir,
            before_restart: None,
            last_seq_before: 0,
            reopened: None,
            error: None,
        }
    }

    /// The open journal.
    fn journal(&self) -> &PoolJournal {
        self.journal
            .as_ref()
            .unwrap_or_else(|| panic!("the journal is not open"))
    }

    /// Appends the script's `envelopes`; the journal must give them the script's seqs.
    pub fn append(&mut self, envelopes: &[PoolEnvelope]) {
        let drafts = envelopes.iter().cloned().map(Draft::from).collect();
        let appended = self
            .journal()
            .append_blocking(drafts)
            .unwrap_or_else(|e| panic!("appending to the journal: {e}"));
        assert_eq!(
            appended, envelopes,
            "the journal must record the script's envelopes with the same seqs"
        );
    }

    /// Closes the journal and drops it, releasing the directory lock.
    fn close(&mut self) {
        if let Some(journal) = self.journal.take() {
            self.last_seq_before = journal.last_seq();
            journal
                .close()
                .unwrap_or_else(|e| panic!("closing the journal: {e}"));
        }
    }

    /// Opens the journal again; the report or the error is kept for later steps.
    fn reopen(&mut self) -> bool {
        assert!(self.journal.is_none(), "the journal is still open");
        self.reopened = None;
        self.error = None;
        match PoolJournal::open(JournalConfig::new(self.dir.path())) {
            Ok((journal, report)) => {
                self.journal = Some(journal);
                self.reopened = Some(report);
                true
            }
            Err(error) => {
                self.error = Some(error);
                false
            }
        }
    }

    /// Closes the journal and runs `f` on its raw live store, then syncs it.
    fn raw(&mut self, f: impl FnOnce(&SledStore)) {
        self.close();
        let live = pool_journal::live_store_dir(self.dir.path());
        let store = SledStore::open(&live, RAW_STORE_CACHE_BYTES)
            .unwrap_or_else(|e| panic!("opening the raw store: {e}"));
        f(&store);
        store
            .sync()
            .unwrap_or_else(|e| panic!("syncing the raw store: {e}"));
    }

    /// The report of the last reopen, which must have succeeded.
    fn reopened(&self) -> &OpenReport {
        match (&self.reopened, &self.error) {
            (Some(report), _) => report,
            (None, Some(error)) => panic!("the journal did not open: {error}"),
            (None, None) => panic!("the journal was not reopened"),
        }
    }
}

/// The journal fixture of the scenario.
fn fixture(world: &mut PoolWorld) -> &mut JournalFixture {
    world.journal.as_mut().unwrap_or_else(|| {
        panic!("the scenario has no journal (Given a journal in a fresh directory)")
    })
}

/// Replays the whole open journal into the registry under test.
fn replay_all(world: &mut PoolWorld) {
    let replayed = replay(fixture(world).journal(), ReplayLimit::NONE)
        .unwrap_or_else(|e| panic!("replaying the journal: {e}"));
    world.replayed = Some(replayed.state);
}

#[given("a journal in a fresh directory")]
fn fresh_journal(world: &mut PoolWorld) {
    assert!(
        world.journal.is_none(),
        "the scenario already has a journal"
    );
    assert!(
        world.script().envelopes().is_empty(),
        "the journal must be created before the script records anything"
    );
    world.journal = Some(JournalFixture::fresh());
}

#[when("the journal is closed and opened again")]
fn closed_and_reopened(world: &mut PoolWorld) {
    let before = world.script().state().clone();
    let journal = fixture(world);
    journal.before_restart = Some(before.clone());
    journal.close();
    journal.reopen();
    let report = journal.reopened().clone();
    assert!(
        report.quarantined.is_empty(),
        "clean reopen quarantined: {report:?}"
    );
    assert_eq!(report.last_seq, before.last_seq(), "last seq after reopen");
    replay_all(world);
}

#[then("the replayed registry equals the registry before the restart")]
fn replayed_equals_before(world: &mut PoolWorld) {
    let before = fixture(world)
        .before_restart
        .clone()
        .unwrap_or_else(|| panic!("the journal was not restarted"));
    let replayed = world
        .replayed
        .as_ref()
        .unwrap_or_else(|| panic!("the journal was not replayed"));
    assert_eq!(
        replayed.statuses(),
        before.statuses(),
        "the registry's statuses"
    );
    assert_eq!(*replayed, before, "the whole registry state");
}

#[when(expr = "the journal is replayed until the event {string}")]
fn replayed_until(world: &mut PoolWorld, kind: String) {
    let seq = world
        .script()
        .envelopes()
        .iter()
        .find(|envelope| envelope.event.kind() == kind)
        .map(|envelope| envelope.seq)
        .unwrap_or_else(|| {
            let kinds: Vec<&str> = world
                .script()
                .envelopes()
                .iter()
                .map(|e| e.event.kind())
                .collect();
            panic!("no {kind} event in the history: {kinds:?}")
        });
    let limit = ReplayLimit {
        until_seq: Some(seq),
        until_ts_ms: None,
    };
    let replayed = replay(fixture(world).journal(), limit)
        .unwrap_or_else(|e| panic!("replaying until seq {seq}: {e}"));
    assert_eq!(replayed.state.last_seq(), seq, "the replay stops at {kind}");
    world.replayed = Some(replayed.state);
}

#[when("a torn record follows the last acknowledged one and the journal is opened again")]
fn record_after_last_torn(world: &mut PoolWorld) {
    let last = world.script().state().last_seq();
    let journal = fixture(world);
    assert_eq!(
        journal.journal().last_seq(),
        last,
        "the journal holds the whole history"
    );
    // What a crash in the middle of a write leaves past the witness: never acknowledged.
    journal.raw(|store| {
        let mut value = store
            .get(last)
            .unwrap_or_else(|e| panic!("reading record {last}: {e}"))
            .unwrap_or_else(|| panic!("record {last} is absent"))
            .to_vec();
        value.truncate(value.len() / 2);
        store
            .put_raw(last + 1, &value)
            .unwrap_or_else(|e| panic!("writing record {}: {e}", last + 1));
    });
    journal.reopen();
}

#[then("the journal opens")]
fn journal_opens(world: &mut PoolWorld) {
    let journal = fixture(world);
    journal.reopened();
    assert!(journal.journal.is_some(), "the journal is open");
}

#[then("a quarantine file names the seq after the last one")]
fn quarantine_names_last_seq(world: &mut PoolWorld) {
    let journal = fixture(world);
    let last = journal.last_seq_before + 1;
    let report = journal.reopened();
    let quarantined: Vec<u64> = report.quarantined.iter().map(|q| q.seq).collect();
    assert_eq!(quarantined, [last], "quarantined seqs: {report:?}");
    let file = report
        .quarantine_file
        .as_ref()
        .unwrap_or_else(|| panic!("no quarantine file: {report:?}"));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        name.ends_with(&format!("-from-seq-{last}.ndjson")),
        "quarantine file name {name} should name seq {last}"
    );
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let line: serde_json::Value = text
        .lines()
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("quarantine file {} holds no JSON line", file.display()));
    assert_eq!(line["seq"], last, "quarantined record: {line}");
}

#[then("the journal's last seq is the same as before")]
fn last_seq_unchanged(world: &mut PoolWorld) {
    let journal = fixture(world);
    let expected = journal.last_seq_before;
    assert!(expected > 0, "the history had events");
    assert_eq!(journal.reopened().last_seq, expected, "reported last seq");
    assert_eq!(journal.journal().last_seq(), expected, "journal's last seq");
    replay_all(world);
    assert_eq!(
        world.registry().last_seq(),
        expected,
        "the replay ends with the last acknowledged record"
    );
}

#[when(expr = "record {int} is corrupted and the journal is opened and replayed")]
fn record_corrupted(world: &mut PoolWorld, seq: u64) {
    let journal = fixture(world);
    // Where reality damages it: a byte of every copy of the record in sled's file, so that
    // neither sled nor a raw scan can read it again.
    let mut record = Vec::new();
    journal.raw(|store| {
        record = store
            .get(seq)
            .unwrap_or_else(|e| panic!("reading record {seq}: {e}"))
            .unwrap_or_else(|| panic!("record {seq} is absent"))
            .to_vec();
    });
    let db = pool_journal::live_store_dir(journal.dir.path()).join("db");
    let mut bytes = std::fs::read(&db).unwrap_or_else(|e| panic!("reading {}: {e}", db.display()));
    let mut copies = 0;
    for start in 0..bytes.len().saturating_sub(record.len()) {
        if bytes[start..start + record.len()] == record[..] {
            bytes[start + record.len() - 1] ^= 0x01; // a payload byte: the CRC no longer matches
            copies += 1;
        }
    }
    assert!(copies > 0, "sled keeps record {seq}'s bytes as they are");
    std::fs::write(&db, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", db.display()));
    if journal.reopen() {
        if let Err(error) = replay(journal.journal(), ReplayLimit::NONE) {
            journal.error = Some(error);
        }
    }
}

#[then(expr = "the error names seq {int} and the repair command that accepts the loss")]
fn error_names_seq(world: &mut PoolWorld, seq: u64) {
    let journal = fixture(world);
    let dir = journal.dir.path().display().to_string();
    let error = journal
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("the journal opened and replayed without error"));
    match error {
        JournalError::Damaged { loss, .. } => {
            assert!(loss, "an acknowledged record is lost: {error}");
        }
        other => panic!("expected the journal refused as damaged, got: {other}"),
    }
    let _ = seq; // the refusal names the damaged file; verify lists the seqs
    let command = format!("pool-managerd journal repair --journal-dir {dir} --accept-loss");
    assert!(
        error.to_string().contains(&command),
        "the error should name `{command}`: {error}"
    );
}

#[when("the journal is repaired accepting the loss")]
fn repaired_accepting_loss(world: &mut PoolWorld) {
    let journal = fixture(world);
    journal.close();
    let report = pool_journal::repair_dir::<pool_managerd::schema::PoolSchema>(
        JournalConfig::new(journal.dir.path()),
        true,
    )
    .unwrap_or_else(|e| panic!("repair --accept-loss: {e}"));
    assert!(
        !report.lost.is_empty(),
        "the repair accepted a loss: {report:?}"
    );
    journal.reopen();
}

#[then(expr = "seq {int} is a JournalLossAccepted event and every other event is as it was")]
fn seq_is_loss_event(world: &mut PoolWorld, seq: u64) {
    let recorded: Vec<_> = world.script().envelopes().to_vec();
    let journal = fixture(world);
    let read: Vec<_> = journal
        .journal()
        .read_from(0)
        .map(|item| item.unwrap_or_else(|e| panic!("reading the repaired journal: {e}")))
        .collect();
    assert_eq!(read.len(), recorded.len(), "as many events as before");
    for (got, want) in read.iter().zip(&recorded) {
        if got.seq == seq {
            assert_eq!(got.event.kind(), "JournalLossAccepted", "{got:?}");
        } else {
            assert_eq!(got, want, "seq {} is as it was", want.seq);
        }
    }
}
