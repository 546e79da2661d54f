//! The node's handle: what the API and the daemon ask of the node (commands, waits, reads of
//! the journal), each one a submission to the actor's inbox.
//!
//! Owns: the waits' deadlines and the lease ids it mints. Never: changes the state except
//! through the actor, or appends to the journal (it reads it: history, events, replays).

use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    Command, Effect, Input, LeaseId, PlacementInputs, Policy, PoolId, PreparedEngine, Rejection,
    ReloadStrategyAsked, State,
};
use rand::Rng as _;
use tokio::sync::oneshot;

use super::placement;
use super::{NodeHandle, PRELOAD_WAIT_MARGIN_MS};
use crate::clock::SharedClock;
use crate::port::Waiter;
use crate::port::{
    Committed, Inbox, JournalReport, NodeError, PreloadOutcome, Registry, ReloadOutcome,
};
use crate::projection::{self, ReplayLimit};
use crate::schema::{PoolEnvelope, PoolJournal};
use crate::supervisor::files::RuntimeDirs;

impl NodeHandle {
    /// The published registry.
    pub fn registry(&self) -> &Registry {
        self.inbox.registry()
    }

    /// The journal, for a reader beside the node (the cluster publisher); it never appends.
    pub fn journal(&self) -> PoolJournal {
        self.journal.clone()
    }

    /// The node's inbox, for a watcher (it submits inputs and reads the registry, no more).
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// The decision clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The supervision policy the node runs with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The runtime directory (logs, pids, handoff files) as start-up created it.
    pub fn dirs(&self) -> &RuntimeDirs {
        &self.dirs
    }

    /// The engines' cgroup leaves (`engines.cgroup`), where they could be set up.
    pub fn cgroups(&self) -> Option<&crate::supervisor::cgroup::EngineCgroups> {
        self.cgroups.as_deref()
    }

    /// This node's metrics (`GET /metrics`).
    pub fn metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.metrics
    }

    /// This node's metrics, shared (the HTTP layer counts its refusals there).
    pub fn shared_metrics(&self) -> crate::metrics::SharedMetrics {
        self.metrics.clone()
    }

    /// Decides on `input`, appends its events durably, and answers with them.
    pub async fn submit(&self, input: impl Into<Input>) -> Result<Committed, NodeError> {
        self.inbox.submit(input).await
    }

    async fn send(&self, input: Input, waiter: Option<Waiter>) -> Result<Committed, NodeError> {
        self.inbox.send(input, waiter).await
    }

    /// Hands the start-up's resume effects to the actor, which dispatches them in order
    /// after the start-up events.
    pub(super) async fn resume(&self, effects: Vec<Effect>) {
        self.inbox.resume(effects).await;
    }

    /// Preloads `engine` into `pool_id`. With `wait`, answers once the pool is ready or the
    /// start failed (bounded by the health timeout, the placement wait and a margin); without,
    /// once accepted.
    /// What the core's placement needs from the world (the model file's size, the host's
    /// available memory) is read here first, off the actor (`placement::inputs`).
    pub async fn preload(
        &self,
        pool_id: PoolId,
        engine: PreparedEngine,
        wait: bool,
    ) -> Result<PreloadOutcome, NodeError> {
        let since_ms = self.clock.now_ms();
        let placement = placement::inputs(&engine, self.allow_gpu_sharing).await;
        let input = Input::Command(Command::Preload {
            pool_id: pool_id.clone(),
            engine,
            placement,
        });
        if !wait {
            let committed = self.send(input, None).await?;
            let status = committed.state.status(pool_id.as_str()).ok_or_else(|| {
                NodeError::Rejected(Rejection::PoolNotFound {
                    pool_id: pool_id.to_string(),
                })
            })?;
            return Ok(PreloadOutcome {
                status,
                ready_ms: 0,
            });
        }
        let (reply, outcome) = oneshot::channel();
        self.send(
            input,
            Some(Waiter::Preload {
                reply,
                since_ms,
                failed: None,
            }),
        )
        .await?;
        let limit_ms = self
            .policy
            .health
            .preload_timeout_ms
            .saturating_add(self.placement_wait_ms)
            .saturating_add(self.policy.stop.grace_ms)
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': no outcome within {limit_ms} ms; the preload goes on, see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// Takes one slot of `pool_id` under a new lease id.
    pub async fn acquire_lease(&self, pool_id: PoolId) -> Result<(LeaseId, Arc<State>), NodeError> {
        let lease_id = new_lease_id();
        let committed = self
            .submit(Command::AcquireLease {
                pool_id,
                lease_id: lease_id.clone(),
            })
            .await?;
        Ok((lease_id, committed.state))
    }

    /// Reloads `pool_id` onto `new_model_ref` with `strategy`: answers once the new engine is
    /// ready, or the reload failed (rolled back or not), bounded by the drain deadline, the
    /// health timeout (twice: the new engine, then the old one again) and a margin. Unless
    /// `drain_first` was asked, a port of `[reload] surge_ports` and the new engine's placement
    /// inputs are found first, off the actor, for the core's choice.
    pub async fn reload(
        &self,
        pool_id: PoolId,
        new_model_ref: String,
        digest: Option<String>,
        drain_deadline_ms: Option<u64>,
        strategy: ReloadStrategyAsked,
    ) -> Result<ReloadOutcome, NodeError> {
        let (reply, outcome) = oneshot::channel();
        let drain_ms =
            drain_deadline_ms.unwrap_or(pool_core::policy::DEFAULT_RELOAD_DRAIN_DEADLINE_MS);
        let (surge_port, placement) = self.surge_inputs(&pool_id, &new_model_ref, strategy).await;
        self.send(
            Input::Command(Command::Reload {
                pool_id: pool_id.clone(),
                new_model_ref,
                digest,
                drain_deadline_ms,
                strategy,
                surge_port,
                placement,
            }),
            Some(Waiter::Reload {
                reply,
                failed: None,
                chosen: None,
            }),
        )
        .await?;
        let limit_ms = drain_ms
            .saturating_add(self.policy.health.preload_timeout_ms.saturating_mul(2))
            .saturating_add(self.placement_wait_ms.saturating_mul(2))
            .saturating_add(self.policy.stop.grace_ms.saturating_mul(2))
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': the reload has not ended after {limit_ms} ms; it goes on, see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// What a reload's strategy choice needs from the world: a free port of `[reload]
    /// surge_ports` and the placement inputs of the pool's engine on the new model (nothing
    /// for `drain_first`, or for a pool with no engine recorded: the core answers that).
    async fn surge_inputs(
        &self,
        pool_id: &PoolId,
        new_model_ref: &str,
        strategy: ReloadStrategyAsked,
    ) -> (Option<u16>, PlacementInputs) {
        if strategy == ReloadStrategyAsked::DrainFirst {
            return (None, PlacementInputs::default());
        }
        let state = self.registry().load().state.clone();
        let Some(engine) = state.pool(pool_id.as_str()).and_then(|p| p.engine.clone()) else {
            return (None, PlacementInputs::default());
        };
        let next = engine.with_model(model_path_of(new_model_ref));
        let placement = placement::inputs(&next, self.allow_gpu_sharing).await;
        let port = super::surge_port::pick(self.surge_ports.clone(), &state).await;
        (port, placement)
    }

    /// Stops and forgets `pool_id`; answers once it is gone (bounded by the stop grace plus a
    /// margin).
    pub async fn remove(&self, pool_id: PoolId) -> Result<(), NodeError> {
        let (reply, outcome) = oneshot::channel();
        let committed = self
            .send(
                Input::Command(Command::Remove {
                    pool_id: pool_id.clone(),
                }),
                Some(Waiter::Removed { reply }),
            )
            .await?;
        if committed.state.pool(pool_id.as_str()).is_none() {
            return Ok(());
        }
        let limit_ms = self
            .policy
            .stop
            .grace_ms
            .saturating_add(crate::supervisor::KILL_WAIT_MS)
            .saturating_add(PRELOAD_WAIT_MARGIN_MS);
        match tokio::time::timeout(Duration::from_millis(limit_ms), outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::ShuttingDown),
            Err(_) => Err(NodeError::Timeout(format!(
                "pool '{pool_id}': still stopping after {limit_ms} ms; see GET /v2/pools/{pool_id}"
            ))),
        }
    }

    /// The registry as it was right after event `seq` (a bounded replay from the nearest
    /// snapshot at or before it; `INVALID_REQUEST` beyond the journal's end).
    pub async fn state_at(&self, seq: u64) -> Result<Arc<State>, NodeError> {
        let current = self.registry().load().state.clone();
        if seq >= current.last_seq() {
            if seq > current.last_seq() {
                return Err(NodeError::Rejected(Rejection::InvalidRequest {
                    what: format!(
                        "at_seq {seq} is beyond the journal's last event ({})",
                        current.last_seq()
                    ),
                }));
            }
            return Ok(current);
        }
        let earliest = self.journal.time_travel_from();
        if seq < earliest {
            return Err(NodeError::HistoryExpired {
                requested: seq,
                earliest,
            });
        }
        let journal = self.journal.clone();
        let replayed = tokio::task::spawn_blocking(move || {
            projection::replay(
                &journal,
                ReplayLimit {
                    until_seq: Some(seq),
                    until_ts_ms: None,
                },
            )
        })
        .await
        .map_err(|e| NodeError::Journal(e.to_string()))?
        .map_err(NodeError::of_read)?;
        Ok(Arc::new(replayed.state))
    }

    /// Why `pool_id` is in its phase, as of event `at_seq` (now when `None`): the core's
    /// explanation of its recorded history (`projection::explain_pool`), with the node's
    /// quarantines from the registry then. `None`: no such pool then.
    pub async fn explain(
        &self,
        pool_id: PoolId,
        at_seq: Option<u64>,
    ) -> Result<Option<pool_core::Explanation>, NodeError> {
        let state = match at_seq {
            None => self.registry().load().state.clone(),
            Some(seq) => self.state_at(seq).await?,
        };
        if state.pool(pool_id.as_str()).is_none() {
            return Ok(None);
        }
        let at = state.last_seq();
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            projection::explain_pool(&journal, pool_id.as_str(), Some(at), Some(&state.node))
        })
        .await
        .map_err(|e| NodeError::Journal(e.to_string()))?
        .map_err(NodeError::of_read)
    }

    /// The journal's events, oldest first, from `from` (seq, inclusive; 0 reads as 1), at most
    /// `limit`, up to the last durable event (`GET /v2/events`, its live stream).
    pub async fn journal_events(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<PoolEnvelope>, NodeError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            journal
                .read_from(from)
                .take(limit)
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| NodeError::Journal(e.to_string()))?
        .map_err(NodeError::of_read)
    }

    /// The seq of the journal's last durable event (0 when empty).
    pub fn journal_last_seq(&self) -> u64 {
        self.journal.last_seq()
    }

    /// The earliest seq the journal still holds (retention drops older ones).
    pub fn journal_first_seq(&self) -> u64 {
        self.journal.first_seq()
    }

    /// The journal's health and sizes, now (metrics, `/health`).
    pub fn journal_report(&self) -> JournalReport {
        JournalReport {
            health: self.journal.health(),
            usage: self.journal.usage(),
        }
    }

    /// The pool's events, oldest first, from `since` (seq, inclusive), at most `limit`.
    pub async fn pool_events(
        &self,
        pool_id: PoolId,
        since: u64,
        limit: usize,
    ) -> Result<Vec<PoolEnvelope>, NodeError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.read_pool(pool_id.as_str(), since, limit))
            .await
            .map_err(|e| NodeError::Journal(e.to_string()))?
            .map_err(NodeError::of_read)
    }
}

/// A random lease id: `lease-` and 16 hex digits.
pub(super) fn new_lease_id() -> LeaseId {
    let n: u64 = rand::thread_rng().gen();
    LeaseId::new(&format!("lease-{n:016x}")).unwrap_or_else(|_| unreachable_lease())
}

pub(super) fn unreachable_lease() -> LeaseId {
    // `lease-<hex>` is always valid; keep a total function without panicking.
    LeaseId::new("lease-0").expect("constant lease id is valid")
}

/// The model path of a reference, as the core reads it: `file://` or `file:` stripped.
fn model_path_of(model_ref: &str) -> &str {
    model_ref
        .strip_prefix("file://")
        .or_else(|| model_ref.strip_prefix("file:"))
        .unwrap_or(model_ref)
}
