//! The world of one scenario: a scripted node (the pure core plus a simulated world), the
//! outcome of the last command, and optionally a real journal that records everything the
//! script records.
//!
//! "The registry" in a step is the replayed registry when the scenario has just replayed a
//! journal, and the script's live state otherwise (driving the script again returns to it).

use std::collections::BTreeMap;

use cucumber::World;
use pool_managerd::core::{PoolStatus, State};
use pool_managerd::script::{sample_engine, ScriptError, Scripted};

use crate::steps::journal::JournalFixture;

/// Where the script's clock starts (2023-11-14, ms since the epoch).
const START_MS: u64 = 1_700_000_000_000;
/// Seed of the script's jitter.
const SEED: u64 = 42;
/// The first port handed to a pool's engine; each new pool takes the next one.
const FIRST_PORT: u16 = 8_081;
/// How long a scripted engine takes to answer its health check.
const HEALTH_AFTER_MS: u64 = 1_500;

/// The outcome of the last command a `When` step gave.
#[derive(Debug)]
pub struct Outcome {
    /// The command, for messages.
    pub what: String,
    /// How many events it recorded, or why it failed.
    pub result: Result<usize, ScriptError>,
}

/// One scenario's state.
#[derive(Debug, World)]
#[world(init = Self::new)]
pub struct PoolWorld {
    /// The scripted node.
    script: Scripted,
    /// The port of each pool's engine.
    ports: BTreeMap<String, u16>,
    /// The last command's outcome, until a `Then` step checks it.
    outcome: Option<Outcome>,
    /// The registry rebuilt by the last replay, until the script moves on.
    pub replayed: Option<State>,
    /// The real journal, once the scenario asked for one.
    pub journal: Option<JournalFixture>,
}

impl PoolWorld {
    fn new() -> Self {
        PoolWorld {
            script: Scripted::new(START_MS, SEED),
            ports: BTreeMap::new(),
            outcome: None,
            replayed: None,
            journal: None,
        }
    }

    /// The scripted node (read only; drive it with [`drive`](Self::drive)).
    pub fn script(&self) -> &Scripted {
        &self.script
    }

    /// Runs `act` on the script; whatever it recorded is appended to the journal if the
    /// scenario has one (checking that the journal assigns the script's seqs), and the
    /// registry under test becomes the script's live state again.
    pub fn drive<T>(
        &mut self,
        act: impl FnOnce(&mut Scripted) -> Result<T, ScriptError>,
    ) -> Result<T, ScriptError> {
        let before = self.script.envelopes().len();
        let result = act(&mut self.script);
        let recorded = self.script.envelopes().get(before..).unwrap_or_default();
        if !recorded.is_empty() {
            self.replayed = None;
            if let Some(journal) = self.journal.as_mut() {
                journal.append(recorded);
            }
        }
        result
    }

    /// Gives a command whose outcome a later `Then` step checks (`it is accepted`, `it is
    /// rejected with ...`). A rejection that no step checked before the next command fails.
    pub fn command(
        &mut self,
        what: String,
        act: impl FnOnce(&mut Scripted) -> Result<Vec<pool_managerd::schema::PoolEnvelope>, ScriptError>,
    ) {
        if let Some(Outcome {
            what: previous,
            result: Err(error),
        }) = &self.outcome
        {
            panic!("{previous} failed ({error}) and no step checked it before {what}");
        }
        let result = self.drive(act).map(|recorded| recorded.len());
        self.outcome = Some(Outcome { what, result });
    }

    /// Takes the last command's outcome (a `Then` step checks it once).
    pub fn take_outcome(&mut self) -> Outcome {
        self.outcome
            .take()
            .unwrap_or_else(|| panic!("no command was given since the last check"))
    }

    /// The registry under test: the replayed one right after a replay, else the live one.
    pub fn registry(&self) -> &State {
        self.replayed
            .as_ref()
            .unwrap_or_else(|| self.script.state())
    }

    /// The status of `pool` in the registry under test; fails the step if it is absent.
    pub fn status(&self, pool: &str) -> PoolStatus {
        self.registry().status(pool).unwrap_or_else(|| {
            let known: Vec<String> = self
                .registry()
                .statuses()
                .iter()
                .map(|s| s.pool_id.to_string())
                .collect();
            panic!("pool '{pool}' is not in the registry (known: {known:?})")
        })
    }

    /// The port of `pool`'s engine (stable for the pool, distinct across pools).
    fn port(&mut self, pool: &str) -> u16 {
        let next = FIRST_PORT.saturating_add(u16::try_from(self.ports.len()).unwrap_or(0));
        *self.ports.entry(pool.to_string()).or_insert(next)
    }

    /// The orchestrator preloads `pool` (with `slots` in the prepared engine, if given) and
    /// its engine spawns: the pool is starting, its health check not yet passed.
    pub fn start_pool(&mut self, pool: &str, slots: Option<u32>) {
        let engine = sample_engine(
            pool,
            self.port(pool),
            &format!("/models/{pool}.gguf"),
            slots,
        );
        self.drive(|s| s.preload(pool, engine))
            .unwrap_or_else(|e| panic!("preloading pool '{pool}': {e}"));
        self.drive(|s| s.spawn_engine(pool))
            .unwrap_or_else(|e| panic!("spawning the engine of pool '{pool}': {e}"));
    }

    /// The engine of the starting `pool` answers its health check, reporting `slots`.
    pub fn pass_health_check(&mut self, pool: &str, slots: u32) {
        self.drive(|s| s.health_passed(pool, HEALTH_AFTER_MS, Some(slots)))
            .unwrap_or_else(|e| panic!("health check of pool '{pool}': {e}"));
    }

    /// The handoff file of `pool` is written, which makes it ready.
    pub fn write_handoff(&mut self, pool: &str) {
        self.drive(|s| s.write_handoff(pool))
            .unwrap_or_else(|e| panic!("handoff file of pool '{pool}': {e}"));
    }

    /// Preloads `pool` with `slots` slots and takes it all the way to ready.
    pub fn ready_pool(&mut self, pool: &str, slots: u32) {
        self.start_pool(pool, Some(slots));
        self.pass_health_check(pool, slots);
        self.write_handoff(pool);
        let status = self.status(pool);
        assert!(
            status.ready && status.slots_total == slots,
            "pool '{pool}' should be ready with {slots} slots: {status:?}"
        );
    }

    /// The engine of the starting `pool` never answers healthy: the health wait times out,
    /// and the engine is stopped if the core asked for that.
    pub fn never_healthy(&mut self, pool: &str) {
        self.drive(|s| s.time_out_health(pool))
            .unwrap_or_else(|e| panic!("health timeout of pool '{pool}': {e}"));
        let stop_pending = self.script.pending().iter().any(|(_, effect)| {
            matches!(effect, pool_managerd::core::Effect::StopEngine { pool_id, .. }
                if pool_id.as_str() == pool)
        });
        if stop_pending {
            self.drive(|s| s.finish_stop(pool, true))
                .unwrap_or_else(|e| panic!("stopping the engine of pool '{pool}': {e}"));
        }
    }
}
