"""Reload under lease traffic: drain_first against surge, side by side.

Run by scripts/reload-bench.sh (which builds the binaries). For each strategy it starts a fresh
pool-managerd (`serve --dev`, a `[reload] surge_ports` range in its config), preloads one pool on
an engine (engine-sim, or the real llama-server with a model file), and starts --clients
threads that take and return leases as fast as they can (`POST /v2/pools/bench/leases`, then
`DELETE .../leases/{id}`); while a lease is held, the client asks the engine it was pointed at
(the pool status' `url`, read when the lease was granted) for `GET /health`, so that an engine
that stopped while leased shows as an engine error. During the traffic it reloads the pool
--reloads times, back and forth between two model files, with the strategy, and waits for each
answer.

It measures, per strategy:
- lease attempts, grants, refusals by error code (POOL_UNREADY, POOL_DRAINING, ...);
- the refusal window: the longest time during which every lease request was refused (from the
  first refusal after a grant to the next grant), and their sum;
- engine errors: a leased engine that did not answer its health route;
- the reload answers' durations (p50, max) and the strategy each answer reports.

It owns every process it starts and stops them all on exit. It never judges the figures: it
prints them, as a markdown table and as JSON.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CHILDREN = []


def log(msg):
    print(f"[reload-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    """`n` consecutive free ports (bind-tested), below the ephemeral range."""
    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = min(low, int(f.read().split()[0]) - n - 1)
    except OSError:
        pass
    start = 10000 + (os.getpid() * 37) % 8000
    for base in range(start, low - n, n):
        sockets = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise SystemExit("no free port range found")


class Api:
    """A keep-alive HTTP client of one host:port (one per thread)."""

    def __init__(self, port, timeout=30.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                payload = None if body is None else json.dumps(body)
                headers = {"content-type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                try:
                    parsed = json.loads(data) if data else {}
                except ValueError:
                    parsed = {"raw": data.decode(errors="replace")}
                return response.status, parsed
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


def wait_for(what, check, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def engine_spec(args, model, port):
    if args.engine == "sim":
        flags = ["--port", str(port), "-m", model, "--check-model", "--parallel", str(args.slots),
                 "--load-ms", str(args.load_ms)]
        binary = args.engine_sim
    else:
        flags = ["-m", model, "--host", "127.0.0.1", "--port", str(port), "--parallel",
                 str(args.slots), "-c", str(256 * args.slots), "-t", "1"]
        binary = args.llama_server
    return {
        "binary_path": binary,
        "flags": flags,
        "host": "127.0.0.1",
        "port": port,
        "model_path": model,
        "engine_version": "bench",
        "pool_id": "bench",
        "replica_id": "r0",
    }


def start_daemon(args, work, api_port, surge_ports):
    config = os.path.join(work, "pool-managerd.toml")
    with open(config, "w") as f:
        f.write("stop_engines_on_shutdown = true\n\n[health]\npreload_interval_ms = 50\n"
                f"preload_timeout_ms = 120000\n\n[reload]\n"
                f"surge_ports = \"{surge_ports[0]}-{surge_ports[-1]}\"\n")
    log_file = open(os.path.join(work, "daemon.log"), "w")
    child = subprocess.Popen(
        [args.daemon, "serve", "--dev", "--addr", f"127.0.0.1:{api_port}", "--runtime-dir",
         os.path.join(work, "runtime"), "--journal-dir", os.path.join(work, "journal"),
         "--config", config],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    CHILDREN.append(child)
    api = Api(api_port)
    wait_for("the daemon's /health", lambda: api.call("GET", "/health")[0] == 200, 20)
    return child


class Traffic:
    """Client threads taking and returning leases as fast as they can."""

    def __init__(self, api_port, clients):
        self.api_port = api_port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.timeline = []  # (t, granted: bool, code)
        self.engine_errors = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self):
        api = Api(self.api_port, timeout=10)
        engines = {}
        while not self.stop.is_set():
            status, body = api.call("POST", "/v2/pools/bench/leases", {})
            now = time.monotonic()
            if status != 201:
                with self.lock:
                    self.timeline.append((now, False, body.get("code", str(status))))
                time.sleep(0.001)
                continue
            lease = body["lease_id"]
            _, pool = api.call("GET", "/v2/pools/bench")
            with self.lock:
                self.timeline.append((now, True, None))
            url = pool.get("url") or ""
            port = int(url.rsplit(":", 1)[1]) if ":" in url else None
            if port is not None:
                engine = engines.setdefault(port, Api(port, timeout=5))
                try:
                    code, _ = engine.call("GET", "/health")
                    if code != 200:
                        raise OSError(f"health {code}")
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.engine_errors.append(f"{url}: {e}")
            api.call("DELETE", f"/v2/pools/bench/leases/{lease}")

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def figures(self, since, until):
        events = sorted(e for e in self.timeline if since <= e[0] <= until)
        refusals = {}
        windows = []
        refused_since = None
        for t, granted, code in events:
            if granted:
                if refused_since is not None:
                    windows.append(t - refused_since)
                    refused_since = None
            else:
                refusals[code] = refusals.get(code, 0) + 1
                if refused_since is None:
                    refused_since = t
        if refused_since is not None:
            windows.append(until - refused_since)
        return {
            "attempts": len(events),
            "grants": sum(1 for e in events if e[1]),
            "refusals": refusals,
            "refusal_window_max_ms": round(max(windows, default=0) * 1000, 1),
            "refusal_window_sum_ms": round(sum(windows) * 1000, 1),
            "engine_errors": len(self.engine_errors),
        }


def run_strategy(args, strategy):
    work = tempfile.mkdtemp(prefix=f"reload-bench-{strategy}-")
    ports = free_ports(12)
    api_port, engine_port, surge_ports = ports[0], ports[1], ports[2:]
    models = [os.path.join(work, "a.gguf"), os.path.join(work, "b.gguf")]
    for path in models:
        if args.model:
            shutil.copyfile(args.model, path)
        else:
            with open(path, "w") as f:
                f.write("bench model\n")
    daemon = start_daemon(args, work, api_port, surge_ports)
    api = Api(api_port, timeout=300)
    try:
        status, body = api.call("POST", "/v2/pools/bench/preload",
                                {"prepared": engine_spec(args, models[0], engine_port)})
        if status != 200:
            raise SystemExit(f"preload: {status} {body}")
        traffic = Traffic(api_port, args.clients)
        traffic.start()
        time.sleep(args.settle)
        since = time.monotonic()
        answers = []
        for i in range(args.reloads):
            model = models[(i + 1) % 2]
            started = time.monotonic()
            status, body = api.call("POST", "/v2/pools/bench/reload", {
                "new_model_ref": model, "strategy": strategy, "drain_deadline_ms": 10000})
            took = (time.monotonic() - started) * 1000
            if status != 200:
                raise SystemExit(f"reload {i} ({strategy}): {status} {body}")
            answers.append({"ms": round(took, 1), "strategy": body.get("strategy")})
            log(f"{strategy}: reload {i + 1}/{args.reloads} in {took:.0f} ms "
                f"({body.get('strategy')}: {body.get('strategy_reason')})")
            time.sleep(args.settle)
        until = time.monotonic()
        traffic.finish()
        figures = traffic.figures(since, until)
        durations = [a["ms"] for a in answers]
        figures.update({
            "engine": args.engine,
            "strategy": strategy,
            "answered_strategies": sorted({a["strategy"] for a in answers if a["strategy"]}),
            "reloads": len(answers),
            "reload_p50_ms": round(statistics.median(durations), 1),
            "reload_max_ms": max(durations),
            "engine_error_samples": traffic.engine_errors[:3],
        })
        return figures
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


def table(rows):
    out = ["| engine | strategy | reloads | reload p50 / max (ms) | lease attempts | grants | "
           "refusals | longest refusal window (ms) | refused time (ms) | engine errors |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(r["refusals"].items())) or "0"
        out.append(f"| {r['engine']} | {r['strategy']} | {r['reloads']} | "
                   f"{r['reload_p50_ms']:.0f} / {r['reload_max_ms']:.0f} | {r['attempts']} | "
                   f"{r['grants']} | {refusals} | {r['refusal_window_max_ms']:.0f} | "
                   f"{r['refusal_window_sum_ms']:.0f} | {r['engine_errors']} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--daemon", required=True)
    parser.add_argument("--engine", choices=["sim", "llama"], default="sim")
    parser.add_argument("--engine-sim")
    parser.add_argument("--llama-server")
    parser.add_argument("--model", help="the model file (llama); copied as a.gguf and b.gguf")
    parser.add_argument("--strategies", default="drain_first,surge")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--load-ms", type=int, default=500, help="engine-sim's load time")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between reloads")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.engine == "llama" and not (args.llama_server and args.model):
        parser.error("--engine llama needs --llama-server and --model")
    if args.engine == "sim" and not args.engine_sim:
        parser.error("--engine sim needs --engine-sim")
    rows = []
    try:
        for strategy in args.strategies.split(","):
            rows.append(run_strategy(args, strategy))
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
