//! The published journal read back from NATS JetStream, for the commands that rebuild from it
//! (`cluster events`, `replay --nats`, `journal restore --nats`): the messages of one node or
//! of every node, in stream order, each decoded back to the envelope it was published from and
//! checked against its `Nats-Msg-Id` and its subject.
//!
//! Owns: the ephemeral pull consumer of a read (filtered by subject, every message, no acks),
//! the end of a read (the matching messages the stream held when the read began: a read never
//! waits for later ones), the decoding of a payload, and the checks of one node's history
//! (seq 1 first, then no gap but a declared loss; a seq read again is skipped and counted).
//! Never: writes to the stream or to a journal, or waits on the server without a bound (every
//! call has a timeout, every fetch a bounded batch).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, ErrorCode};
use futures_util::StreamExt as _;
use pool_core::Event;
use serde::Deserialize;

use super::connect::{connect_command, Access, COMMAND_RETRY_PAUSE, COMMAND_TRIES};
use super::{subject, token, ACK_TIMEOUT};
use crate::schema::PoolEnvelope;

/// How long one call to the server (a stream's info, a consumer's creation, a fetch) may take.
pub const CALL_TIMEOUT: Duration = ACK_TIMEOUT;
/// The most messages one fetch asks for.
pub const FETCH_BATCH_MAX: usize = 256;
/// How the error of a missing stream begins (it is not tried again).
const NO_STREAM: &str = "there is no stream";
/// How long the server keeps a read's consumer once nobody fetches (a read that ends without
/// deleting it, e.g. a killed command).
pub const CONSUMER_INACTIVE: Duration = Duration::from_secs(60);

/// Why a read failed: the message names the URL, the stream, the node or the stream seq, and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

/// One message read back: the node that published it, where it is in the stream, and the
/// journal envelope it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The node id (from `Nats-Msg-Id`, checked against the subject).
    pub node: String,
    /// The message's sequence in the stream.
    pub stream_seq: u64,
    /// The journal event as the node recorded it.
    pub envelope: PoolEnvelope,
}

/// The subject filter of a read: every node or one, every pool or one (`_node` events belong
/// to no pool, so a pool filter leaves them out).
pub fn filter_subject(node: Option<&str>, pool: Option<&str>) -> String {
    match (node, pool) {
        (None, None) => "pool.events.>".to_string(),
        (Some(node), None) => format!("pool.events.{}.>", token(node)),
        (None, Some(pool)) => format!("pool.events.*.{}", token(pool)),
        (Some(node), Some(pool)) => subject(node, Some(pool)),
    }
}

/// Fails unless `id` can be a node or pool id (letters, digits, `.`, `_`, `-`): anything else
/// would be a wildcard or a separator in a subject filter.
fn check_id(what: &str, id: &str) -> Result<(), ReadError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        return Ok(());
    }
    Err(ReadError(format!(
        "{what} {id:?} is not an id: 1 to 64 letters, digits, '.', '_' or '-'"
    )))
}

/// The export form of an envelope, as published (`pool_journal::envelope_to_json`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    seq: u64,
    ts_ms: u64,
    pool_id: Option<String>,
    cause: Option<u64>,
    event: serde_json::Value,
}

/// A message's payload back to its envelope (the reverse of `pool_journal::envelope_to_json`).
pub fn decode_payload(bytes: &[u8]) -> Result<PoolEnvelope, String> {
    let payload: Payload = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let event = pool_journal::event_from_json::<Event>(payload.event)
        .map_err(|e| format!("seq {}: {e}", payload.seq))?;
    Ok(PoolEnvelope {
        seq: payload.seq,
        ts_ms: payload.ts_ms,
        pool_id: payload.pool_id,
        cause: payload.cause,
        event,
    })
}

/// `call` until it succeeds, at most [`COMMAND_TRIES`] times (a cluster that lost a stream's
/// leader answers nothing until it elected another); a missing stream is not tried again.
async fn again<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, ReadError>
where
    Fut: std::future::Future<Output = Result<T, ReadError>>,
{
    let mut tries = 1;
    loop {
        match call().await {
            Err(e) if tries < COMMAND_TRIES && !e.0.starts_with(NO_STREAM) => {
                tracing::debug!("{e}; trying again");
            }
            done => return done,
        }
        tries += 1;
        tokio::time::sleep(COMMAND_RETRY_PAUSE).await;
    }
}

/// `future` within [`CALL_TIMEOUT`]; the error names `what` and where.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReadError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ReadError(format!("{what}: {e}"))),
        Err(_) => Err(ReadError(format!(
            "{what}: no answer within {}s (is the server up, and JetStream on: nats-server -js?)",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// A stream of published journals on a server, ready to be read.
pub struct Source {
    js: jetstream::Context,
    url: String,
    stream: String,
}

impl Source {
    /// Connects to `url` (within the commands' connect timeout) and checks that `stream`
    /// exists.
    pub async fn connect(url: &str, stream: &str, access: &Access) -> Result<Source, ReadError> {
        let client = connect_command(url, access).await.map_err(ReadError)?;
        let mut js = jetstream::new(client);
        js.set_timeout(CALL_TIMEOUT);
        let source = Source {
            js,
            url: url.to_string(),
            stream: stream.to_string(),
        };
        again(|| source.stream()).await?;
        Ok(source)
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, ReadError> {
        let (url, name) = (&self.url, &self.stream);
        let found = tokio::time::timeout(CALL_TIMEOUT, self.js.get_stream(name)).await;
        match found {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(error)
                    if error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Err(ReadError(format!(
                        "{NO_STREAM} {name} at {url}: no daemon published there yet, or \
                         under another name (pass --stream NAME); publishing is configured by \
                         [cluster] nats_url (and [cluster] stream) on each daemon"
                    )))
                }
                _ => Err(ReadError(format!(
                    "cannot read the stream {name} at {url}: {e} (is JetStream on: nats-server \
                     -js?)"
                ))),
            },
            Err(_) => Err(ReadError(format!(
                "the stream {name} at {url}: no answer within {}s (is JetStream on: nats-server \
                 -js?)",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// One node's whole history, in seq order: it must start at seq 1 and have no gap but a
    /// declared loss (a message that repeats a seq already read is skipped and counted).
    pub async fn node(&self, node: &str) -> Result<Reader, ReadError> {
        check_id("node", node)?;
        let what = format!("node {node}'s events");
        let mut reader = self.open(filter_subject(Some(node), None), what).await?;
        reader.seqs.gap_free = Some(node.to_string());
        Ok(reader)
    }

    /// The events of every node (or of `node`), of every pool (or of `pool`), in stream order.
    pub async fn events(
        &self,
        node: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Reader, ReadError> {
        node.map(|node| check_id("node", node)).transpose()?;
        pool.map(|pool| check_id("pool", pool)).transpose()?;
        let what = match (node, pool) {
            (None, None) => "the events of every node".to_string(),
            (Some(node), None) => format!("node {node}'s events"),
            (None, Some(pool)) => format!("pool {pool}'s events"),
            (Some(node), Some(pool)) => format!("node {node}'s events of pool {pool}"),
        };
        self.open(filter_subject(node, pool), what).await
    }

    /// [`Source::try_open`], tried again while the cluster elects a leader.
    async fn open(&self, filter: String, what: String) -> Result<Reader, ReadError> {
        again(|| self.try_open(filter.clone(), what.clone())).await
    }

    async fn try_open(&self, filter: String, what: String) -> Result<Reader, ReadError> {
        let at = format!("the stream {} at {}", self.stream, self.url);
        let mut stream = self.stream().await?;
        let end_seq = bounded(&at, stream.info()).await?.state.last_sequence;
        let config = pull::Config {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: CONSUMER_INACTIVE,
            ..Default::default()
        };
        let consumer: PullConsumer = bounded(&at, stream.create_consumer(config)).await?;
        let total = consumer.cached_info().num_pending;
        Ok(Reader {
            js: self.js.clone(),
            consumer,
            stream: self.stream.clone(),
            what,
            total,
            received: 0,
            end_seq,
            done: total == 0,
            seqs: Seqs::default(),
        })
    }
}

/// A read in progress: [`Reader::next_batch`] until `None`, then [`Reader::close`].
pub struct Reader {
    js: jetstream::Context,
    consumer: PullConsumer,
    stream: String,
    what: String,
    /// The matching messages the stream held when the read began.
    total: u64,
    received: u64,
    /// The stream's last seq when the read began: nothing after it is read.
    end_seq: u64,
    done: bool,
    seqs: Seqs,
}

impl Reader {
    /// How many matching messages the stream held when the read began.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many messages repeated a seq already read for their node, and were skipped.
    pub fn duplicates(&self) -> u64 {
        self.seqs.duplicates
    }

    /// The next messages (at most [`FETCH_BATCH_MAX`]; possibly none when every one was a
    /// repeat), or `None` once the read is over.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Published>>, ReadError> {
        if self.done || self.received >= self.total {
            return Ok(None);
        }
        let want = usize::try_from(self.total - self.received)
            .unwrap_or(usize::MAX)
            .min(FETCH_BATCH_MAX);
        let messages = self.fetch(want).await?;
        if messages.is_empty() {
            return Err(ReadError(format!(
                "the stream {} stopped delivering {}: {} of {} message(s) read, then none within \
                 {}s (were messages removed meanwhile?); try again",
                self.stream,
                self.what,
                self.received,
                self.total,
                CALL_TIMEOUT.as_secs()
            )));
        }
        let mut out = Vec::with_capacity(messages.len());
        for message in &messages {
            let info = message.info().map_err(|e| {
                ReadError(format!(
                    "the stream {}: a message of {} without its JetStream reply ({e})",
                    self.stream, self.what
                ))
            })?;
            let (stream_seq, pending) = (info.stream_sequence, info.pending);
            self.received += 1;
            if stream_seq > self.end_seq {
                self.done = true; // published after the read began
                break;
            }
            self.done = pending == 0;
            let published = self.decode(message, stream_seq)?;
            let at = format!("stream seq {stream_seq}");
            if self.seqs.admit(&published, &self.stream, &at)? {
                out.push(published);
            }
            if self.done {
                break;
            }
        }
        Ok(Some(out))
    }

    /// Up to `want` messages, in stream order.
    async fn fetch(&self, want: usize) -> Result<Vec<jetstream::Message>, ReadError> {
        let read = async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(want)
                .expires(CALL_TIMEOUT)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(want);
            while let Some(message) = batch.next().await {
                out.push(message.map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(out)
        };
        let what = format!("reading {} from the stream {}", self.what, self.stream);
        // The batch itself ends after its `expires`; this bounds the whole fetch.
        let fetched = tokio::time::timeout(CALL_TIMEOUT * 2, read).await;
        fetched
            .map_err(|_| ReadError(format!("{what}: no answer within {:?}", CALL_TIMEOUT * 2)))?
            .map_err(|e| ReadError(format!("{what}: {e}")))
    }

    /// A message back to its node and envelope, checked against its id and subject.
    fn decode(
        &self,
        message: &jetstream::Message,
        stream_seq: u64,
    ) -> Result<Published, ReadError> {
        let at = format!(
            "the stream {}'s seq {stream_seq} (subject {})",
            self.stream, message.subject
        );
        let not_ours = |why: String| {
            ReadError(format!(
                "{at}: {why}; a message not published by pool-managerd is in the stream's \
                 subjects (pool.events.>): remove it, or read another --stream"
            ))
        };
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|value| value.as_str().to_string())
            .ok_or_else(|| not_ours("it has no Nats-Msg-Id".to_string()))?;
        let (node, seq) = id
            .rsplit_once(':')
            .and_then(|(node, seq)| Some((node, seq.parse::<u64>().ok()?)))
            .filter(|(node, _)| !node.is_empty())
            .ok_or_else(|| not_ours(format!("its Nats-Msg-Id '{id}' is not <node>:<seq>")))?;
        let envelope = decode_payload(&message.payload)
            .map_err(|why| not_ours(format!("its payload is not a journal event ({why})")))?;
        if envelope.seq != seq {
            return Err(not_ours(format!(
                "its Nats-Msg-Id '{id}' does not match its payload's seq {}",
                envelope.seq
            )));
        }
        let want = subject(node, envelope.pool_id.as_deref());
        if message.subject.as_str() != want {
            return Err(not_ours(format!(
                "its Nats-Msg-Id '{id}' and its pool say the subject {want}"
            )));
        }
        Ok(Published {
            node: node.to_string(),
            stream_seq,
            envelope,
        })
    }

    /// Deletes the read's consumer (bounded; the server would drop it after
    /// [`CONSUMER_INACTIVE`] anyway).
    pub async fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        let delete = self.js.delete_consumer_from_stream(name, &self.stream);
        let _ = tokio::time::timeout(CALL_TIMEOUT, delete).await;
    }
}

/// The seqs read so far, per node, and the checks of a node's history.
#[derive(Debug, Default)]
struct Seqs {
    last: HashMap<String, u64>,
    duplicates: u64,
    /// The node whose history must be whole (seq 1 first, no gap but a declared loss).
    gap_free: Option<String>,
}

impl Seqs {
    /// Whether `published` is new for its node; an error when it breaks the node's history.
    fn admit(&mut self, published: &Published, stream: &str, at: &str) -> Result<bool, ReadError> {
        let node = &published.node;
        if let Some(wanted) = &self.gap_free {
            if node != wanted {
                return Err(ReadError(format!(
                    "the stream {stream}'s message at {at} is node {node}'s, among node \
                     {wanted}'s (two node ids with the same subject token?)"
                )));
            }
        }
        let last = self.last.entry(node.clone()).or_insert(0);
        let seq = published.envelope.seq;
        if seq <= *last {
            // Published again after the server's duplicate window (a lost cursor).
            self.duplicates += 1;
            return Ok(false);
        }
        let declared = matches!(
            &published.envelope.event,
            Event::JournalLossAccepted { from_seq, to_seq, .. }
                if *to_seq == seq && *from_seq == *last + 1
        );
        if self.gap_free.is_some() && seq != *last + 1 && !declared {
            return Err(gap(node, stream, *last, seq, at));
        }
        *last = seq;
        Ok(true)
    }
}

/// The error of a missing seq in a node's history.
fn gap(node: &str, stream: &str, last: u64, seq: u64, at: &str) -> ReadError {
    let missing = if seq == last + 2 {
        format!("seq {} is missing", last + 1)
    } else {
        format!("seqs {}..={} are missing", last + 1, seq - 1)
    };
    let found = if last == 0 {
        format!("node {node}'s first event on the stream {stream} is seq {seq} ({at}), not seq 1")
    } else {
        format!("on the stream {stream}, node {node}'s seq {last} is followed by seq {seq} ({at})")
    };
    ReadError(format!(
        "{found}: {missing}, so its history cannot be rebuilt from the stream (the stream's \
         limits or a purge removed them, or they were never published); use the node's journal \
         or a backup of it"
    ))
}

#[cfg(test)]
mod tests;
