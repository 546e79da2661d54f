//! The HTTP client of the commands that ask a running daemon (`status`, `explain`, `logs`):
//! the shared `--addr` argument, the requests (with `LLORCH_API_TOKEN` as the bearer token),
//! the error messages an operator reads when the daemon is unreachable or refuses, and the
//! framing of a Server-Sent Events stream.
//!
//! Owns: [`DaemonAddr`], [`Client`], [`SseFrames`] and its bound ([`SSE_FRAME_MAX_BYTES`]).
//! Never: prints (the commands do), or retries (a command that follows a stream decides
//! whether to reconnect).

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

/// How long a request may take before the daemon counts as unreachable.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The longest event-stream frame kept while it is incomplete: a stream that sends more
/// without a blank line is refused, not buffered without end.
pub const SSE_FRAME_MAX_BYTES: usize = 1024 * 1024;

/// The daemon to ask: `--addr`, `POOL_MANAGERD_ADDR`, or `127.0.0.1:9200`.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonAddr {
    /// The daemon's address (`host:port`, or an `http://` URL).
    #[arg(
        long,
        env = "POOL_MANAGERD_ADDR",
        default_value = "127.0.0.1:9200",
        value_name = "ADDR"
    )]
    pub addr: String,
}

/// A client of one daemon.
pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    pub(super) addr: String,
    token: Option<String>,
}

impl Client {
    pub(super) fn new(addr: &DaemonAddr) -> anyhow::Result<Client> {
        let addr = addr.addr.trim().trim_end_matches('/').to_string();
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base,
            addr,
            token: std::env::var("LLORCH_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    /// `GET path`, with the token when one is set (no timeout: a stream may last).
    pub(super) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; an unreachable daemon or an answer other than 2xx is an error that
    /// says what to do.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let remedy = if self.token.is_some() {
                "the token in LLORCH_API_TOKEN is not the daemon's; set it to the daemon's token"
            } else {
                "the daemon requires a token: set LLORCH_API_TOKEN to it"
            };
            bail!(
                "pool-managerd at {} refused the request (401 UNAUTHORIZED): {remedy}",
                self.addr
            );
        }
        let code = body["code"]
            .as_str()
            .map(|code| format!(" {code}"))
            .unwrap_or_default();
        let said = match body["error"].as_str() {
            Some(said) if !said.is_empty() => format!(": {said}"),
            _ => String::new(),
        };
        bail!(
            "pool-managerd at {} answered {status}{code}{said}",
            self.addr
        )
    }

    /// `GET path` as JSON, within [`REQUEST_TIMEOUT_MS`] (an answer other than 2xx is an error
    /// that says what to do).
    pub(super) async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let request = self
            .get(path)
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        let body = self
            .send(request)
            .await?
            .bytes()
            .await
            .map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "pool-managerd at {} sent an answer to GET {path} that is not JSON",
                self.addr
            )
        })
    }

    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let why = std::error::Error::source(error)
            .map(|source| {
                // The innermost cause ("Connection refused (os error 111)").
                let mut cause: &dyn std::error::Error = source;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                cause.to_string()
            })
            .unwrap_or_else(|| error.to_string());
        anyhow::anyhow!(
            "cannot reach pool-managerd at {} ({why}): is it running? Start it with \
             `pool-managerd serve` (`serve --dev` on a machine without a GPU), or pass --addr \
             (or set POOL_MANAGERD_ADDR) to where it listens",
            self.addr
        )
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SseMessage {
    pub(crate) id: Option<u64>,
    pub(crate) event: String,
    pub(crate) data: String,
}

impl SseMessage {
    /// Parses one frame (the lines before a blank line); `None` for a comment-only frame.
    pub(crate) fn parse(frame: &str) -> Option<SseMessage> {
        let mut message = SseMessage {
            event: "message".to_string(),
            ..SseMessage::default()
        };
        let mut any = false;
        for line in frame.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "id" => message.id = value.parse().ok(),
                "event" => message.event = value.to_string(),
                "data" => {
                    if !message.data.is_empty() {
                        message.data.push('\n');
                    }
                    message.data.push_str(value);
                }
                _ => {}
            }
        }
        any.then_some(message)
    }
}

/// Splits a stream's bytes into messages. Frames are cut on bytes (a chunk may end inside a
/// character) and decoded whole; an incomplete frame is kept up to [`SSE_FRAME_MAX_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct SseFrames {
    buffer: Vec<u8>,
}

impl SseFrames {
    /// Feeds `chunk`; returns the messages it completes. `Err` when a frame grows past
    /// [`SSE_FRAME_MAX_BYTES`] without ending (not an event stream of a daemon).
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<SseMessage>> {
        self.buffer.extend_from_slice(chunk);
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
            if let Some(message) = SseMessage::parse(&String::from_utf8_lossy(&frame)) {
                messages.push(message);
            }
        }
        if self.buffer.len() > SSE_FRAME_MAX_BYTES {
            bail!(
                "the event stream sent a frame of more than {SSE_FRAME_MAX_BYTES} bytes \
                 without its end; is --addr a pool-managerd?"
            );
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_parse() {
        assert_eq!(SseMessage::parse(": keep-alive\n\n"), None);
        let message = SseMessage::parse("id: 7\nevent: PoolReady\ndata: {\"seq\":7}\n\n");
        assert_eq!(
            message,
            Some(SseMessage {
                id: Some(7),
                event: "PoolReady".to_string(),
                data: "{\"seq\":7}".to_string(),
            })
        );
    }

    #[test]
    fn frames_split_inside_a_character_decode_whole() {
        let text = "event: line\ndata: {\"text\":\"é\"}\n\n";
        let bytes = text.as_bytes();
        let cut = text.find('é').unwrap() + 1; // inside the two bytes of 'é'
        let mut frames = SseFrames::default();
        assert!(frames.feed(&bytes[..cut]).unwrap().is_empty());
        let messages = frames.feed(&bytes[cut..]).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].data, "{\"text\":\"é\"}");
    }

    #[test]
    fn a_frame_without_end_is_refused_past_the_bound() {
        let mut frames = SseFrames::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        let refused = loop {
            match frames.feed(&chunk) {
                Ok(messages) => assert!(messages.is_empty()),
                Err(e) => break e,
            }
            fed += chunk.len();
            assert!(fed <= SSE_FRAME_MAX_BYTES, "never refused");
        };
        assert!(refused.to_string().contains("without its end"), "{refused}");
    }
}
