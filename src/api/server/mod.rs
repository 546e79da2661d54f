//! The API's accept loop over hyper: the connection cap, the header-read, idle and body
//! timeouts, and graceful shutdown (SECURITY.md, "The HTTP layer").
//!
//! Owns: accepting connections (accept errors back off, never spin), the cap on open
//! connections (kept below the open-file limit; at the cap the oldest connection with no
//! request in flight is closed to make room, and only when every one is busy the new one gets
//! `503 OVERLOADED`), each connection's deadlines, the request body deadline.
//! Never: looks at routes or what a request asks for; never drops a connection while one of
//! its requests is in flight (a shutdown lets it finish).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// Descriptors kept free for the journal, logs, engines' pipes and probes: the cap on API
/// connections stays this far below the open-file soft limit.
pub const FD_RESERVE: usize = 64;
/// Connections being answered `503` at once (each holds a descriptor for at most
/// [`REFUSE_WRITE_TIMEOUT`] plus a short drain); beyond it a refused connection is just closed.
pub const REFUSE_SLOTS: usize = 32;
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one accept-error warning per this interval (the rest are counted into it).
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How the HTTP layer bounds its clients (`[api]` of the configuration).
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// `api.max_connections`: open connections at most (lowered to fit the open-file limit).
    pub max_connections: usize,
    /// `api.header_read_timeout_ms`: a request head must arrive within this, counted from
    /// the accept (first request) or from its first byte (later requests).
    pub header_read_timeout: Duration,
    /// `api.body_read_timeout_ms`: a request body must arrive whole within this.
    pub body_read_timeout: Duration,
    /// `api.idle_timeout_ms`: a keep-alive connection with no request is closed after this.
    pub idle_timeout: Duration,
    /// Where refusals and evictions are counted (`api_connections_refused_total`); `None`:
    /// not counted.
    pub metrics: Option<crate::metrics::SharedMetrics>,
}

impl ServeSettings {
    /// The settings `[api]` of the configuration gives (counted nowhere until `metrics` is set).
    pub fn from_config(api: &crate::config::ApiConfig) -> ServeSettings {
        ServeSettings {
            max_connections: usize::try_from(api.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(api.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(api.idle_timeout_ms),
            metrics: None,
        }
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            metrics: None,
        }
    }
}

/// The request body did not arrive whole within `api.body_read_timeout_ms` (answered 408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (api.body_read_timeout_ms); send it faster or raise the key")]
pub struct BodyTimeout(pub Duration);

/// The cap in force: `max` lowered to the open-file soft limit minus the reserve (`soft`:
/// `None` when unknown or unlimited). Returns the cap and, when lowered, why.
pub fn effective_cap(max: usize, soft: Option<u64>) -> (usize, Option<String>) {
    let Some(soft) = soft else { return (max, None) };
    let room = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_RESERVE + REFUSE_SLOTS)
        .max(1);
    if room >= max {
        return (max, None);
    }
    let why = format!(
        "api.max_connections {max} lowered to {room}: the open-file limit (RLIMIT_NOFILE) is \
         {soft} and {} descriptors are kept for the journal, logs, engines and refusals; raise \
         the limit (LimitNOFILE=, ulimit -n) to allow more",
        FD_RESERVE + REFUSE_SLOTS
    );
    (room, Some(why))
}

fn nofile_soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// One connection's state, shared by its task, its IO, its requests and the registry.
struct ConnState {
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    changed: Notify,
    evict: Notify,
}

struct Times {
    /// When the connection last had no request in flight (the accept, or a response's end).
    idle_since: Instant,
    /// The first byte of the next request head, once one arrived.
    head_started: Option<Instant>,
    /// Whether a request was served already (the first head is due `header_read_timeout`
    /// after the accept).
    served: bool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                head_started: None,
                served: false,
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// When the connection is due to close; `None` while a request is in flight.
    fn deadline(&self, settings: &ServeSettings) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        Some(match (times.served, times.head_started) {
            (false, _) => times.idle_since + settings.header_read_timeout,
            (true, Some(start)) => start + settings.header_read_timeout,
            (true, None) => times.idle_since + settings.idle_timeout,
        })
    }

    fn bytes_read(&self) {
        if self.busy() {
            return;
        }
        let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        if times.head_started.is_none() {
            times.head_started = Some(Instant::now());
            drop(times);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight; dropped with its response body (once written or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut times = self.0.times.lock().unwrap_or_else(|p| p.into_inner());
            times.idle_since = Instant::now();
            times.head_started = None;
            times.served = true;
        }
        self.0.changed.notify_one();
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnState>>,
    metrics: Option<crate::metrics::SharedMetrics>,
}

impl Registry {
    fn count(&self, reason: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_refused(reason);
        }
    }
}

impl Registry {
    /// Makes room for one more under `cap`: closes the oldest connection with no request in
    /// flight. False when every connection is busy.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.open.len() < cap {
            return true;
        }
        let victim = self
            .open
            .iter()
            .find(|(_, state)| !state.busy())
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        if let Some(state) = self.open.remove(&id) {
            tracing::debug!(
                connection = id,
                "API connection cap reached: closing the oldest idle connection"
            );
            state.evict.notify_one();
            self.count("evicted");
        }
        true
    }
}

/// The socket, noting the first byte of each request head and turning hyper's bare error
/// answers into JSON ([`super::bare_errors`]).
struct NotingIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// A JSON answer being written in place of hyper's bare one, and how many of hyper's
    /// bytes it stands for.
    replacing: Option<(Vec<u8>, usize)>,
}

impl NotingIo {
    /// Writes what is left of a replacement; `Ready(Ok(n))`: it is done and stood for `n`.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<Option<usize>>> {
        while let Some((answer, _)) = self.replacing.as_mut() {
            if answer.is_empty() {
                let (_, owed) = self.replacing.take().unwrap_or_default();
                return Poll::Ready(Ok(Some(owed)));
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, answer))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            answer.drain(..n);
        }
        Poll::Ready(Ok(None))
    }
}

impl AsyncRead for NotingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for NotingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() && !self.state.busy() {
            self.replacing = super::bare_errors::json_for_bare_error(buf)
                .map(|(consumed, answer)| (answer, consumed));
        }
        if let Some(owed) = std::task::ready!(self.poll_replacement(cx))? {
            return Poll::Ready(Ok(owed));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that must end by a deadline ([`BodyTimeout`] after it).
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(self.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`] until it is dropped.
struct GuardedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves: then stops accepting, closes the
/// connections with no request in flight, and returns once the others have finished.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (cap, lowered) = effective_cap(settings.max_connections, nofile_soft_limit());
    match lowered {
        Some(why) => tracing::warn!(cap, "{why}"),
        None => tracing::info!(cap, "API connection cap in force (api.max_connections)"),
    }
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let registry = Arc::new(Mutex::new(Registry {
        metrics: settings.metrics.clone(),
        ..Registry::default()
    }));
    let refusals = Arc::new(Semaphore::new(REFUSE_SLOTS));
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let settings = Arc::new(settings);
    let mut accept_errors = AcceptErrors::default();
    let mut stop_rx = stopping.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop_rx.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                accept_errors
                    .back_off(&error, listener.local_addr().ok())
                    .await;
                continue;
            }
        };
        accept_errors.reset();
        let admitted = {
            let mut open = registry.lock().unwrap_or_else(|p| p.into_inner());
            open.make_room(cap).then(|| {
                let state = Arc::new(ConnState::new());
                let id = open.next_id;
                open.next_id += 1;
                open.open.insert(id, state.clone());
                (id, state)
            })
        };
        let Some((id, state)) = admitted else {
            let answered = refuse(stream, &refusals);
            let open = registry.lock().unwrap_or_else(|p| p.into_inner());
            open.count(if answered { "overloaded" } else { "dropped" });
            continue;
        };
        let connection = Connection {
            router: router.clone(),
            settings: settings.clone(),
            state,
            stopping: stopping.clone(),
        };
        let (registry, alive) = (registry.clone(), alive.clone());
        tokio::spawn(async move {
            connection.run(stream).await;
            let mut open = registry.lock().unwrap_or_else(|p| p.into_inner());
            open.open.remove(&id);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_done.recv().await;
    Ok(())
}

/// Accept errors (EMFILE, ENFILE, ECONNABORTED...): warned about at most every
/// [`ACCEPT_WARN_EVERY`], each followed by a pause that grows to [`ACCEPT_BACKOFF_MAX`].
#[derive(Default)]
struct AcceptErrors {
    backoff: Option<Duration>,
    last_warn: Option<Instant>,
    unreported: u64,
}

impl AcceptErrors {
    async fn back_off(&mut self, error: &std::io::Error, addr: Option<std::net::SocketAddr>) {
        self.unreported += 1;
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY)
        {
            tracing::warn!(
                addr = ?addr,
                errors = self.unreported,
                "cannot accept API connections: {error}; pausing accepts (too many open \
                 descriptors: raise the open-file limit or lower api.max_connections)"
            );
            self.last_warn = Some(Instant::now());
            self.unreported = 0;
        }
        let pause = self.backoff.map_or(Duration::from_millis(10), |b| {
            (b * 2).min(ACCEPT_BACKOFF_MAX)
        });
        self.backoff = Some(pause);
        tokio::time::sleep(pause).await;
    }

    fn reset(&mut self) {
        self.backoff = None;
    }
}

/// Answers `503 OVERLOADED` (every connection is busy) and closes, on a refusal slot; with
/// none free the connection is just closed (returns false).
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) -> bool {
    let Ok(slot) = refusals.clone().try_acquire_owned() else {
        return false;
    };
    tokio::spawn(async move {
        let body = serde_json::json!({
            "code": pool_core::ErrorCode::Overloaded,
            "error": "every API connection is busy with a request (api.max_connections); retry later",
        })
        .to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            // Read what the client sent, so that closing does not reset the answer away.
            let mut sink = [0u8; 4096];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(slot);
    });
    true
}

/// One accepted connection.
struct Connection {
    router: Router,
    settings: Arc<ServeSettings>,
    state: Arc<ConnState>,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(NotingIo {
            inner: stream,
            state: self.state.clone(),
            replacing: None,
        });
        let (router, state, limit) = (
            self.router.clone(),
            self.state.clone(),
            self.settings.body_read_timeout,
        );
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = state.request_started();
            let request = request.map(|inner| {
                Body::new(DeadlineBody {
                    inner,
                    deadline: Box::pin(tokio::time::sleep(limit)),
                    limit,
                })
            });
            let mut router = router.clone();
            async move {
                let response = router.call(request).await?;
                Ok::<_, std::convert::Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = self.state.deadline(&self.settings);
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = self.state.evict.notified() => {
                    if !self.state.busy() { return; }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.stopping.wait_for(|s| *s), if !draining => {
                    if !self.state.busy() { return; }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = expired => {
                    if !self.state.busy() { return; }
                }
                _ = self.state.changed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
