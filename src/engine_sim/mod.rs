//! `engine-sim`: a test engine for pool-managerd's supervisor tests (SPEC §8). Not a server for
//! production: it serves no model and runs no inference.
//!
//! Seen from a supervisor it behaves like llama.cpp's `llama-server`: the port listens from the
//! start; every request answers 503 with llama-server's "Loading model" body while the "model"
//! loads, then `GET /health` answers 200 `{"status":"ok"}`, `GET /props` reports `total_slots`,
//! `build_info` and `model_path`, `GET /slots` lists the slots (`id`, `n_ctx`, `speculative`,
//! `is_processing`, and a slot's task with its `n_decoded` advancing while a completion is
//! served), `GET /metrics` is 501 as without `--metrics`, `POST /completion` answers the shape
//! of a completion (filler words, one every `--token-ms`: no model runs), anything else is
//! 404. The bodies
//! are llama-server's, compared with a real one (tests/llama.rs runs the real server). SIGTERM
//! and SIGINT make it exit 0 at once. It logs a few llama-server-like lines to stdout/stderr.
//!
//! Flags make it misbehave on purpose: a load time, never becoming healthy, a crash after N ms
//! (with an exit code, or a real death by a signal), hanging (the listener stays open but no
//! request is ever answered), stalling (`/health` still 200, `/slots` showing a
//! slot processing whose `n_decoded` never moves), ignoring SIGTERM, printing a CUDA error and
//! exiting, and holding resident host memory. Arguments after a `--` are ignored. The flags are listed by `--help`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use clap::Parser;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use serde_json::json;
use tokio::time::Instant;

mod slots;
mod start;

/// llama-server's answer to every request while the model loads (byte for byte).
const LOADING_BODY: &str =
    r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;
/// llama-server's answer to an unknown route.
const NOT_FOUND_BODY: &str =
    r#"{"error":{"message":"File Not Found","type":"not_found_error","code":404}}"#;
/// llama-server's answer to `GET /metrics` when it was started without `--metrics`.
const NO_METRICS_BODY: &str = r#"{"error":{"code":501,"message":"This server does not support metrics endpoint. Start it with `--metrics`","type":"not_supported_error"}}"#;

/// A test engine that behaves like llama-server and misbehaves on purpose when told.
#[derive(Parser, Debug)]
#[command(name = "engine-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on (required). If it cannot be bound, exit 1.
    #[arg(long)]
    port: u16,

    /// Model path, reported in /props as `model_path` (the file need not exist).
    #[arg(short = 'm', long, default_value = "sim.gguf")]
    model: String,

    /// Number of slots, reported in /props as `total_slots` (`-np N` is accepted too).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,

    /// Context size, reported in /props as `default_generation_settings.n_ctx`.
    #[arg(short = 'c', long, default_value_t = 4096)]
    ctx_size: u32,

    /// Text reported in /props as `build_info`.
    #[arg(long, default_value = "b0-engine-sim")]
    build_info: String,

    /// Leave `total_slots` out of /props (to test a supervisor's fallback).
    #[arg(long)]
    no_slots_in_props: bool,

    /// Answer /props with this HTTP status (e.g. 404, 501) and a llama-server-style error body,
    /// to test a supervisor's fallback; a 2xx status answers the normal body.
    #[arg(long, value_name = "CODE", value_parser = parse_status)]
    props_status: Option<StatusCode>,

    /// Milliseconds from start until the model is "loaded" (503 until then).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    load_ms: u64,

    /// Never finish loading: answer 503 "Loading model" forever.
    #[arg(long)]
    never_healthy: bool,

    /// After this many ms from start, write a line to stderr and exit with --exit-code (or die
    /// by --crash-signal). 0 exits at start, before the port listens.
    #[arg(long, value_name = "MS")]
    crash_after_ms: Option<u64>,

    /// Exit code used by --crash-after-ms.
    #[arg(long, value_name = "C", default_value_t = 1)]
    exit_code: i32,

    /// With --crash-after-ms: die by this signal instead of exiting (a real signal death as seen
    /// by waitpid): a name with or without SIG (SEGV, SIGABRT, KILL, TERM, BUS...) or a number.
    #[arg(long, value_name = "SIG", value_parser = parse_signal, requires = "crash_after_ms")]
    crash_signal: Option<Signal>,

    /// After this many ms from start, keep the listener open but never answer any request.
    #[arg(long, value_name = "MS")]
    hang_after_ms: Option<u64>,

    /// After this many ms from start, stall: `/health` still answers 200, `/slots` shows slot 0
    /// processing a task whose `n_decoded` never moves again, and no completion advances or
    /// ends.
    #[arg(long, value_name = "MS")]
    stall_after_ms: Option<u64>,

    /// Milliseconds per generated token of a completion (0: all at once).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    token_ms: u64,

    /// Log and ignore SIGTERM (SIGKILL is then needed to stop it).
    #[arg(long)]
    ignore_sigterm: bool,

    /// After this many ms from start, print --cuda-error-message to stderr and exit 1.
    #[arg(long, value_name = "MS")]
    cuda_error_after_ms: Option<u64>,

    /// The CUDA error text; a literal `\n` in it starts a new line.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "CUDA error: an illegal memory access was encountered",
        requires = "cuda_error_after_ms"
    )]
    cuda_error_message: String,

    /// Load the model file like llama-server: if the -m file is missing, or its first line is
    /// `broken`, print "failed to load model" and exit 1 after 100 ms.
    #[arg(long)]
    check_model: bool,

    /// If this file exists at start, print a line and exit 1 after 100 ms (a model that fails
    /// to load until someone fixes it: remove the file).
    #[arg(long, value_name = "PATH")]
    fail_while_file_exists: Option<std::path::PathBuf>,

    /// After this many ms from start, print --log-line to stderr and keep running (a fault
    /// that does not kill the engine, for a supervisor's log watcher).
    #[arg(long, value_name = "MS")]
    log_line_after_ms: Option<u64>,

    /// The line --log-line-after-ms prints.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "CUDA error: an illegal memory access was encountered",
        requires = "log_line_after_ms"
    )]
    log_line: String,

    /// Write about this many bytes per second of log lines to stdout (`engine-sim: log line N
    /// xxx...`, 100 bytes each), in bursts every 10 ms, for as long as it runs (a chatty
    /// engine, for log rotation).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    log_spam_bytes_per_sec: u64,

    /// Allocate this many MiB of host memory at start, touch every page so it is resident, and
    /// keep it for the life of the process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    alloc_mb: usize,

    /// llama-server's split of the model over the visible GPUs (`0.6,0.4`), as pool-managerd
    /// passes a planned `tensor_split`: accepted and logged (engine-sim uses no GPU).
    #[arg(long, value_name = "RATIOS")]
    tensor_split: Option<String>,

    /// Print the descriptors open at start, before engine-sim opens any of its own
    /// (`descriptors at start: 0 1 2`): what a supervisor let through exec.
    #[arg(long)]
    list_fds: bool,

    /// At start, fork a worker (`sleep 86400`) into a process group of its own that ignores
    /// SIGTERM, as a tensor-parallel worker or a forked helper may: it stays in the engine's
    /// session and outlives the engine unless its supervisor ends the whole session. Its pid
    /// is printed (`worker pid N in a process group of its own`).
    #[arg(long)]
    fork_worker: bool,

    /// Everything after `--` is accepted and ignored.
    #[arg(last = true, hide = true)]
    _ignored: Vec<String>,
}

fn parse_status(s: &str) -> Result<StatusCode, String> {
    let code: u16 = s.parse().map_err(|e| format!("{e}"))?;
    StatusCode::from_u16(code).map_err(|e| format!("{e}"))
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    let sig = match s.parse::<i32>() {
        Ok(n) => Signal::try_from(n).map_err(|_| format!("no signal number {n}"))?,
        Err(_) => {
            let upper = s.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>()
                .map_err(|_| format!("unknown signal {s:?}"))?
        }
    };
    use Signal::*;
    match sig {
        SIGCHLD | SIGCONT | SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU | SIGURG | SIGWINCH => {
            Err(format!("{sig} does not kill a process by default"))
        }
        _ => Ok(sig),
    }
}

/// Writes one log line to stderr (like llama-server) and flushes it.
fn log(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "engine-sim: {msg}");
    let _ = err.flush();
}

fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Dies by `sig` for real: default disposition, unblocked, raised. No core file is written.
fn die_by_signal(sig: Signal) -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on this process; resetting a disposition to SIG_DFL is always sound.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let _ = nix::sys::signal::signal(sig, SigHandler::SigDfl);
    }
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    // Only reached if the signal somehow did not kill us.
    exit(128 + sig as i32)
}

struct Sim {
    start: Instant,
    loaded: AtomicBool,
    hang_at: Option<Instant>,
    stall_at: Option<Instant>,
    token_ms: u64,
    slots: slots::Slots,
    total_slots: u32,
    slots_in_props: bool,
    props_status: Option<StatusCode>,
    build_info: String,
    model_path: String,
    n_ctx: u32,
}

fn json_text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Applied to every request: hang once past --hang-after-ms, 503 while loading.
async fn gate(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    if sim.hang_at.is_some_and(|at| Instant::now() >= at) {
        std::future::pending::<()>().await;
    }
    if !sim.loaded.load(Ordering::SeqCst) {
        return json_text(StatusCode::SERVICE_UNAVAILABLE, LOADING_BODY.to_owned());
    }
    next.run(req).await
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn props(State(sim): State<Arc<Sim>>) -> Response {
    let status = sim.props_status.unwrap_or(StatusCode::OK);
    if !status.is_success() {
        let body = json!({"error": {
            "code": status.as_u16(),
            "message": format!("/props answers {status} (engine-sim --props-status)"),
            "type": "not_supported_error",
        }});
        return json_text(status, body.to_string());
    }
    let mut body = json!({
        "build_info": sim.build_info,
        "model_path": sim.model_path,
        "default_generation_settings": {"n_ctx": sim.n_ctx},
    });
    if sim.slots_in_props {
        body["total_slots"] = json!(sim.total_slots);
    }
    (status, Json(body)).into_response()
}

async fn no_metrics() -> Response {
    json_text(StatusCode::NOT_IMPLEMENTED, NO_METRICS_BODY.to_owned())
}

async fn not_found() -> Response {
    json_text(StatusCode::NOT_FOUND, NOT_FOUND_BODY.to_owned())
}

/// llama-server spells the slot count `-np`, which clap cannot express as a short flag.
fn normalized_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen_dashdash = false;
    args.into_iter()
        .map(|a| {
            if seen_dashdash {
                return a;
            }
            seen_dashdash = a == "--";
            match a.strip_prefix("-np") {
                Some("") => "--parallel".to_owned(),
                Some(rest) if rest.starts_with('=') => format!("--parallel{rest}"),
                _ => a,
            }
        })
        .collect()
}

fn ms_after(start: Instant, ms: u64) -> Instant {
    start + Duration::from_millis(ms)
}

/// Runs engine-sim with `args` (the first is the program name) and never returns: it exits
/// the process (the `engine-sim` binary and the hidden `pool-managerd engine-sim` both call it,
/// so the demo needs no second binary).
pub fn main(args: impl IntoIterator<Item = String>) -> ! {
    let args = Args::parse_from(normalized_args(args));
    if args.list_fds {
        log(&format!(
            "descriptors at start: {}",
            open_descriptors().join(" ")
        ));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log(&format!("error: cannot start the runtime: {e}"));
            exit(1);
        }
    };
    runtime.block_on(start::run(args));
    exit(0)
}

/// The descriptors of this process, by number, leaving out the one that lists them.
fn open_descriptors() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return vec!["(cannot read /proc/self/fd)".to_string()];
    };
    let mut fds: Vec<(u32, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let listing = target.starts_with("/proc") && target.ends_with("fd");
            (!listing).then(|| (fd, fd.to_string()))
        })
        .collect();
    fds.sort_unstable();
    fds.into_iter().map(|(_, fd)| fd).collect()
}
