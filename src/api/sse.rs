//! What the API's live streams (`GET /v2/events`, `GET /v2/pools/{id}/logs?follow=true`) share:
//! the response with its keep-alive comments, and the producer's wait for room in the bounded
//! buffer between it and the connection, which drops a client that reads too slowly.
//!
//! Owns: [`SSE_KEEP_ALIVE_MS`], [`respond`], [`reserve`].
//! Never: decides what a stream carries or how it ends (each route does).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

/// Interval of the keep-alive comments (`: keep-alive`), sent when nothing else is.
pub const SSE_KEEP_ALIVE_MS: u64 = 15_000;

/// The SSE response over `out`, with keep-alive comments.
pub(super) fn respond<S>(out: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(out)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_millis(SSE_KEEP_ALIVE_MS))
                .text("keep-alive"),
        )
        .into_response()
}

/// Why a producer got no room in its buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoRoom {
    /// The connection is gone (the client went away).
    ClientGone,
    /// The buffer stayed full for the whole wait: the client reads too slowly.
    TooSlow,
    /// The daemon is stopping.
    Closing,
}

/// Room for one message in `tx`: at once, or as soon as the client reads, within `wait`
/// (a buffer full for longer means a client too slow to keep), unless the daemon stops first.
/// The daemon never waits on a client for longer than `wait`.
pub(super) async fn reserve<'a, T>(
    tx: &'a mpsc::Sender<T>,
    wait: Duration,
    closing: &mut watch::Receiver<bool>,
) -> Result<mpsc::Permit<'a, T>, NoRoom> {
    match tx.try_reserve() {
        Ok(permit) => Ok(permit),
        Err(mpsc::error::TrySendError::Closed(())) => Err(NoRoom::ClientGone),
        Err(mpsc::error::TrySendError::Full(())) => tokio::select! {
            permit = tokio::time::timeout(wait, tx.reserve()) => match permit {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_)) => Err(NoRoom::ClientGone),
                Err(_) => Err(NoRoom::TooSlow),
            },
            _ = closing.wait_for(|closing| *closing) => Err(NoRoom::Closing),
        },
    }
}
