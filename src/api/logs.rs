//! `GET /v2/pools/{id}/logs?tail=N[&follow=true]`: the last lines of the log of the pool's
//! current engine (its lane's file: `logs/<pool>.log`, or `logs/<pool>@b.log` after a surge),
//! with the newest rotated part when the live file has too few; with `follow=true` or `Accept:
//! text/event-stream`, a Server-Sent Events stream of those lines and then of each new one.
//!
//! Each line is `{"source": "daemon"|"engine", "text"}`: `daemon` for the lines the daemon
//! writes into the log (its start headers, rotation marks), which all start with
//! `==== pool-managerd:`. The mark is by that prefix only: an engine line that starts with it
//! is shown as the daemon's (the file is the engine's stdout; the daemon cannot make its own
//! lines unforgeable). Lines are cut at 4 KiB (marked), invalid UTF-8 replaced
//! (`supervisor::logtail`).
//!
//! # The stream
//!
//! `event: line`, `data: {"source", "text"}` for each line, oldest first: the tail, then what
//! the engine writes, looked at every [`FOLLOW_POLL_MS`]. A rotation (the file shrinks) is
//! followed from the file's new start; a restart's header is a line like any other; after a
//! surge switches the pool's lane, the new lane's log is followed (its tail first). A comment
//! (`: keep-alive`) goes out every [`SSE_KEEP_ALIVE_MS`](super::sse::SSE_KEEP_ALIVE_MS) when nothing else does. Bounds: at
//! most [`FOLLOW_BUFFER_LINES`] lines wait for the client; one that leaves the buffer full for
//! [`FOLLOW_SLOW_CLIENT_MS`] is dropped (`event: dropped`). The stream ends with `event:
//! shutdown` when the daemon stops, `event: gone` when the pool is removed.
//!
//! Never: writes a log, or reads a file but the pool's logs.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pool_core::{ErrorCode, Lane, PoolId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ApiErrorBody;
use super::sse::{self, NoRoom};
use super::{ApiError, ApiState, PoolPath};
use crate::node::NodeHandle;
use crate::supervisor::logtail::{self, Follower, LogLine};

/// `?tail=` by default.
pub const TAIL_DEFAULT: usize = 200;
/// The largest `?tail=`; a larger one is clamped to it.
pub const TAIL_MAX: usize = 10_000;
/// How often a stream looks at the log.
pub const FOLLOW_POLL_MS: u64 = 200;
/// Lines buffered between a stream's producer and its connection.
pub const FOLLOW_BUFFER_LINES: usize = 1_024;
/// How long a full buffer may stay full before its client is dropped.
pub const FOLLOW_SLOW_CLIENT_MS: u64 = 5_000;

/// Who wrote a line.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum LineSource {
    /// The daemon (the line starts with `==== pool-managerd:`).
    Daemon,
    /// The engine.
    Engine,
}

/// One line of an engine log.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LogLineBody {
    /// Who wrote it (by its prefix).
    source: LineSource,
    /// The line without its newline; cut at 4096 bytes (then ending with `[line cut at 4096
    /// of N bytes]`), invalid UTF-8 replaced.
    text: String,
}

impl From<LogLine> for LogLineBody {
    fn from(line: LogLine) -> Self {
        LogLineBody {
            source: if line.daemon {
                LineSource::Daemon
            } else {
                LineSource::Engine
            },
            text: line.text,
        }
    }
}

/// `GET /v2/pools/{id}/logs`: the last lines of the pool's current engine log.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PoolLogs {
    /// The pool.
    pool_id: String,
    /// The live log read (the lane of the pool's current engine).
    path: String,
    /// Oldest first.
    lines: Vec<LogLineBody>,
    /// Older lines exist than those returned.
    truncated: bool,
}

/// `?tail=&follow=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// How many of the last lines (default 200, at most 10000; larger is clamped).
    tail: Option<usize>,
    /// Stream the lines, then each new one, as Server-Sent Events (as `Accept:
    /// text/event-stream` does).
    follow: Option<bool>,
}

/// `GET /v2/pools/{id}/logs?tail=N&follow=true`.
#[utoipa::path(
    get,
    path = "/v2/pools/{id}/logs",
    tag = "pools",
    operation_id = "pool_logs",
    params(super::openapi::PoolIdParam, LogsQuery),
    responses(
        (status = 200, description = "The last lines of the log of the pool's current engine \
            (with the newest rotated part when the live file has fewer); with `follow=true` or \
            `Accept: text/event-stream`, a stream: `event: line`, `data: {\"source\", \"text\"}` \
            for those lines and each new one; `event: dropped` ends a slow client's, `event: \
            shutdown` every stream when the daemon stops, `event: gone` when the pool is removed",
            content(
                (PoolLogs = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "`INVALID_REQUEST`: a bad pool id or query", body = ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiErrorBody),
        (status = 404, description = "`POOL_NOT_FOUND`", body = ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the log could not be read", body = ApiErrorBody),
    )
)]
pub(super) async fn logs(
    State(state): State<ApiState>,
    PoolPath(pool_id): PoolPath,
    headers: HeaderMap,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(format!(
            "query: {e} (tail=0..={TAIL_MAX}, follow=true|false)"
        ))
    })?;
    let n = query.tail.unwrap_or(TAIL_DEFAULT).min(TAIL_MAX);
    let node = state.node().clone();
    let path = current_log(&node, &pool_id)?;
    let tail = read_tail(path.clone(), n).await?;
    let wants_stream = query.follow.unwrap_or(false)
        || headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
    if wants_stream {
        return Ok(stream(node, pool_id, path, tail, n));
    }
    Ok(Json(PoolLogs {
        pool_id: pool_id.to_string(),
        path: path.display().to_string(),
        lines: tail.lines.into_iter().map(Into::into).collect(),
        truncated: tail.truncated,
    })
    .into_response())
}

/// The log of the pool's current engine (its lane's); `POOL_NOT_FOUND` when there is no such
/// pool.
fn current_log(node: &NodeHandle, pool_id: &PoolId) -> Result<PathBuf, ApiError> {
    lane_of(node, pool_id)
        .map(|lane| node.dirs().log_path_in(pool_id.as_str(), lane))
        .ok_or_else(|| {
            ApiError::from(pool_core::Rejection::PoolNotFound {
                pool_id: pool_id.to_string(),
            })
        })
}

fn lane_of(node: &NodeHandle, pool_id: &PoolId) -> Option<Lane> {
    let published = node.registry().load();
    published.state.pool(pool_id.as_str()).map(|pool| pool.lane)
}

/// The tail of `path`, read on a blocking thread; a read error is `INTERNAL` naming the file.
async fn read_tail(path: PathBuf, n: usize) -> Result<logtail::Tail, ApiError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || logtail::tail(&path, n))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot read the engine log {shown}: {e}; check the runtime directory"),
            )
        })
}

/// Why a stream ends on the daemon's side.
#[derive(Debug)]
enum End {
    /// The client read too slowly.
    Dropped,
    /// The daemon is stopping.
    Shutdown,
    /// The pool was removed.
    Gone,
}

fn line_event(line: LogLine) -> SseEvent {
    let body = LogLineBody::from(line);
    SseEvent::default()
        .event("line")
        .data(json!({ "source": body.source, "text": body.text }).to_string())
}

fn end_event(why: &End, pool_id: &PoolId) -> SseEvent {
    let (name, reason) = match why {
        End::Dropped => (
            "dropped",
            format!(
                "slow client: {FOLLOW_BUFFER_LINES} lines waited more than \
                 {FOLLOW_SLOW_CLIENT_MS} ms to be sent; reconnect to go on from the tail"
            ),
        ),
        End::Shutdown => ("shutdown", "the daemon is shutting down".to_string()),
        End::Gone => ("gone", format!("pool {pool_id} was removed")),
    };
    SseEvent::default()
        .event(name)
        .data(json!({ "reason": reason }).to_string())
}

/// The stream: `tail` first, then what is appended to the pool's current log.
fn stream(
    node: NodeHandle,
    pool_id: PoolId,
    path: PathBuf,
    tail: logtail::Tail,
    n: usize,
) -> Response {
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER_LINES);
    let (end_tx, end_rx) = oneshot::channel();
    let follower = Follower::new(path, tail.end);
    let producer = Producer {
        node,
        pool_id: pool_id.clone(),
        tx,
        n,
    };
    tokio::spawn(producer.run(tail.lines, follower, end_tx));
    // The buffered lines first, then the reason the producer ended (sent before it dropped
    // its side of the buffer).
    let out = futures_util::stream::unfold(
        (rx, Some(end_rx), pool_id),
        |(mut rx, end, pool_id)| async move {
            let mut end = end?;
            match rx.recv().await {
                Some(event) => Some((Ok::<_, Infallible>(event), (rx, Some(end), pool_id))),
                None => {
                    let why = end.try_recv().ok()?;
                    let event = end_event(&why, &pool_id);
                    Some((Ok(event), (rx, None, pool_id)))
                }
            }
        },
    );
    sse::respond(out)
}

/// The producer of one stream.
struct Producer {
    node: NodeHandle,
    pool_id: PoolId,
    tx: mpsc::Sender<SseEvent>,
    /// `?tail=`: also the tail sent when a surge switches the log followed.
    n: usize,
}

impl Producer {
    async fn run(self, first: Vec<LogLine>, mut follower: Follower, end: oneshot::Sender<End>) {
        let mut closing = self.node.registry().stopping();
        let mut pending = first;
        let why = loop {
            match self
                .send_all(std::mem::take(&mut pending), &mut closing)
                .await
            {
                Ok(()) => {}
                Err(Some(why)) => break why,
                Err(None) => return, // the client went away
            }
            if *closing.borrow() {
                break End::Shutdown;
            }
            let Some(lane) = lane_of(&self.node, &self.pool_id) else {
                break End::Gone;
            };
            let path = self.node.dirs().log_path_in(self.pool_id.as_str(), lane);
            if path != follower.path() {
                // A surge switched the pool's engine: its log's tail, then on from there.
                let tail = read_tail(path.clone(), self.n).await.unwrap_or_default();
                follower = Follower::new(path, tail.end);
                pending = tail.lines;
                continue;
            }
            let looked = tokio::task::spawn_blocking(move || {
                let looked = follower.look();
                (looked, follower)
            })
            .await;
            let Ok(((lines, more), back)) = looked else {
                return; // the read panicked: a bug, logged by the runtime
            };
            follower = back;
            pending = lines;
            if more || !pending.is_empty() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)) => {}
                _ = closing.wait_for(|closing| *closing) => break End::Shutdown,
                () = self.tx.closed() => return,
            }
        };
        let _ = end.send(why);
    }

    /// Hands `lines` to the connection; `Err(Some(why))` when the stream must end, `Err(None)`
    /// when the client is gone.
    async fn send_all(
        &self,
        lines: Vec<LogLine>,
        closing: &mut watch::Receiver<bool>,
    ) -> Result<(), Option<End>> {
        for line in lines {
            let wait = Duration::from_millis(FOLLOW_SLOW_CLIENT_MS);
            let permit = match sse::reserve(&self.tx, wait, closing).await {
                Ok(permit) => permit,
                Err(NoRoom::ClientGone) => return Err(None),
                Err(NoRoom::TooSlow) => return Err(Some(End::Dropped)),
                Err(NoRoom::Closing) => return Err(Some(End::Shutdown)),
            };
            permit.send(line_event(line));
        }
        Ok(())
    }
}
