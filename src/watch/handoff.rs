//! Engines started by someone else (SPEC section 6, last bullet): the watcher of
//! `<runtime>/engines/` and the health check shared with `POST /v2/pools/{id}/handoff`.
//!
//! Owns: finding new or changed handoff files (by mtime and length), reading them bounded,
//! parsing and validating them, checking that the file name matches the content, telling our
//! own handoff files apart (never re-ingested), probing the engine's `{url}/health`, and
//! submitting `Command::RegisterHandoff` or `Observation::HandoffInvalid`.
//! Never: changes a pool itself (the core decides), or panics on a bad file.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pool_core::{Command, Handoff, Observation, PoolId, State};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::port::{HandoffCheck, HandoffRefused, Inbox};
use crate::supervisor::files::RuntimeDirs;
use crate::supervisor::probe::{Health, Prober};

/// How often the watcher lists `<runtime>/engines/` (a poll: no inotify crate; a new file is
/// seen within this delay plus one health probe).
pub const POLL_INTERVAL_MS: u64 = 500;
/// The largest handoff file read; a larger one is refused as invalid.
pub const HANDOFF_FILE_MAX_BYTES: u64 = 64 * 1024;
/// The time limit of the health probe of a handed-off engine.
pub const HANDOFF_PROBE_TIMEOUT_MS: u64 = 2_000;

/// `Err((field, reason))` unless the handoff's URL names an address of this node: checked
/// before any probe, for a file and for `POST .../handoff` alike.
pub fn check_local(handoff: &Handoff) -> Result<(), (String, String)> {
    let (host, _) = pool_core::handoff_url_host_port(&handoff.url)
        .map_err(|why| ("url".to_string(), why.to_string()))?;
    if is_node_address(host) {
        Ok(())
    } else {
        Err((
            "url".into(),
            format!(
                "{host} is not an address of this node: a handoff names an engine running \
                 here (loopback, or an address the node holds)"
            ),
        ))
    }
}

/// Whether the engine at `url` answers `GET {url}/health` with 200 within
/// [`HANDOFF_PROBE_TIMEOUT_MS`]. The URL must name an address of this node (loopback, or one
/// the node can bind): a handoff is not a way to send requests elsewhere. `Err` says what was
/// refused or that no 200 came, never what a remote answered.
pub async fn probe_health(prober: &Prober, url: &str) -> Result<(), String> {
    let (host, _) = pool_core::handoff_url_host_port(url).map_err(|why| format!("url {why}"))?;
    if !is_node_address(host) {
        return Err(format!("url: {host} is not an address of this node"));
    }
    let target = format!("{}/health", url.trim_end_matches('/'));
    // What a remote answered is never echoed: only whether a 200 came.
    match prober.health_url(&target, HANDOFF_PROBE_TIMEOUT_MS).await {
        Health::Healthy => Ok(()),
        Health::NotListening => Err(format!("GET {target}: nothing listens there")),
        Health::Unhealthy(what) if what.contains("timed out") => Err(format!(
            "GET {target}: no answer within {HANDOFF_PROBE_TIMEOUT_MS} ms"
        )),
        Health::Loading(_) | Health::Unhealthy(_) => {
            Err(format!("GET {target} did not answer 200"))
        }
    }
}

/// The check `POST /v2/pools/{id}/handoff` asks of the world: [`check_local`], then
/// [`probe_health`] with one prober for every check.
pub fn checker() -> HandoffCheck {
    let prober = Prober::new();
    HandoffCheck::new(move |handoff| {
        let prober = prober.clone();
        Box::pin(async move {
            check_local(&handoff).map_err(|(field, why)| HandoffRefused::Invalid { field, why })?;
            probe_health(&prober, &handoff.url)
                .await
                .map_err(HandoffRefused::Unhealthy)
        })
    })
}

/// `localhost`, a loopback address, or an address this node holds (one it can bind).
pub fn is_node_address(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return false;
    };
    ip.is_loopback()
        || (!ip.is_unspecified()
            && !ip.is_multicast()
            && std::net::UdpSocket::bind((ip, 0)).is_ok())
}

/// A running watcher; [`HandoffWatcher::stop`] ends it (the daemon's shutdown does).
pub struct HandoffWatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// How many passes over the directory have ended.
    passes: watch::Receiver<u64>,
}

impl HandoffWatcher {
    /// Watches `dirs.engines` for `node` every [`POLL_INTERVAL_MS`].
    pub fn spawn(node: Inbox, dirs: RuntimeDirs) -> HandoffWatcher {
        let (stop, mut stopped) = watch::channel(false);
        let (passed, passes) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut watcher = Watcher {
                node,
                dirs,
                prober: Prober::new(),
                seen: HashMap::new(),
                waiting: HashMap::new(),
            };
            let mut ticker = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => return,
                }
                tokio::select! {
                    _ = watcher.pass() => {}
                    _ = stopped.changed() => return,
                }
                passed.send_modify(|n| *n = n.saturating_add(1));
            }
        });
        HandoffWatcher { stop, task, passes }
    }

    /// The count of passes over the directory that have ended, as it changes: whoever must
    /// know that a file was seen (and what became of it) awaits a pass that began after it.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.clone()
    }

    /// Stops the watcher and waits (bounded) for its task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// A file's identity for "new or changed".
type Stamp = (Option<SystemTime>, u64);

struct Watcher {
    node: Inbox,
    dirs: RuntimeDirs,
    prober: Prober,
    /// Files handled (registered, rejected, skipped) at that stamp; a file not ready yet is
    /// not in here, so the next pass tries it again.
    seen: HashMap<PathBuf, Stamp>,
    /// Files whose engine was not healthy at that stamp (logged once).
    waiting: HashMap<PathBuf, Stamp>,
}

/// What became of one file.
enum Outcome {
    /// Done with at this stamp.
    Handled,
    /// Try again on a later pass (engine not healthy yet, node busy).
    Retry,
}

impl Watcher {
    async fn pass(&mut self) {
        let entries = match std::fs::read_dir(&self.dirs.engines) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(dir = %self.dirs.engines.display(), "cannot list the handoff directory: {e}");
                return;
            }
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp: Stamp = (meta.modified().ok(), meta.len());
            present.push(path.clone());
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            let first_try = self.waiting.get(&path) != Some(&stamp);
            match self.handle(&path, meta.len(), first_try).await {
                Outcome::Handled => {
                    self.waiting.remove(&path);
                    self.seen.insert(path, stamp);
                }
                Outcome::Retry => {
                    self.waiting.insert(path, stamp);
                }
            }
        }
        self.seen.retain(|path, _| present.contains(path));
        self.waiting.retain(|path, _| present.contains(path));
    }

    /// Records `file` as an invalid handoff (`field`: `reason`).
    async fn reject(&self, file: String, field: String, reason: String) -> Outcome {
        tracing::warn!(file = %file, field = %field, "invalid handoff file: {reason}");
        let invalid = Observation::HandoffInvalid {
            file: file.clone(),
            field,
            reason,
        };
        match self.node.submit(invalid).await {
            Ok(_) => Outcome::Handled,
            Err(e) => {
                tracing::warn!(file = %file, "cannot record the invalid handoff: {e}");
                Outcome::Retry
            }
        }
    }

    async fn handle(&self, path: &Path, len: u64, first_try: bool) -> Outcome {
        let file = path.display().to_string();
        let handoff = match read_handoff(path, len, &self.dirs) {
            Ok(handoff) => handoff,
            Err((field, reason)) => return self.reject(file, field, reason).await,
        };
        if is_our_own(&self.node.registry().load().state, &file, &handoff) {
            tracing::debug!(file = %file, "our own handoff file: not re-ingested");
            return Outcome::Handled;
        }
        if let Err((field, reason)) = check_local(&handoff) {
            return self.reject(file, field, reason).await;
        }
        if let Err(why) = probe_health(&self.prober, &handoff.url).await {
            if first_try {
                tracing::info!(file = %file, "handed-off engine not healthy yet ({why}); retrying every {POLL_INTERVAL_MS} ms");
            } else {
                tracing::debug!(file = %file, "handed-off engine still not healthy: {why}");
            }
            return Outcome::Retry;
        }
        let Ok(pool_id) = PoolId::new(&handoff.pool_id) else {
            return Outcome::Handled; // validate() checked it
        };
        let command = Command::RegisterHandoff {
            pool_id: pool_id.clone(),
            handoff,
            path: file.clone(),
        };
        match self.node.submit(command).await {
            Ok(committed) => {
                if committed.envelopes.is_empty() {
                    tracing::debug!(file = %file, pool_id = %pool_id, "handoff already registered");
                } else {
                    tracing::info!(file = %file, pool_id = %pool_id, "handoff registered: pool ready");
                }
                Outcome::Handled
            }
            Err(crate::port::NodeError::ShuttingDown) => Outcome::Retry,
            Err(e) => {
                tracing::warn!(file = %file, pool_id = %pool_id, "handoff refused: {e}");
                Outcome::Handled
            }
        }
    }
}

/// Whether `file` (with `handoff`) is one of our own handoff files: the handoff file of a pool
/// whose engine we spawned, or naming the pid of an engine we spawned.
pub fn is_our_own(state: &State, file: &str, handoff: &Handoff) -> bool {
    state.pools.values().any(|pool| {
        let ours = pool.engine.is_some() || pool.process.as_ref().is_some_and(|p| !p.external);
        let same_file = pool.handoff_path.as_deref() == Some(file);
        let same_pid = handoff.pid.is_some()
            && pool
                .process
                .as_ref()
                .is_some_and(|p| !p.external && Some(p.pid) == handoff.pid);
        (ours && same_file) || same_pid
    })
}

/// Reads, parses and validates the handoff file at `path`; `Err((field, reason))`.
fn read_handoff(path: &Path, len: u64, dirs: &RuntimeDirs) -> Result<Handoff, (String, String)> {
    if len > HANDOFF_FILE_MAX_BYTES {
        return Err((
            "file".into(),
            format!("larger than {HANDOFF_FILE_MAX_BYTES} bytes ({len})"),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(HANDOFF_FILE_MAX_BYTES + 1)
                .read_to_end(&mut bytes)
                .map(|_| ())
        })
        .map_err(|e| ("file".to_string(), format!("cannot read: {e}")))?;
    if bytes.len() as u64 > HANDOFF_FILE_MAX_BYTES {
        return Err((
            "file".into(),
            format!("larger than {HANDOFF_FILE_MAX_BYTES} bytes"),
        ));
    }
    let handoff = parse_handoff(&bytes)?;
    handoff.validate()?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let expected = format!("{}-{}.json", handoff.pool_id, handoff.replica_id);
    if dirs
        .handoff_path(&handoff.pool_id, &handoff.replica_id)
        .is_none()
    {
        return Err((
            "replica_id".into(),
            "not a safe file name part (letters, digits, '.', '_', '-')".into(),
        ));
    }
    if name != expected {
        return Err((
            "pool_id".into(),
            format!("the file name '{name}' does not match its content (expected '{expected}')"),
        ));
    }
    Ok(handoff)
}

/// Parses a handoff document, naming the failing field (`json` for a syntax error).
pub fn parse_handoff(bytes: &[u8]) -> Result<Handoff, (String, String)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let handoff: Handoff = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "json".to_string()
            }
            _ => match missing_field(&message) {
                Some(missing) if path == "." || path.is_empty() => missing,
                Some(missing) => format!("{path}.{missing}"),
                None if path == "." || path.is_empty() => "json".to_string(),
                None => path,
            },
        };
        (field, message)
    })?;
    de.end()
        .map_err(|e| ("json".to_string(), format!("trailing characters: {e}")))?;
    Ok(handoff)
}

/// `missing field `x`` → `x`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        assert_eq!(parse_handoff(b"{not json").unwrap_err().0, "json");
        let missing = br#"{"engine":"x","engine_version":"1","url":"http://h","pool_id":"p","replica_id":"r0","model":{"path":"m"}}"#;
        assert_eq!(parse_handoff(missing).unwrap_err().0, "slots_total");
        let wrong = br#"{"engine":"x","engine_version":"1","url":"http://h","pool_id":"p","replica_id":"r0","model":{"path":"m"},"slots_total":"many"}"#;
        assert_eq!(parse_handoff(wrong).unwrap_err().0, "slots_total");
        let nested = br#"{"engine":"x","engine_version":"1","url":"http://h","pool_id":"p","replica_id":"r0","model":{},"slots_total":2}"#;
        assert_eq!(parse_handoff(nested).unwrap_err().0, "model.path");
    }
}
