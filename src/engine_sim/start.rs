//! engine-sim's start: the signals it handles, the failures and log lines it schedules, its port, its memory, its load, then its routes.

use std::io::Write;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::middleware;
use axum::routing::get;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};

use super::slots::{completion, slots, Slots};
use super::{die_by_signal, gate, health, log, ms_after, no_metrics, not_found, props, Args, Sim};

pub(super) async fn run(args: Args) {
    let start = Instant::now();
    // Handle SIGTERM/SIGINT before anything else, so an early SIGTERM is not a signal death.
    handle_signals(args.ignore_sigterm);
    println!(
        "engine-sim: build: {} | pid {} | slots {} (a test engine, not a server)",
        args.build_info,
        std::process::id(),
        args.parallel
    );
    let _ = std::io::stdout().flush();
    if args.fork_worker {
        fork_worker();
    }
    schedule_load_failures(&args, start);
    schedule_crashes(&args, start);
    schedule_log_lines(&args, start);
    let listener = bind(&args).await;
    log(&format!("loading model '{}'", args.model));
    if let Some(split) = &args.tensor_split {
        log(&format!("tensor split: {split} (engine-sim uses no GPU)"));
    }
    if args.alloc_mb > 0 {
        hold_memory(args.alloc_mb);
    }
    let never_healthy = args.never_healthy;
    let load_ms = args.load_ms;
    let sim = Arc::new(Sim {
        start,
        loaded: AtomicBool::new(false),
        hang_at: args.hang_after_ms.map(|ms| ms_after(start, ms)),
        stall_at: args.stall_after_ms.map(|ms| ms_after(start, ms)),
        token_ms: args.token_ms,
        slots: Slots::new(args.parallel),
        total_slots: args.parallel,
        slots_in_props: !args.no_slots_in_props,
        props_status: args.props_status,
        build_info: args.build_info,
        model_path: args.model,
        n_ctx: args.ctx_size,
    });
    if never_healthy {
        log("the model will never finish loading (--never-healthy)");
    } else {
        finish_loading(Arc::clone(&sim), load_ms);
    }
    serve(listener, sim).await;
}

/// `--fork-worker`: a `sleep 86400` in a process group of its own that ignores SIGTERM (the
/// engine does not wait for it).
fn fork_worker() {
    use std::os::unix::process::CommandExt as _;
    let mut worker = std::process::Command::new("sleep");
    worker.arg("86400").process_group(0);
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        worker.pre_exec(|| {
            use nix::sys::signal::{signal, SigHandler, Signal};
            signal(Signal::SIGTERM, SigHandler::SigIgn)
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    match worker.spawn() {
        Ok(child) => log(&format!(
            "worker pid {} in a process group of its own",
            child.id()
        )),
        Err(e) => {
            log(&format!("error: cannot fork the worker: {e}"));
            exit(1);
        }
    }
}

/// Exits 0 on SIGTERM (unless `--ignore-sigterm`) and on SIGINT.
fn handle_signals(ignore_sigterm: bool) {
    let mut sigterm = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut sigint = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => {
                    if ignore_sigterm {
                        log("received SIGTERM, ignoring it (--ignore-sigterm)");
                        continue;
                    }
                    log("received SIGTERM, shutting down");
                }
                _ = sigint.recv() => log("received SIGINT, shutting down"),
            }
            exit(0);
        }
    });
}

/// `--check-model` (a model file whose first line is "broken") and
/// `--fail-while-file-exists`: a failed load, 100 ms after the start.
fn schedule_load_failures(args: &Args, start: Instant) {
    if args.check_model {
        let model = args.model.clone();
        let loadable = std::fs::read_to_string(&model)
            .is_ok_and(|text| text.lines().next().map(str::trim) != Some("broken"));
        if !loadable {
            tokio::spawn(async move {
                sleep_until(ms_after(start, 100)).await;
                log(&format!("failed to load model '{model}' (--check-model)"));
                exit(1)
            });
        }
    }
    if let Some(path) = args.fail_while_file_exists.clone().filter(|p| p.exists()) {
        tokio::spawn(async move {
            sleep_until(ms_after(start, 100)).await;
            log(&format!(
                "failed to load model: {} exists (--fail-while-file-exists)",
                path.display()
            ));
            exit(1)
        });
    }
}

/// `--crash-after-ms` (an exit code or `--crash-signal`) and `--cuda-error-after-ms` (a CUDA
/// error line, then exit 1); at 0 ms, before the port listens, so that no health probe can
/// ever be answered.
fn schedule_crashes(args: &Args, start: Instant) {
    if let Some(ms) = args.crash_after_ms {
        let (code, sig) = (args.exit_code, args.crash_signal);
        let crash = move || match sig {
            Some(sig) => {
                log(&format!(
                    "crashing after {ms} ms: dying by {sig} (--crash-signal)"
                ));
                die_by_signal(sig)
            }
            None => {
                log(&format!(
                    "crashing after {ms} ms: exit code {code} (--crash-after-ms)"
                ));
                exit(code)
            }
        };
        if ms == 0 {
            crash();
        }
        tokio::spawn(async move {
            sleep_until(ms_after(start, ms)).await;
            crash()
        });
    }
    if let Some(ms) = args.cuda_error_after_ms {
        let text = args.cuda_error_message.replace("\\n", "\n");
        if ms == 0 {
            eprintln!("{text}");
            exit(1);
        }
        tokio::spawn(async move {
            sleep_until(ms_after(start, ms)).await;
            write_stderr(&text);
            exit(1)
        });
    }
}

/// `--log-line-after-ms` (a line on stderr), and `--stall-after-ms` and `--hang-after-ms` (the
/// lines that say so).
fn schedule_log_lines(args: &Args, start: Instant) {
    if args.log_spam_bytes_per_sec > 0 {
        tokio::spawn(spam(args.log_spam_bytes_per_sec));
    }
    if let Some(ms) = args.log_line_after_ms {
        let text = args.log_line.clone();
        tokio::spawn(async move {
            sleep_until(ms_after(start, ms)).await;
            write_stderr(&text);
        });
    }
    if let Some(ms) = args.stall_after_ms {
        tokio::spawn(async move {
            sleep_until(ms_after(start, ms)).await;
            log(&format!(
                "stalling after {ms} ms: /health answers, no work advances (--stall-after-ms)"
            ));
        });
    }
    if let Some(ms) = args.hang_after_ms {
        tokio::spawn(async move {
            sleep_until(ms_after(start, ms)).await;
            log(&format!(
                "hanging after {ms} ms: no request will be answered (--hang-after-ms)"
            ));
        });
    }
}

/// One line on stderr, flushed.
/// `--log-spam-bytes-per-sec`: 100-byte lines on stdout, `rate` bytes a second (at least one
/// line per burst), forever.
async fn spam(rate: u64) {
    let per_burst = (rate / 100 / 100).max(1);
    let mut every = tokio::time::interval(std::time::Duration::from_millis(10));
    let mut n: u64 = 0;
    loop {
        every.tick().await;
        let mut out = std::io::stdout().lock();
        for _ in 0..per_burst {
            let head = format!("engine-sim: log line {n} ");
            let _ = writeln!(
                out,
                "{head}{}",
                "x".repeat(99usize.saturating_sub(head.len()))
            );
            n += 1;
        }
        let _ = out.flush();
    }
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}

/// Binds the port (exit 1 with llama-server's message when it cannot).
async fn bind(args: &Args) -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(listener) => {
            log(&format!("listening on http://{}:{}", args.host, args.port));
            listener
        }
        Err(e) => {
            log(&format!(
                "error: couldn't bind HTTP server socket, hostname: {}, port: {}: {e}",
                args.host, args.port
            ));
            exit(1)
        }
    }
}

/// `--alloc-mb`: that much host memory made resident (one write per page) and kept.
fn hold_memory(alloc_mb: usize) {
    let len = alloc_mb << 20;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let buf = vec![0u8; len].leak();
    for i in (0..len).step_by(page.max(1)) {
        // SAFETY: i < len; volatile so the store that makes the page resident is kept.
        unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(i), 1) };
    }
    log(&format!(
        "allocated {alloc_mb} MiB of resident host memory (--alloc-mb)"
    ));
}

/// The model is loaded `load_ms` after the start (at once for 0).
fn finish_loading(sim: Arc<Sim>, load_ms: u64) {
    let start = sim.start;
    let finish = move || {
        sim.loaded.store(true, Ordering::SeqCst);
        log(&format!(
            "model loaded in {} ms",
            sim.start.elapsed().as_millis()
        ));
    };
    if load_ms == 0 {
        finish();
    } else {
        tokio::spawn(async move {
            sleep_until(ms_after(start, load_ms)).await;
            finish();
        });
    }
}

/// Serves the routes until the process exits.
async fn serve(listener: tokio::net::TcpListener, sim: Arc<Sim>) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/metrics", get(no_metrics))
        .route("/completion", axum::routing::post(completion))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&sim), gate))
        .with_state(sim);
    if let Err(e) = axum::serve(listener, app).await {
        log(&format!("error: HTTP server failed: {e}"));
        exit(1);
    }
}
