//! `GET /v2/events`: the journal's tail as JSON, or (with `Accept: text/event-stream`) a live
//! Server-Sent Events stream of every event as it becomes durable.
//!
//! Owns: the tail's paging (`?since=&limit=`), the SSE stream's framing, resumption and
//! bounds.
//! Never: keeps events of its own: every event sent is read from the journal (through
//! [`NodeHandle::journal_events`](crate::node::NodeHandle::journal_events)), so a stream
//! cannot skip one.
//!
//! # The stream
//!
//! Each event is `id: <seq>`, `event: <kind>` (`EngineSpawned`, ...), `data: <envelope>` (the
//! export form of `journal export`, one line). It starts after `Last-Event-ID` (the last seq
//! the client has), else at `?since=SEQ` (inclusive), else with the next event to come.
//!
//! One producer task per stream reads the journal from the next seq it owes, in chunks of at
//! most [`SSE_READ_CHUNK`], and when it has caught up waits for the registry's change signal
//! (the seq of the last published batch). Because it reads by seq, from where it left off, a
//! stream has no gap and no duplicate, however the wake-ups fall; a reconnect with the last
//! id it received continues exactly after it.
//!
//! Bounds: the producer hands events to the connection through a buffer of
//! [`SSE_BUFFER_EVENTS`]; a client that leaves it full for [`SSE_SLOW_CLIENT_MS`] (it reads
//! slower than events come, and the socket's buffers are full too) is dropped: the buffered
//! events are discarded, the stream's last message is `event: dropped` with `data:
//! {"reason", "last_event_id", "resume_from_seq"}`, the stream ends, and the node counts it
//! (`sse_clients_dropped_total`; a stream the shutdown ends is not counted). The daemon never
//! waits on a client: nothing but that producer task ever waits on its buffer. A comment
//! (`: keep-alive`) goes out every [`SSE_KEEP_ALIVE_MS`](super::sse::SSE_KEEP_ALIVE_MS) when nothing else does. The daemon's
//! shutdown ends every stream with `event: shutdown` (same data), so that the server's
//! graceful stop does not wait on them.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::sse::{self, NoRoom};
use super::{ApiError, ApiState};
use crate::node::NodeHandle;
use crate::schema::PoolEnvelope;

/// Default page of the JSON tail (`?limit=`).
pub const EVENTS_TAIL_LIMIT_DEFAULT: usize = 1_000;
/// Largest page of the JSON tail; a larger `?limit=` is clamped to it.
pub const EVENTS_TAIL_LIMIT_MAX: usize = 10_000;
/// Events a stream's producer reads from the journal at a time.
pub const SSE_READ_CHUNK: usize = 256;
/// Events buffered between a stream's producer and its connection.
pub const SSE_BUFFER_EVENTS: usize = 1_024;
/// How long a full buffer may stay full before its client is dropped.
pub const SSE_SLOW_CLIENT_MS: u64 = 5_000;

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v2/events?since=&limit=`: the JSON tail, or the live stream with `Accept:
/// text/event-stream`.
#[utoipa::path(
    get,
    path = "/v2/events",
    tag = "events",
    operation_id = "journal_events",
    params(
        ("since" = Option<u64>, Query, description = "First seq (inclusive). JSON: pages forward from it (default: the newest `limit` events); stream: starts there (default: the next event to come)"),
        ("limit" = Option<usize>, Query, description = "JSON tail only: at most this many events (default 1000, clamped to 1..=10000)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Stream only: the `id:` (seq) of the last event received; the stream resumes right after it (before `since`)"),
    ),
    responses(
        (status = 200, description = "The journal's tail, oldest first (JSON); with `Accept: text/event-stream`, a live stream: `id: <seq>`, `event: <kind>`, `data: <Envelope>`; a slow client's last message is `event: dropped`, the daemon's shutdown sends `event: shutdown`",
            content(
                (Vec<super::openapi::EnvelopeSchema> = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "`INVALID_REQUEST`: a bad query, or a `Last-Event-ID` / `since` beyond the journal's last event", body = super::openapi::ApiErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = super::openapi::ApiErrorBody),
        (status = 410, description = "`HISTORY_EXPIRED`: `since` (or `Last-Event-ID`) is before the earliest seq retention keeps", body = super::openapi::ApiErrorBody),
        (status = 500, description = "`INTERNAL`: the journal could not be read", body = super::openapi::ApiErrorBody),
    )
)]
pub(super) async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(format!(
            "query: {e} (since=SEQ, limit=1..={EVENTS_TAIL_LIMIT_MAX})"
        ))
    })?;
    let wants_stream = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if wants_stream {
        stream(state, &headers, query.since)
    } else {
        tail(state, query).await
    }
}

/// The JSON tail: `?since=SEQ` (inclusive) pages forward from SEQ; without it, the newest
/// `limit` events. Oldest first either way.
async fn tail(state: ApiState, query: EventsQuery) -> Result<Response, ApiError> {
    let limit = query
        .limit
        .unwrap_or(EVENTS_TAIL_LIMIT_DEFAULT)
        .clamp(1, EVENTS_TAIL_LIMIT_MAX);
    let node = state.node();
    let from = match query.since {
        Some(since) => since.max(1),
        None => node
            .journal_last_seq()
            .saturating_sub(limit as u64 - 1)
            .max(node.journal_first_seq()),
    };
    let envelopes = node.journal_events(from, limit).await?;
    Ok(Json(envelopes_json(&envelopes)?).into_response())
}

/// The live stream from the resume point of `headers` / `since`.
fn stream(state: ApiState, headers: &HeaderMap, since: Option<u64>) -> Result<Response, ApiError> {
    let node = state.node().clone();
    let last = node.journal_last_seq();
    let start = match headers.get("last-event-id") {
        Some(value) => {
            let id = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Last-Event-ID {value:?} is not a seq (the id: of the last event received)"
                    ))
                })?;
            id.saturating_add(1)
        }
        None => since.unwrap_or(last + 1).max(1),
    };
    let earliest = node.journal_first_seq();
    if start < earliest {
        return Err(ApiError::from(crate::node::NodeError::HistoryExpired {
            requested: start,
            earliest,
        }));
    }
    if start > last + 1 {
        return Err(ApiError::invalid(format!(
            "cannot resume at seq {start}: the journal's last event is {last} (is this the \
             daemon the stream came from?); reconnect with Last-Event-ID up to {last}, or \
             ?since= up to {}",
            last + 1
        )));
    }
    let (tx, rx) = mpsc::channel(SSE_BUFFER_EVENTS);
    let (end_tx, end_rx) = oneshot::channel();
    let stopping = node.registry().stopping();
    tokio::spawn(produce(node, stopping, start, tx, end_tx));
    let out = futures_util::stream::unfold(
        Outlet {
            rx,
            end: Some(end_rx),
            last_sent: start - 1,
        },
        Outlet::next,
    );
    Ok(sse::respond(out))
}

/// Why a stream ends on the daemon's side.
#[derive(Debug)]
enum End {
    /// The client read too slowly.
    Dropped,
    /// The daemon is stopping.
    Shutdown,
    /// The journal could not be read.
    Error(String),
}

/// The connection's side of a stream: what the producer buffered, and how it ended.
struct Outlet {
    rx: mpsc::Receiver<(u64, SseEvent)>,
    end: Option<oneshot::Receiver<End>>,
    /// The seq of the last event handed to the connection.
    last_sent: u64,
}

impl Outlet {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Outlet)> {
        let mut end = self.end.take()?;
        // The end first: a dropped client's buffered events are discarded (it resumes from
        // the journal), so that its last message goes out as soon as it reads at all.
        tokio::select! {
            biased;
            why = &mut end => {
                let why = why.ok()?;
                let last = self.last_sent;
                Some((Ok(end_event(&why, last)), self))
            }
            item = self.rx.recv() => match item {
                Some((seq, event)) => {
                    self.last_sent = seq;
                    self.end = Some(end);
                    Some((Ok(event), self))
                }
                // The producer is gone: with a reason (sent before it dropped the buffer), or
                // because the client went away.
                None => {
                    let why = end.try_recv().ok()?;
                    let last = self.last_sent;
                    Some((Ok(end_event(&why, last)), self))
                }
            }
        }
    }
}

/// The last message of a stream that the daemon ends.
fn end_event(why: &End, last_sent: u64) -> SseEvent {
    let resume = format!(
        "reconnect with Last-Event-ID: {last_sent} (or ?since={}) to continue with no gap",
        last_sent + 1
    );
    let (name, reason) = match why {
        End::Dropped => (
            "dropped",
            format!(
                "slow client: {SSE_BUFFER_EVENTS} events waited more than {SSE_SLOW_CLIENT_MS} ms \
                 to be sent; {resume}"
            ),
        ),
        End::Shutdown => ("shutdown", format!("the daemon is shutting down; {resume}")),
        End::Error(what) => (
            "error",
            format!("cannot read the journal: {what}; {resume}"),
        ),
    };
    SseEvent::default().event(name).data(
        json!({
            "reason": reason,
            "last_event_id": last_sent,
            "resume_from_seq": last_sent + 1,
        })
        .to_string(),
    )
}

/// One event as an SSE message: `id: seq`, `event: kind`, `data: envelope`. `Err` (naming the
/// seq) when it cannot be written as JSON: the stream then ends with an `error` message rather
/// than skip it (a stream is gap-free or ends).
fn sse_event(envelope: &PoolEnvelope) -> Result<SseEvent, String> {
    let value = envelope_json(envelope)?;
    let kind = value["event"]["kind"]
        .as_str()
        .unwrap_or("Event")
        .to_string();
    Ok(SseEvent::default()
        .id(envelope.seq.to_string())
        .event(kind)
        .data(value.to_string()))
}

/// An envelope as the API shows it; `Err` names the seq and why it cannot be shown (logged).
pub(super) fn envelope_json(envelope: &PoolEnvelope) -> Result<Value, String> {
    pool_journal::envelope_to_json(envelope).map_err(|e| {
        let why = format!("event seq {} cannot be written as JSON: {e}", envelope.seq);
        tracing::error!("{why}");
        why
    })
}

/// Envelopes as the API lists them; a 500 `INTERNAL` naming the seq rather than a list with a
/// hole in it.
pub(super) fn envelopes_json(envelopes: &[PoolEnvelope]) -> Result<Vec<Value>, ApiError> {
    envelopes
        .iter()
        .map(envelope_json)
        .collect::<Result<_, _>>()
        .map_err(|why| {
            ApiError::new(
                pool_core::ErrorCode::Internal,
                format!("{why}; `pool-managerd journal verify` checks the journal"),
            )
        })
}

/// The producer of one stream: reads the journal from `next` on, hands each event to `tx`,
/// and ends (saying why through `end`) when the client is too slow or the daemon stops.
async fn produce(
    node: NodeHandle,
    mut closing: watch::Receiver<bool>,
    mut next: u64,
    tx: mpsc::Sender<(u64, SseEvent)>,
    end: oneshot::Sender<End>,
) {
    let mut changes = node.registry().subscribe();
    let why = loop {
        if *closing.borrow() {
            break End::Shutdown;
        }
        // Mark the signal seen before reading: a batch published after this point wakes the
        // wait below, one published before it is in what the read returns.
        changes.borrow_and_update();
        let batch = match node.journal_events(next, SSE_READ_CHUNK).await {
            Ok(batch) => batch,
            Err(e) => break End::Error(e.to_string()),
        };
        if batch.is_empty() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break End::Shutdown },
                _ = closing.wait_for(|closing| *closing) => break End::Shutdown,
                _ = tx.closed() => return,
            }
            continue;
        }
        let mut ended = None;
        for envelope in &batch {
            let event = match sse_event(envelope) {
                Ok(event) => event,
                Err(why) => {
                    ended = Some(End::Error(why));
                    break;
                }
            };
            let wait = Duration::from_millis(SSE_SLOW_CLIENT_MS);
            let permit = match sse::reserve(&tx, wait, &mut closing).await {
                Ok(permit) => permit,
                Err(NoRoom::ClientGone) => return,
                Err(NoRoom::TooSlow) => {
                    ended = Some(End::Dropped);
                    break;
                }
                Err(NoRoom::Closing) => {
                    ended = Some(End::Shutdown);
                    break;
                }
            };
            permit.send((envelope.seq, event));
            next = envelope.seq + 1;
        }
        if let Some(why) = ended {
            break why;
        }
    };
    if matches!(why, End::Dropped) {
        node.metrics().sse_client_dropped();
        tracing::warn!(
            next_seq = next,
            "an event stream's client read too slowly and was dropped (it may resume)"
        );
    }
    // The reason first, then the buffer goes (dropping `tx` wakes the connection's side).
    let _ = end.send(why);
    drop(tx);
}
