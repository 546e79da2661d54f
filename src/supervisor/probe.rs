//! Health probes of engines over HTTP: `GET {health_path}` and llama-server's `/props`, and
//! the bounded requests of the progress reads (`progress.rs` says what those answers mean).
//!
//! Owns: what an answer means (200 healthy; 503 loading, with llama-server's body or the older
//! `{"status":"loading model"}`; refused connection: not listening yet; anything else
//! unhealthy), the slot count fallbacks (`/props` `total_slots`, then `--parallel N`), and
//! bounded timeouts and body sizes.
//! Never: decides what a failure means; the core counts failures.

use std::time::Duration;

use pool_core::PreparedEngine;

/// One probe's time limit (connect + answer).
pub const PROBE_TIMEOUT_MS: u64 = 2_000;
/// The most bytes read from a 503 answer's body (its end is shown in `last_error`).
const LOADING_BODY_MAX: usize = 4 * 1024;
/// The most bytes read from a `/props` answer.
const PROPS_BODY_MAX: usize = 256 * 1024;

/// What one health probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 200.
    Healthy,
    /// 503: still loading (the body, shortened).
    Loading(String),
    /// Connection refused: not listening yet.
    NotListening,
    /// Anything else: status, timeout, reset (what happened).
    Unhealthy(String),
}

impl Health {
    /// For `last_error` and logs.
    pub fn describe(&self) -> String {
        match self {
            Health::Healthy => "healthy".into(),
            Health::Loading(body) => format!("503 loading: {body}"),
            Health::NotListening => "connection refused (not listening)".into(),
            Health::Unhealthy(what) => what.clone(),
        }
    }
}

/// What `/props` told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    /// `total_slots`.
    pub total_slots: Option<u32>,
    /// `build_info` (the engine's version).
    pub build_info: Option<String>,
}

/// An HTTP client for probes (one per daemon; connections are pooled).
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Prober {
    /// A client with the probe timeouts, no proxy (engines are local).
    pub fn new() -> Prober {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(PROBE_TIMEOUT_MS))
            .timeout(Duration::from_millis(PROBE_TIMEOUT_MS))
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_default();
        Prober { client }
    }

    /// `GET {url}{health_path}`, answered within `timeout_ms` (at most [`PROBE_TIMEOUT_MS`]).
    pub async fn health(&self, engine: &PreparedEngine, timeout_ms: u64) -> Health {
        let url = format!("{}{}", engine.url(), engine.health_path);
        self.health_url(&url, timeout_ms).await
    }

    /// `GET url`, answered within `timeout_ms` (at most [`PROBE_TIMEOUT_MS`]).
    pub async fn health_url(&self, url: &str, timeout_ms: u64) -> Health {
        let url = url.to_string();
        let timeout_ms = timeout_ms.clamp(1, PROBE_TIMEOUT_MS);
        let request = self
            .client
            .get(&url)
            .timeout(Duration::from_millis(timeout_ms));
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200 => Health::Healthy,
                    503 => {
                        let body = read_bounded(response, LOADING_BODY_MAX).await;
                        let body = String::from_utf8_lossy(&body);
                        Health::Loading(pool_core::tail_text(&body, 200))
                    }
                    other => Health::Unhealthy(format!("GET {url} answered {other}")),
                }
            }
            Err(e) if e.is_connect() => Health::NotListening,
            Err(e) if e.is_timeout() => {
                Health::Unhealthy(format!("GET {url} timed out after {timeout_ms} ms"))
            }
            Err(e) => Health::Unhealthy(format!("GET {url} failed: {e}")),
        }
    }

    /// `GET {url}/props`; empty when the engine has no such route.
    pub async fn props(&self, engine: &PreparedEngine) -> Props {
        let url = format!("{}/props", engine.url());
        let Ok(response) = self.client.get(&url).send().await else {
            return Props::default();
        };
        if !response.status().is_success() {
            return Props::default();
        }
        let bytes = read_bounded(response, PROPS_BODY_MAX + 1).await;
        if bytes.len() > PROPS_BODY_MAX {
            return Props::default();
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Props::default();
        };
        Props {
            total_slots: value
                .get("total_slots")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1),
            build_info: value
                .get("build_info")
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(|s| pool_core::tail_text(s, 256)),
        }
    }
}

/// What a bounded `GET` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body's first `max` bytes.
    pub body: Vec<u8>,
    /// The body was longer than `max` (the rest was never read).
    pub truncated: bool,
}

impl Prober {
    /// `GET url`, answered (body included) within `timeout_ms`, reading at most `max` bytes
    /// of the body. `Err`: no answer (refused, timed out, reset), said with the url.
    pub async fn get_bounded(
        &self,
        url: &str,
        timeout_ms: u64,
        max: usize,
    ) -> Result<Answer, String> {
        self.send_bounded("GET", url, None, timeout_ms, max).await
    }

    /// `method url` with `body` as JSON (when given), answered (body included) within
    /// `timeout_ms`, reading at most `max` bytes of the answer's body. `Err`: no answer, or a
    /// method this client cannot send, said with the method and url.
    pub async fn send_bounded(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        timeout_ms: u64,
        max: usize,
    ) -> Result<Answer, String> {
        let verb = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| format!("{method} {url}: not a method: {e}"))?;
        let mut request = self
            .client
            .request(verb, url)
            .timeout(Duration::from_millis(timeout_ms.max(1)));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("{method} {url} timed out after {timeout_ms} ms")
            } else {
                format!("{method} {url} failed: {e}")
            }
        })?;
        let status = response.status().as_u16();
        let body = read_bounded(response, max.saturating_add(1)).await;
        let truncated = body.len() > max;
        let mut body = body;
        body.truncate(max);
        Ok(Answer {
            status,
            body,
            truncated,
        })
    }
}

/// `--parallel N`, `--parallel=N`, `-np N` among the flags.
pub fn parallel_flag(flags: &[String]) -> Option<u32> {
    let mut iter = flags.iter();
    while let Some(flag) = iter.next() {
        let value = match flag.as_str() {
            "--parallel" | "-np" => iter.next().map(String::as_str),
            other => other.strip_prefix("--parallel="),
        };
        if let Some(n) = value
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n >= 1)
        {
            return Some(n);
        }
    }
    None
}

/// The first `max` bytes of `response`'s body; the rest is never read.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(max - body.len())]),
            _ => break,
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_flag_forms() {
        let f = |v: &[&str]| parallel_flag(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(f(&["-m", "x", "--parallel", "8"]), Some(8));
        assert_eq!(f(&["-np", "2"]), Some(2));
        assert_eq!(f(&["--parallel=3"]), Some(3));
        assert_eq!(f(&["--parallel"]), None);
        assert_eq!(f(&["--parallel", "0"]), None);
        assert_eq!(f(&[]), None);
    }
}
