//! Step definitions, one module per concept. Cucumber collects the `#[given]`, `#[when]` and
//! `#[then]` functions of every module compiled in; nothing needs to be re-exported.
//!
//! - `params`: the parameter types of the steps (`{liveness}`, `{readiness}`, `{json}`) and
//!   the JSON path lookup the answer steps share.
//! - `api`: generic requests and checks of the last answer (status, error shape, fields).
//! - `daemon`: starting, configuring and restarting the daemon; its `/health`; a daemon in
//!   its own process, killed with SIGKILL or stopped with SIGTERM (adoption).
//! - `preload`: prepared engines and preloads.
//! - `pools`: a pool's status and the registry's list (real daemon or scripted core).
//! - `leases`: taking and returning leases, draining.
//! - `health`: the orchestrator's health view of a pool.
//! - `handoff`: engines started outside the daemon and their handoff files.
//! - `identity`: engines started through a launcher or a symlink retargeted while they run;
//!   the boot id and executable the journal records; foreign servers on an engine's port.
//! - `files`: the runtime directory: logs, pid files, handoff files.
//! - `process`: engine processes as `/proc` shows them, stopping, removing, crashing.
//! - `progress`: engines that report work and make none (stalls), and the times of the
//!   events that show an idle engine was not stopped.
//! - `supervision`: crashes, backoff, the circuit breaker and restart storms on a manual clock.
//! - `reload`: model files, engines that load them, reloads.
//! - `surge`: reloads without a gap: a daemon with a surge port, the strategy, where the pool
//!   serves after the switch, and whether it stayed ready throughout.
//! - `session`: the worker an engine forks into a group of its own, and whether it outlived
//!   the engine.
//! - `journal`: a real journal of the scripted core: reopen, replay, damage.
//! - `metrics`: `GET /metrics` scraped and read series by series (counters, histograms,
//!   gauges of pools), and the pool fields and levels of the event lines in a daemon's log.
//! - `gpus`: the node's GPUs as a fixture the scenario describes (names, VRAM, MIG devices)
//!   and rewrites while the daemon runs (engines on GPUs, free VRAM, Xids, GPUs gone), and what
//!   placement did to an engine (`CUDA_VISIBLE_DEVICES`, `--tensor-split`).
//! - `explain`: a pool's explanation (`GET /v2/pools/{id}/explain`) checked against its
//!   history, and `pool-managerd explain` against the daemon and on its journal.
//! - `events`: a client of the live event stream (`GET /v2/events`: what it received, its
//!   disconnects and resumptions) and the list of pools at an earlier seq (`?at_seq=N`).

pub mod api;
pub mod daemon;
pub mod events;
pub mod explain;
pub mod files;
pub mod gpus;
pub mod handoff;
pub mod health;
pub mod identity;
pub mod journal;
pub mod leases;
pub mod metrics;
pub mod params;
pub mod pools;
pub mod preload;
pub mod process;
pub mod progress;
pub mod reload;
pub mod session;
pub mod supervision;
pub mod surge;
