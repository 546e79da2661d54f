//! Progress probes: while a ready pool holds leases, every `[health] progress_interval_ms`,
//! what the engine says it is doing is read and handed to the core's
//! `ProgressWatch` (`pool_core::progress`), which says whether work in progress
//! advances; a stall (work in progress, nothing moving for `[health] stall_after_ms`) is
//! reported as `EngineStalled`, and the core stops the engine as a failure `stalled`.
//!
//! What is read depends on the prepared engine. One that declares its own probe
//! (`prepared.progress`: a request and the status it answers when the engine works, for
//! example a one-token completion) is asked that, with the stall bound as the request's time
//! limit: each answer with the expected status is progress, anything else (another status, no
//! answer within the bound) is none, and work counts as in progress from the first read on, so
//! an engine that stops answering it correctly is stalled after `[health] stall_after_ms`.
//! Otherwise the engine kind (`engine`, else the binary's name) says: vLLM's `/metrics` (`vllm:num_requests_running` > 0 is work; the mark moves with
//! `vllm:generation_tokens_total` and `vllm:prompt_tokens_total`); anything else is read as
//! llama-server: `/slots` (a slot `is_processing` is work; the mark moves with each processing
//! slot's task, `n_decoded` and prompt tokens processed), else, when it runs with `--metrics`,
//! `/metrics` (`llamacpp:requests_processing` > 0 is work; the mark moves with
//! `llamacpp:tokens_predicted_total`, which this server adds to only when a request ends,
//! `llamacpp:n_decode_total`, one per decode step, and `llamacpp:prompt_tokens_total`).
//! An engine that answers none of these (404, 501, not the expected shape) is not watched
//! (said once in the log): its progress is unknown, never a stall. A read that gets no answer
//! counts as no progress while work was in progress (a server whose loop is stuck may still
//! answer `/health`), as nothing otherwise.
//!
//! Owns: the progress reads, their parsing, the loop. Never: decides what a stall means (the
//! core's watch and `decide` do), reads the time other than from the injected clock, or
//! watches an engine it did not start (a handoff has no prepared engine).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use pool_core::progress::{ProgressWatch, Reading, Verdict};
use pool_core::{Observation, PoolId, PreparedEngine, ProgressRequest};
use serde_json::Value;

use super::probe::Prober;
use super::Shared;

/// The most bytes read from a `/slots` answer (it carries each slot's prompt and output).
pub const SLOTS_BODY_MAX: usize = 8 * 1024 * 1024;
/// The most bytes read from a `/metrics` answer.
pub const METRICS_BODY_MAX: usize = 1024 * 1024;
/// The most bytes read from the answer to a declared progress request (only its status
/// counts).
pub const DECLARED_BODY_MAX: usize = 64 * 1024;
/// A progress read's time limit, whatever the interval.
pub const READ_TIMEOUT_MAX_MS: u64 = 5_000;
/// A progress read's least time limit.
pub const READ_TIMEOUT_MIN_MS: u64 = 1_000;

/// Where an engine's progress is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// llama-server's `GET /slots`.
    LlamaSlots,
    /// llama-server's `GET /metrics` (with `--metrics`).
    LlamaMetrics,
    /// vLLM's `GET /metrics`.
    VllmMetrics,
    /// The request the prepared engine declares (`prepared.progress`).
    Declared,
}

impl Source {
    /// The route read.
    pub fn path(self) -> &'static str {
        match self {
            Source::LlamaSlots => "/slots",
            Source::LlamaMetrics | Source::VllmMetrics => "/metrics",
            Source::Declared => "the declared progress request",
        }
    }

    fn body_max(self) -> usize {
        match self {
            Source::LlamaSlots => SLOTS_BODY_MAX,
            Source::LlamaMetrics | Source::VllmMetrics => METRICS_BODY_MAX,
            Source::Declared => DECLARED_BODY_MAX,
        }
    }

    /// Parses an answer's body: `None` when it is not what this source answers.
    pub fn parse(self, body: &[u8]) -> Option<Seen> {
        match self {
            Source::LlamaSlots => parse_slots(&serde_json::from_slice(body).ok()?),
            Source::LlamaMetrics => parse_metrics(
                std::str::from_utf8(body).ok()?,
                "llamacpp:requests_processing",
                &[
                    "llamacpp:tokens_predicted_total",
                    "llamacpp:n_decode_total",
                    "llamacpp:prompt_tokens_total",
                ],
            ),
            Source::VllmMetrics => parse_metrics(
                std::str::from_utf8(body).ok()?,
                "vllm:num_requests_running",
                &["vllm:generation_tokens_total", "vllm:prompt_tokens_total"],
            ),
            // Its answer is judged by its status alone (`read_declared`).
            Source::Declared => None,
        }
    }
}

/// Where the progress of `engine` is read, in order of preference.
pub fn sources(engine: &PreparedEngine) -> Vec<Source> {
    if engine.progress.is_some() {
        return vec![Source::Declared];
    }
    if engine.engine_name().to_ascii_lowercase().contains("vllm") {
        return vec![Source::VllmMetrics];
    }
    let mut sources = vec![Source::LlamaSlots];
    if engine.flags.iter().any(|f| f == "--metrics") {
        sources.push(Source::LlamaMetrics);
    }
    sources
}

/// One parsed answer: the reading, and what the engine said (for logs and `last_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Work in progress (with its mark) or idle.
    pub reading: Reading,
    /// What the engine said, in words.
    pub said: String,
}

/// Why a read gave no reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// The engine has no such route or answered something else than expected: its progress
    /// cannot be read there.
    Unsupported(String),
    /// No answer (refused, timed out, reset).
    Unanswered(String),
}

/// `GET {base_url}{source.path()}` within `timeout_ms`, parsed.
pub async fn read(
    prober: &Prober,
    base_url: &str,
    source: Source,
    timeout_ms: u64,
) -> Result<Seen, ReadFailure> {
    let url = format!("{}{}", base_url.trim_end_matches('/'), source.path());
    let answer = prober
        .get_bounded(&url, timeout_ms, source.body_max())
        .await
        .map_err(ReadFailure::Unanswered)?;
    if answer.status != 200 {
        return Err(ReadFailure::Unsupported(format!(
            "GET {url} answered {}",
            answer.status
        )));
    }
    if answer.truncated {
        return Err(ReadFailure::Unsupported(format!(
            "GET {url} answered more than {} bytes",
            source.body_max()
        )));
    }
    source.parse(&answer.body).ok_or_else(|| {
        ReadFailure::Unsupported(format!("GET {url} answered something else than expected"))
    })
}

/// The declared progress request `request` sent to `base_url` within `timeout_ms` (the stall
/// bound): an answer with its expected status moves the mark (`answered` counts them), any
/// other answer or none leaves it standing. Always work in progress: the engine was asked to
/// do something and either did it or did not.
pub async fn read_declared(
    prober: &Prober,
    base_url: &str,
    request: &ProgressRequest,
    timeout_ms: u64,
    answered: &mut u64,
) -> Seen {
    let url = format!("{}{}", base_url.trim_end_matches('/'), request.path);
    let what = format!("{} {url}", request.method);
    let answer = prober
        .send_bounded(
            &request.method,
            &url,
            request.body.as_deref(),
            timeout_ms,
            DECLARED_BODY_MAX,
        )
        .await;
    let said = match answer {
        Ok(answer) if answer.status == request.expect_status => {
            *answered = answered.wrapping_add(1);
            format!("{what} answered {}", answer.status)
        }
        Ok(answer) => format!(
            "{what} answered {} (expected {})",
            answer.status, request.expect_status
        ),
        Err(why) => why,
    };
    Seen {
        reading: Reading::Working { mark: *answered },
        said,
    }
}

/// llama-server's `/slots`: a list of slots, each with `is_processing` and, once it had a
/// task, `id_task`, `n_prompt_tokens_processed` and `next_token[0].n_decoded` (an object in
/// older servers).
pub fn parse_slots(value: &Value) -> Option<Seen> {
    let slots = value.as_array()?;
    let mut hasher = DefaultHasher::new();
    let mut working = Vec::new();
    for slot in slots {
        if !slot.get("is_processing")?.as_bool()? {
            continue;
        }
        let next = slot.get("next_token");
        let next = next.and_then(|n| n.get(0)).or(next);
        let n_decoded = next
            .and_then(|n| n.get("n_decoded"))
            .or_else(|| slot.get("n_decoded"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let number = |key: &str| slot.get(key).and_then(Value::as_u64).unwrap_or(0);
        let (id, task) = (number("id"), number("id_task"));
        (id, task, n_decoded, number("n_prompt_tokens_processed")).hash(&mut hasher);
        working.push(format!(
            "slot {id} (task {task}): {n_decoded} tokens decoded"
        ));
    }
    Some(if working.is_empty() {
        Seen {
            reading: Reading::Idle,
            said: "no slot processing".to_string(),
        }
    } else {
        Seen {
            reading: Reading::Working {
                mark: hasher.finish(),
            },
            said: format!("processing: {}", working.join(", ")),
        }
    })
}

/// A Prometheus text answer: `working` (summed over its label sets) > 0 is work in progress;
/// the mark moves with any of `counters`. `None` when `working` is not there.
pub fn parse_metrics(text: &str, working: &str, counters: &[&str]) -> Option<Seen> {
    let sum = |name: &str| -> Option<f64> {
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let value = match rest.chars().next() {
                Some('{') => rest.rsplit_once('}').map(|(_, v)| v),
                Some(' ') => Some(rest),
                _ => None,
            };
            let value = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
            if let Some(v) = value {
                found = Some(found.unwrap_or(0.0) + v);
            }
        }
        found
    };
    let running = sum(working)?;
    if running <= 0.0 {
        return Some(Seen {
            reading: Reading::Idle,
            said: format!("{working} {running}"),
        });
    }
    let mut hasher = DefaultHasher::new();
    let mut said = vec![format!("{working} {running}")];
    for name in counters {
        let value = sum(name);
        value.map(f64::to_bits).hash(&mut hasher);
        said.push(format!(
            "{name} {}",
            value.map_or("absent".to_string(), |v| v.to_string())
        ));
    }
    Some(Seen {
        reading: Reading::Working {
            mark: hasher.finish(),
        },
        said: said.join(", "),
    })
}

/// The progress loop of the engine `pid` of `pool_id`, until the pool stops serving with it
/// (a stall reported stops it) or its engine cannot be read.
pub(super) async fn watch(shared: Arc<Shared>, pool_id: PoolId, cause: u64, pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let health = shared.settings.policy.health.clone();
    let interval_ms = health.progress_interval_ms.max(1);
    let interval = Duration::from_millis(interval_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = ProgressWatch::new();
    let mut reader = Reader {
        timeout_ms: interval_ms.clamp(READ_TIMEOUT_MIN_MS, READ_TIMEOUT_MAX_MS),
        // A declared request must answer within the stall bound.
        declared_timeout_ms: health.stall_after_ms.max(1),
        ..Reader::default()
    };
    loop {
        ticker.tick().await;
        let Some((engine, leases)) = serving(&shared, &pool_id, pid) else {
            return;
        };
        if leases == 0 {
            progress.reset();
            continue;
        }
        let reading = match reader.read(&shared.prober, &engine).await {
            Step::Read(reading) => reading,
            Step::Skip(why) => {
                tracing::info!(pool_id = %pool_id, pid, "{why}");
                progress.reset();
                continue;
            }
            Step::End => return,
        };
        let verdict = progress.observe(reading, shared.now_ms(), health.stall_after_ms);
        if let Verdict::Stalled { for_ms } = verdict {
            let detail = format!(
                "engine pid {pid} reports work in progress and made none for {for_ms} ms \
                 (health.stall_after_ms = {}): {}",
                health.stall_after_ms, reader.last_said
            );
            tracing::warn!(pool_id = %pool_id, pid, "{detail}");
            let observation = Observation::EngineStalled {
                pool_id: pool_id.clone(),
                pid,
                detail,
            };
            shared.report(cause, observation).await;
            // Stale to the core if the leases were returned meanwhile: then the engine is
            // watched again from scratch (the loop ends once the pool stops serving).
            progress.reset();
        }
    }
}

/// One engine's progress reads: where they go, and what it said last.
#[derive(Debug, Default)]
struct Reader {
    /// The sources of this engine (found at the first read) and the one read now.
    sources: Option<(Vec<Source>, usize)>,
    /// What the engine said at the last read (for the stall's detail).
    last_said: String,
    /// The declared request's expected answers so far (its mark).
    answered: u64,
    /// A read's time limit.
    timeout_ms: u64,
    /// A declared request's time limit.
    declared_timeout_ms: u64,
}

/// What one read gave.
enum Step {
    /// A reading for the watch.
    Read(Reading),
    /// This source cannot be read (said why); the next one is read at the next tick.
    Skip(String),
    /// Nothing is left to read: the engine is not watched.
    End,
}

impl Reader {
    async fn read(&mut self, prober: &Prober, engine: &PreparedEngine) -> Step {
        let (list, at) = self.sources.get_or_insert_with(|| (sources(engine), 0));
        let Some(source) = list.get(*at).copied() else {
            return Step::End;
        };
        if let (Source::Declared, Some(request)) = (source, &engine.progress) {
            let (url, timeout) = (engine.url(), self.declared_timeout_ms);
            let seen = read_declared(prober, &url, request, timeout, &mut self.answered).await;
            self.last_said = seen.said;
            return Step::Read(seen.reading);
        }
        match read(prober, &engine.url(), source, self.timeout_ms).await {
            Ok(seen) => {
                self.last_said = seen.said;
                Step::Read(seen.reading)
            }
            Err(ReadFailure::Unanswered(why)) => {
                self.last_said = format!("{why} (earlier: {})", self.last_said);
                Step::Read(Reading::Unanswered)
            }
            Err(ReadFailure::Unsupported(why)) => {
                *at += 1;
                let next = list.get(*at).map_or("nothing else to read", |s| s.path());
                Step::Skip(format!(
                    "progress not read at {}: {why}; next: {next}",
                    source.path()
                ))
            }
        }
    }
}

/// The prepared engine and the lease count of `pool_id` while it serves with `pid`.
fn serving(shared: &Shared, pool_id: &PoolId, pid: u32) -> Option<(PreparedEngine, usize)> {
    let published = shared.registry.load();
    let pool = published.state.pool(pool_id.as_str())?;
    if !pool.serving() || pool.pid() != Some(pid) {
        return None;
    }
    Some((pool.engine.clone()?, pool.leases.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mark(seen: &Seen) -> u64 {
        match seen.reading {
            Reading::Working { mark } => mark,
            other => panic!("not working: {other:?}"),
        }
    }

    #[test]
    fn slots_idle_and_processing() {
        let idle = json!([{"id": 0, "n_ctx": 256, "speculative": false, "is_processing": false}]);
        assert_eq!(parse_slots(&idle).unwrap().reading, Reading::Idle);
        let busy = |n: u64| {
            json!([
                {"id": 0, "is_processing": false, "id_task": 1,
                 "next_token": [{"n_decoded": 99}]},
                {"id": 1, "is_processing": true, "id_task": 7, "n_prompt_tokens_processed": 5,
                 "next_token": [{"has_next_token": true, "n_remain": 3, "n_decoded": n}]},
            ])
        };
        let (a, b) = (
            parse_slots(&busy(3)).unwrap(),
            parse_slots(&busy(4)).unwrap(),
        );
        assert_ne!(mark(&a), mark(&b), "the mark moves with n_decoded");
        assert_eq!(mark(&a), mark(&parse_slots(&busy(3)).unwrap()));
        assert!(
            a.said.contains("slot 1 (task 7): 3 tokens decoded"),
            "{}",
            a.said
        );
        // Older servers: next_token an object.
        let old = json!([{"id": 0, "is_processing": true, "next_token": {"n_decoded": 2}}]);
        assert!(parse_slots(&old).unwrap().said.contains("2 tokens decoded"));
        assert_eq!(parse_slots(&json!({"error": "x"})), None);
        assert_eq!(parse_slots(&json!([{"id": 0}])), None);
    }

    #[test]
    fn metrics_of_vllm_and_llama_server() {
        let vllm = |running: f64, tokens: f64| {
            format!(
                "# HELP vllm:num_requests_running Number of requests\n\
                 vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
                 vllm:generation_tokens_total{{model_name=\"m\"}} {tokens}\n\
                 vllm:prompt_tokens_total{{model_name=\"m\"}} 10.0\n"
            )
        };
        let parse = |text: &str| Source::VllmMetrics.parse(text.as_bytes()).unwrap();
        assert_eq!(parse(&vllm(0.0, 5.0)).reading, Reading::Idle);
        let (a, b) = (parse(&vllm(1.0, 5.0)), parse(&vllm(1.0, 6.0)));
        assert_ne!(mark(&a), mark(&b));
        assert_eq!(mark(&a), mark(&parse(&vllm(2.0, 5.0))));
        let llama = "llamacpp:requests_processing 1\nllamacpp:n_decode_total 40\n";
        let seen = Source::LlamaMetrics.parse(llama.as_bytes()).unwrap();
        assert!(
            seen.said.contains("llamacpp:n_decode_total 40"),
            "{}",
            seen.said
        );
        assert!(Source::LlamaMetrics.parse(b"other_metric 1\n").is_none());
        // A longer name that starts with the same words is another metric.
        assert!(Source::LlamaMetrics
            .parse(b"llamacpp:requests_processing_x 1\n")
            .is_none());
    }
}
