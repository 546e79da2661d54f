//! The world of one scenario.
//!
//! A scenario drives one of two things:
//! - **a real daemon** (from `Given a running daemon` on): the daemon of
//!   `pool_managerd::daemon::Daemon`, in this process, spoken to over HTTP, with real engine
//!   processes (engine-sim, or any HTTP server); see `live.rs`;
//! - **the scripted core** (the journal feature): `pool_managerd::script::Scripted`, the pure
//!   core with a simulated world, optionally recording into a real journal.
//!
//! "The registry" in a step is what the scenario drives: the daemon's API when it has one,
//! otherwise the replayed registry right after a replay, else the script's live state.
//!
//! Waiting: a step that says something *becomes* true polls the API (or `/proc`, or the
//! runtime directory) every [`POLL`] until it holds, and fails after [`EVENTUALLY`]. No step
//! sleeps in the hope that something happened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cucumber::World;
use pool_managerd::core::{PoolStatus, State};
use pool_managerd::script::{cpu_engine, Scripted};
use reqwest::Method;
use serde_json::Value;

use crate::engines::{self, EngineProcess};
use crate::live::{Answer, Body, DaemonSetup, LiveDaemon};
use crate::steps::journal::JournalFixture;

/// Where the script's clock starts (2023-11-14, ms since the epoch).
const START_MS: u64 = 1_700_000_000_000;
/// Seed of the script's jitter.
const SEED: u64 = 42;
/// The first port handed to a scripted pool's engine; each new pool takes the next one.
const FIRST_PORT: u16 = 8_081;
/// How long a scripted engine takes to answer its health check.
const HEALTH_AFTER_MS: u64 = 1_500;

/// How long a step waits for something to become true.
pub const EVENTUALLY: Duration = Duration::from_secs(5);
/// How often it looks.
pub const POLL: Duration = Duration::from_millis(20);

/// One scenario's state.
#[derive(Debug, World)]
#[world(init = Self::new)]
pub struct PoolWorld {
    /// The scripted node (journal feature).
    script: Scripted,
    /// The port of each scripted pool's engine.
    script_ports: BTreeMap<String, u16>,
    /// The registry rebuilt by the last replay, until the script moves on.
    pub replayed: Option<State>,
    /// The real journal of a scripted scenario, once it asked for one.
    pub journal: Option<JournalFixture>,

    /// The scenario's temporary directory (daemon directories, files served by engines).
    dir: Option<tempfile::TempDir>,
    /// What the daemon will be started with.
    setup: DaemonSetup,
    /// The running daemon, once started.
    live: Option<LiveDaemon>,
    /// The last answer of the API, for `Then the answer ...` steps.
    answer: Option<Answer>,
    /// Answers of requests sent together, by pool.
    pub answers: BTreeMap<String, Answer>,
    /// How long the requests sent together took, all of them.
    pub together_elapsed: Option<Duration>,
    /// Prepared engines (SPEC section 5) by pool, as the next preload of the pool sends them.
    pub prepared: BTreeMap<String, Value>,
    /// Lease ids the daemon granted, by (pool, the scenario's alias).
    pub leases: BTreeMap<(String, String), String>,
    /// `GET /v2/pools` as noted by a step, for a later comparison.
    pub noted_pools: Option<Value>,
    /// The journal seq that `/health` showed when a step noted it.
    pub noted_seq: Option<u64>,
    /// Engines noted by a step, by pool.
    pub noted_engines: BTreeMap<String, EngineProcess>,
    /// When a step saw an engine end, by pool.
    pub exits_seen: BTreeMap<String, (Instant, u32)>,
    /// Engines started outside the daemon (handoff scenarios), by pool; killed with the world.
    pub external: crate::steps::handoff::ExternalEngines,
    /// The scenario's client of the live event stream (`GET /v2/events`).
    pub stream: crate::steps::events::StreamClient,
    /// Foreign servers the scenario started on engines' ports; ended with the world.
    pub foreign: crate::steps::identity::ForeignServers,
    /// The daemon's surge port (`[reload] surge_ports`), when a step gave it one.
    pub surge_port: Option<u16>,
}

impl PoolWorld {
    fn new() -> Self {
        PoolWorld {
            script: Scripted::new(START_MS, SEED),
            script_ports: BTreeMap::new(),
            replayed: None,
            journal: None,
            dir: None,
            setup: DaemonSetup::for_tests(),
            live: None,
            answer: None,
            answers: BTreeMap::new(),
            together_elapsed: None,
            prepared: BTreeMap::new(),
            leases: BTreeMap::new(),
            noted_pools: None,
            noted_seq: None,
            noted_engines: BTreeMap::new(),
            surge_port: None,
            exits_seen: BTreeMap::new(),
            external: Default::default(),
            stream: Default::default(),
            foreign: Default::default(),
        }
    }

    // ---------------------------------------------------------------- the real daemon

    /// The scenario's temporary directory (created on first use).
    pub fn dir(&mut self) -> &std::path::Path {
        self.dir
            .get_or_insert_with(|| {
                tempfile::Builder::new()
                    .prefix("pool-managerd-feature-")
                    .tempdir()
                    .unwrap_or_else(|e| panic!("temporary directory: {e}"))
            })
            .path()
    }

    /// The daemon's setup, which may change only before it starts.
    pub fn setup_mut(&mut self) -> &mut DaemonSetup {
        assert!(
            self.live.is_none(),
            "the daemon is already running: configure it before `Given a running daemon`"
        );
        &mut self.setup
    }

    /// The NVML error returns of the fake library's scenario, which a step may change while
    /// the daemon runs (the GPU steps write them with the next rewrite of the GPUs).
    pub fn nvml_lines_mut(&mut self) -> &mut Vec<String> {
        &mut self.setup.nvml_lines
    }

    /// The Xids of the fixture that are ECC errors (see `DaemonSetup::ecc_xids`).
    pub fn ecc_xids_mut(&mut self) -> &mut std::collections::BTreeSet<(u64, usize)> {
        &mut self.setup.ecc_xids
    }

    /// The daemon's setup (what it was started with, once it runs).
    pub fn setup(&self) -> &DaemonSetup {
        &self.setup
    }

    /// Starts the daemon of the scenario's setup.
    pub async fn start_daemon(&mut self) {
        assert!(self.live.is_none(), "the daemon is already running");
        assert!(
            self.journal.is_none() && self.script.envelopes().is_empty(),
            "a scenario drives either the scripted core or a real daemon, not both"
        );
        let dir = self.dir().to_path_buf();
        self.live = Some(LiveDaemon::start(self.setup.clone(), &dir).await);
    }

    /// Whether the scenario drives a real daemon.
    pub fn has_daemon(&self) -> bool {
        self.live.is_some()
    }

    /// The running daemon.
    pub fn daemon(&self) -> &LiveDaemon {
        self.live
            .as_ref()
            .unwrap_or_else(|| panic!("no daemon is running: start with `Given a running daemon`"))
    }

    /// The running daemon, mutably.
    pub fn daemon_mut(&mut self) -> &mut LiveDaemon {
        self.live
            .as_mut()
            .unwrap_or_else(|| panic!("no daemon is running: start with `Given a running daemon`"))
    }

    /// Takes the daemon out of the world for the clean-up.
    pub fn take_daemon(&mut self) -> Option<LiveDaemon> {
        self.live.take()
    }

    /// The runtime directory of the daemon.
    pub fn runtime_dir(&self) -> std::path::PathBuf {
        self.daemon().config().runtime_dir.clone()
    }

    /// Sends a request; its answer becomes *the answer* that `Then the answer ...` checks.
    pub async fn request(&mut self, method: Method, path: &str, body: Body) -> &Answer {
        let answer = self.daemon().call(method, path, body).await;
        self.answer.insert(answer)
    }

    /// Sends a request without making its answer *the answer* (reads done by `Then` steps).
    pub async fn peek(&self, method: Method, path: &str) -> Answer {
        self.daemon().call(method, path, Body::Empty).await
    }

    /// The last answer.
    pub fn answer(&self) -> &Answer {
        self.answer
            .as_ref()
            .unwrap_or_else(|| panic!("no request was sent yet"))
    }

    /// A pool's status from the API; `None` when it answers 404.
    pub async fn live_status(&self, pool: &str) -> Option<PoolStatus> {
        let answer = self.peek(Method::GET, &format!("/v2/pools/{pool}")).await;
        match answer.status {
            200 => Some(
                serde_json::from_value(answer.body.clone())
                    .unwrap_or_else(|e| panic!("status of pool '{pool}': {e}: {}", answer.body)),
            ),
            404 => None,
            other => panic!("GET /v2/pools/{pool} answered {other}: {}", answer.body),
        }
    }

    /// Polls `pool`'s status until `holds` is true of it (absent pools are `None`); fails
    /// after [`EVENTUALLY`] with `what` and the last status seen.
    pub async fn status_becomes(
        &self,
        pool: &str,
        what: &str,
        holds: impl Fn(Option<&PoolStatus>) -> bool,
    ) -> Option<PoolStatus> {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            let status = self.live_status(pool).await;
            if holds(status.as_ref()) {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("pool '{pool}' did not become {what} within {EVENTUALLY:?}; last status: {status:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The pool's history from `GET /v2/pools/{pool}/events`, oldest first (a removed pool
    /// keeps its history).
    pub async fn events(&self, pool: &str) -> Vec<Value> {
        let answer = self
            .peek(Method::GET, &format!("/v2/pools/{pool}/events"))
            .await;
        assert_eq!(
            answer.status, 200,
            "GET /v2/pools/{pool}/events: {}",
            answer.body
        );
        answer
            .body
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("events of pool '{pool}' are not a list: {}", answer.body))
    }

    /// The engines the daemon spawned for `pool`, oldest first (from `EngineSpawned`, and
    /// `SurgeSpawned` for a surge's new engine).
    pub async fn engines_of(&self, pool: &str) -> Vec<EngineProcess> {
        self.events(pool)
            .await
            .iter()
            .filter(|envelope| {
                // A surge's new engine is spawned for the pool too.
                let kind = &envelope["event"]["kind"];
                kind == "EngineSpawned" || kind == "SurgeSpawned"
            })
            .map(|envelope| {
                let event = &envelope["event"];
                let number = |field: &str| {
                    event[field]
                        .as_u64()
                        .unwrap_or_else(|| panic!("EngineSpawned without {field}: {envelope}"))
                };
                EngineProcess {
                    pid: u32::try_from(number("pid"))
                        .unwrap_or_else(|e| panic!("pid of {envelope}: {e}")),
                    start_time: number("start_time"),
                }
            })
            .collect()
    }

    /// The last engine the daemon spawned for `pool`.
    pub async fn engine_of(&self, pool: &str) -> EngineProcess {
        self.engines_of(pool)
            .await
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no engine was spawned for pool '{pool}'"))
    }

    /// The prepared engine of `pool` (made by a `prepared as` step).
    pub fn prepared_mut(&mut self, pool: &str) -> &mut Value {
        self.prepared.get_mut(pool).unwrap_or_else(|| {
            panic!(
                "pool '{pool}' has no prepared engine (Given pool \"{pool}\" is prepared as ...)"
            )
        })
    }

    /// Prepares an engine-sim for `pool` on a free port, with `extra` flags.
    pub fn prepare_engine_sim(&mut self, pool: &str, extra: &str) {
        let engine = engines::engine_sim(pool, engines::free_port(), extra);
        self.prepared.insert(pool.to_string(), engine);
    }

    /// `POST {path}` with `{"prepared": <pool's prepared engine>}`.
    pub async fn post_preload(&mut self, pool: &str, path: &str) -> &Answer {
        let prepared = self
            .prepared
            .get(pool)
            .cloned()
            .unwrap_or_else(|| panic!("pool '{pool}' has no prepared engine"));
        self.request(
            Method::POST,
            path,
            Body::Json(serde_json::json!({ "prepared": prepared })),
        )
        .await
    }

    /// Preloads `pool` with its prepared engine and waits for the answer.
    pub async fn preload(&mut self, pool: &str) -> &Answer {
        self.post_preload(pool, &format!("/v2/pools/{pool}/preload"))
            .await
    }

    /// Preloads `pool` and requires it to be ready (200).
    pub async fn preload_ready(&mut self, pool: &str) -> Answer {
        let answer = self.preload(pool).await.clone();
        assert_eq!(
            answer.status, 200,
            "preload of pool '{pool}' should succeed: {}",
            answer.body
        );
        answer
    }

    /// Polls `check` (a `/proc` or file-system look) until it is true; fails after
    /// [`EVENTUALLY`] with `what`.
    pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + EVENTUALLY;
        while !check() {
            if Instant::now() >= deadline {
                panic!("{what}: still not so after {EVENTUALLY:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The lease id behind the scenario's alias.
    pub fn lease_id(&self, pool: &str, alias: &str) -> String {
        self.leases
            .get(&(pool.to_string(), alias.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no lease \"{alias}\" was taken on pool '{pool}'"))
    }

    // ---------------------------------------------------------------- the registry under test

    /// The status of `pool` in the registry under test; fails the step if it is absent.
    pub async fn status(&self, pool: &str) -> PoolStatus {
        if self.has_daemon() {
            return self
                .live_status(pool)
                .await
                .unwrap_or_else(|| panic!("pool '{pool}' is not in the daemon's registry (404)"));
        }
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

    // ---------------------------------------------------------------- the scripted core

    /// The scripted node (read only; drive it with [`drive`](Self::drive)).
    pub fn script(&self) -> &Scripted {
        &self.script
    }

    /// Runs `act` on the script; whatever it recorded is appended to the journal if the
    /// scenario has one (checking that the journal assigns the script's seqs), and the
    /// registry under test becomes the script's live state again.
    pub fn drive<T>(
        &mut self,
        act: impl FnOnce(&mut Scripted) -> Result<T, pool_managerd::script::ScriptError>,
    ) -> Result<T, pool_managerd::script::ScriptError> {
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

    /// The scripted registry: the replayed one right after a replay, else the live one.
    pub fn registry(&self) -> &State {
        self.replayed
            .as_ref()
            .unwrap_or_else(|| self.script.state())
    }

    /// The port of a scripted `pool`'s engine (stable for the pool, distinct across pools).
    fn script_port(&mut self, pool: &str) -> u16 {
        let next = FIRST_PORT.saturating_add(u16::try_from(self.script_ports.len()).unwrap_or(0));
        *self.script_ports.entry(pool.to_string()).or_insert(next)
    }

    /// Preloads a scripted `pool` with `slots` slots and takes it all the way to ready:
    /// preload, spawn, health check passed, handoff written.
    pub fn script_ready_pool(&mut self, pool: &str, slots: u32) {
        let engine = cpu_engine(
            pool,
            self.script_port(pool),
            &format!("/models/{pool}.gguf"),
            Some(slots),
        );
        self.drive(|s| s.preload(pool, engine))
            .unwrap_or_else(|e| panic!("preloading pool '{pool}': {e}"));
        self.drive(|s| s.spawn_engine(pool))
            .unwrap_or_else(|e| panic!("spawning the engine of pool '{pool}': {e}"));
        self.drive(|s| s.health_passed(pool, HEALTH_AFTER_MS, Some(slots)))
            .unwrap_or_else(|e| panic!("health check of pool '{pool}': {e}"));
        self.drive(|s| s.write_handoff(pool))
            .unwrap_or_else(|e| panic!("handoff file of pool '{pool}': {e}"));
        let status = self.registry().status(pool);
        assert!(
            status
                .as_ref()
                .is_some_and(|s| s.ready && s.slots_total == slots),
            "pool '{pool}' should be ready with {slots} slots: {status:?}"
        );
    }
}
