"""The peers side by side: the same engine-sim supervised by pool-managerd, supervisord and
circus, each at its documented restart settings' defaults and at their fastest.

Run by scripts/peers-bench.sh (which builds the binaries and installs the peers); it measures:

- kill: SIGKILL of the engine to the engine serving GET /health 200 again from a new process
  (p50, p99, max over N kills; each kill once the manager counts the engine as running, then
  --spacing seconds and a random extra of up to one period of the manager's polling tick, so
  that the kills do not all fall at the same phase of it);
- manager: SIGKILL of the manager with E engines serving, then the manager started again: the
  time from the new exec to every engine serving from a process the manager supervises, and
  how many engines were restarted (a new pid on the port), in two modes: "kept" (the engines
  outlive the manager: pool-managerd's unit and Debian's supervisor unit, KillMode=process, or
  no init system) and "killed" (the engines die with the manager, as under a unit with
  systemd's default KillMode=control-group);
- loop: an engine that exits at once (engine-sim --crash-after-ms 0): the starts in a window
  of --loop-secs seconds and the manager's state at its end.

It owns every process it starts and stops them all on exit (the engines by a scan of /proc for
the engine binary with one of its ports, whatever their parent). It never judges the figures:
it prints them, as a table and as JSON.
"""

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILDREN = []  # every Popen this driver started
PORTS = set()  # every engine port handed out


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in PORTS:
            PORTS.add(port)
            return port


def health(port, timeout=1.0):
    """The status of GET /health on 127.0.0.1:port, or None (refused, reset, timeout).
    The connection ends with a reset (SO_LINGER 0), not a close: thousands of probes would
    otherwise leave as many TIME_WAIT sockets, which lengthen /proc/net/tcp for every reader
    of it (pool-managerd's port checks among them)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.settimeout(timeout)
            s.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            head = s.recv(64)
        return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    """Whether pid is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")
    except (OSError, ValueError):
        return False


def engines_by_port(engine, every=False):
    """{port: pid} of the live engine-sim processes (by path) started with one of our ports
    (with `every`, {port: [pids]}: a second copy may run beside the first)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or argv[0].decode(errors="replace") != engine or b"--port" not in argv:
            continue
        try:
            port = int(argv[argv.index(b"--port") + 1])
        except (ValueError, IndexError):
            continue
        if port in PORTS and alive(int(entry)):
            if every:
                found.setdefault(port, []).append(int(entry))
            else:
                found[port] = int(entry)
    return found


def listeners(engine):
    """{port: pid} of the engine processes holding a listening socket on one of our ports
    (/proc/net/tcp* inode to /proc/<pid>/fd): the process that answers, even while a second
    copy started on the same port has not yet exited."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if fields[3] == "0A" and port in PORTS:
                        inodes[f"socket:[{fields[9]}]"] = port
        except OSError:
            continue
    found = {}
    for pids in engines_by_port(engine, every=True).values():
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    port = inodes.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
                if port is not None:
                    found[port] = pid
    return found


def wait_for(what, cond, timeout, interval=0.01):
    """Polls cond() until it returns a truthy value (returned) or timeout (None, logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    log(f"timed out after {timeout} s waiting for {what}")
    return None


def spawn(argv, logfile, **kw):
    out = open(logfile, "ab")
    proc = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, **kw
    )
    out.close()
    CHILDREN.append(proc)
    return proc


def sigkill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cleanup(engine):
    for proc in CHILDREN:
        if proc.poll() is None:
            sigkill(proc.pid)
            proc.wait()
    for _ in range(3):
        left = engines_by_port(engine)
        for pid in left.values():
            sigkill(pid)
        if not left:
            break
        time.sleep(0.1)


class Manager:
    """One supervisor under test, in a directory of its own."""

    name = "?"

    def __init__(self, profile, workdir, engine):
        self.profile = profile
        self.dir = workdir
        self.engine = engine
        self.proc = None
        self.engines = []  # [(name, port, argv)]
        os.makedirs(workdir, exist_ok=True)

    def settings(self):
        raise NotImplementedError

    def tick_s(self):
        """The period of the manager's polling loop, if it has one (else 1 s)."""
        return 1.0

    def start(self, engines):
        raise NotImplementedError

    def restart(self):
        raise NotImplementedError

    def managed(self):
        """{engine name: pid} of the engines the manager counts as running, with their pid."""
        raise NotImplementedError

    def states(self):
        """{engine name: the manager's word for its state}."""
        raise NotImplementedError

    def kill(self):
        sigkill(self.proc.pid)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            sigkill(self.proc.pid)
            self.proc.wait()


class PoolManagerd(Manager):
    name = "pool-managerd"

    def __init__(self, profile, workdir, engine, daemon):
        super().__init__(profile, workdir, engine)
        self.daemon = daemon
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def settings(self):
        if self.profile == "oneoff":
            return ("defaults but [backoff] reset_after_ms = 500: each kill, 1 s or more after "
                    "the last, is a one-off failure")
        if self.profile == "defaults":
            return ("(every key at its default: [backoff] initial_ms = 1000, factor = 2, "
                    "reset_after_ms = 300000; [breaker] failure_threshold = 5; [storm] "
                    "max_restarts = 10 in window_ms = 60000; [health] preload_interval_ms = 500)")
        return ("[health] preload_interval_ms = 5; [backoff] initial_ms = 1, min_ms = 0, "
                "factor = 1.0, jitter = 0, reset_after_ms = 500; [storm] max_restarts = 127, "
                "window_ms = 1000 (breaker: defaults)")

    def config(self):
        path = os.path.join(self.dir, "pool-managerd.toml")
        with open(path, "w") as f:
            if self.profile == "oneoff":
                f.write("[backoff]\nreset_after_ms = 500\n")
            if self.profile == "fastest":
                f.write("[health]\npreload_interval_ms = 5\n"
                        "[backoff]\ninitial_ms = 1\nmin_ms = 0\nfactor = 1.0\njitter = 0.0\n"
                        "reset_after_ms = 500\n"
                        "[storm]\nmax_restarts = 127\nwindow_ms = 1000\n")
        return path

    def exec(self):
        self.proc = spawn(
            [self.daemon, "serve", "--dev", "--config", self.config(),
             "--addr", f"127.0.0.1:{self.port}",
             "--runtime-dir", os.path.join(self.dir, "runtime"),
             "--journal-dir", os.path.join(self.dir, "journal")],
            os.path.join(self.dir, "daemon.log"), env=dict(os.environ, RUST_LOG="warn"))
        ok = wait_for("pool-managerd's API", lambda: self.get("/health") is not None, 30)
        if not ok:
            raise RuntimeError(f"pool-managerd did not serve on {self.base}; see {self.dir}")

    def get(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def preload(self, name, port, argv):
        body = json.dumps({"prepared": {
            "binary_path": argv[0], "flags": argv[1:], "host": "127.0.0.1", "port": port,
            "model_path": "/models/sim.gguf", "engine_version": "sim-1", "pool_id": name,
            "replica_id": "r0"}}).encode()
        req = urllib.request.Request(
            f"{self.base}/v2/pools/{name}/preload?wait=false", data=body, method="POST",
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def start(self, engines):
        self.engines = engines
        self.exec()
        for name, port, argv in engines:
            self.preload(name, port, argv)

    def restart(self):
        self.exec()

    def pools(self):
        return self.get("/v2/pools") or []

    def managed(self):
        return {p["pool_id"] if "pool_id" in p else p.get("id"): p.get("pid")
                for p in self.pools() if p.get("ready") and p.get("pid")}

    def states(self):
        out = {}
        for p in self.pools():
            key = p.get("pool_id") or p.get("id")
            breaker = p.get("breaker")
            if isinstance(breaker, dict):
                breaker = breaker.get("state")
            out[key] = f"{p.get('phase')}, ready {str(p.get('ready')).lower()}, breaker {breaker}"
        return out


class Supervisord(Manager):
    name = "supervisord"

    def __init__(self, profile, workdir, engine):
        super().__init__(profile, workdir, engine)
        self.port = free_port()

    def settings(self):
        if self.profile == "defaults":
            return "(defaults: autorestart=unexpected, startsecs=1, startretries=3)"
        return "autorestart=true, startsecs=0, startretries=100"

    def write_config(self):
        d = self.dir
        lines = [
            "[inet_http_server]", f"port=127.0.0.1:{self.port}",
            "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
            f"childlogdir={d}", "nodaemon=true", "loglevel=info",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]", f"serverurl=http://127.0.0.1:{self.port}",
        ]
        for name, _port, argv in self.engines:
            lines += [f"[program:{name}]", "command=" + " ".join(argv),
                      f"stdout_logfile={d}/{name}.log", "redirect_stderr=true"]
            if self.profile == "fastest":
                lines += ["autorestart=true", "startsecs=0", "startretries=100"]
        path = os.path.join(d, "supervisord.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def exec(self):
        self.proc = spawn(["supervisord", "-n", "-c", self.write_config()],
                          os.path.join(self.dir, "supervisord.out"))
        if not wait_for("supervisord's RPC", lambda: self.info() is not None, 30):
            raise RuntimeError(f"supervisord did not answer; see {self.dir}")

    def info(self):
        try:
            rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")
            return rpc.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return None

    def start(self, engines):
        self.engines = engines
        self.exec()

    def restart(self):
        self.exec()

    def managed(self):
        return {p["name"]: p["pid"] for p in self.info() or []
                if p["statename"] == "RUNNING" and p["pid"]}

    def states(self):
        return {p["name"]: p["statename"] for p in self.info() or []}


class Circus(Manager):
    name = "circus"

    def __init__(self, profile, workdir, engine):
        super().__init__(profile, workdir, engine)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.pubsub = f"tcp://127.0.0.1:{free_port()}"
        self.circusd = os.path.join(os.path.dirname(sys.executable), "circusd")

    def settings(self):
        if self.profile == "defaults":
            return "(defaults: check_delay=5, respawn=true, max_retry=5, no flapping plugin)"
        return "check_delay=0.01 (respawn=true)"

    def tick_s(self):
        return 5.0 if self.profile == "defaults" else 0.01

    def write_config(self):
        lines = ["[circus]", f"endpoint={self.endpoint}", f"pubsub_endpoint={self.pubsub}",
                 "statsd=false", f"logoutput={self.dir}/circusd.log"]
        if self.profile == "fastest":
            lines.append("check_delay=0.01")
        for name, _port, argv in self.engines:
            lines += [f"[watcher:{name}]", "cmd=" + " ".join(argv), "numprocesses=1",
                      f"stdout_stream.class=FileStream",
                      f"stdout_stream.filename={self.dir}/{name}.log",
                      f"stderr_stream.class=FileStream",
                      f"stderr_stream.filename={self.dir}/{name}.log"]
        path = os.path.join(self.dir, "circus.ini")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def client(self):
        from circus.client import CircusClient
        return CircusClient(endpoint=self.endpoint, timeout=5)

    def call(self, command, **props):
        try:
            client = self.client()
            try:
                answer = client.call({"command": command, "properties": props})
            finally:
                client.stop()
            return answer if answer.get("status") == "ok" else None
        except Exception:  # noqa: BLE001: circus raises its own CallError and zmq's errors
            return None

    def exec(self):
        self.proc = spawn([self.circusd, self.write_config()],
                          os.path.join(self.dir, "circusd.out"))
        if not wait_for("circusd's endpoint", lambda: self.call("list") is not None, 30):
            raise RuntimeError(f"circusd did not answer; see {self.dir}")

    def start(self, engines):
        self.engines = engines
        self.exec()

    def restart(self):
        self.exec()

    def managed(self):
        out = {}
        for name, _port, _argv in self.engines:
            answer = self.call("list", name=name)
            pids = (answer or {}).get("pids") or []
            if pids:
                out[name] = pids[0]
        return out

    def states(self):
        answer = self.call("status") or {}
        return answer.get("statuses", {})


def make(manager, profile, workdir, args):
    if manager == "pool-managerd":
        return PoolManagerd(profile, workdir, args.engine, args.daemon)
    if manager == "supervisord":
        return Supervisord(profile, workdir, args.engine)
    return Circus(profile, workdir, args.engine)


def engine_argv(args, port, extra=()):
    return [args.engine, "--port", str(port), "--parallel", "1", *extra]


def serving(m, names_ports):
    """The engines (name -> pid) serving /health 200 from a process the manager runs."""
    managed = m.managed()
    by_port = listeners(m.engine)
    out = {}
    for name, port in names_ports:
        pid = by_port.get(port)
        if pid and managed.get(name) == pid and health(port) == 200:
            out[name] = pid
    return out


def given_up(states):
    """Whether the manager stopped restarting an engine: supervisord's FATAL, pool-managerd's
    open breaker (circus has no such state)."""
    return any(s == "FATAL" or str(s).startswith("circuit_open") for s in states.values())


def percentile(values, q):
    """Nearest rank: the smallest value with at least q of the values at or below it (p99 of
    50 samples is their maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def kill_series(args, manager, profile, workdir):
    """SIGKILL of the engine to /health 200 from a new process, `args.kills` times."""
    m = make(manager, profile, workdir, args)
    port = free_port()
    m.start([("e0", port, engine_argv(args, port))])
    samples, note = [], ""
    rng = random.Random(args.seed)
    try:
        for i in range(args.kills):
            pid = wait_for(f"{manager} to run e0 (kill {i + 1})",
                           lambda: serving(m, [("e0", port)]).get("e0"), args.timeout)
            if not pid:
                note = f"e0 not running again after kill {i}: {m.states()}"
                break
            # A random extra wait over one period of the manager's tick: a fixed spacing would
            # kill at the same phase of a polling loop every time.
            time.sleep(args.spacing + rng.uniform(0.0, m.tick_s()))
            t0 = time.monotonic()
            sigkill(pid)
            deadline = t0 + args.timeout
            took, gave_up, next_look = None, None, t0 + 0.25
            while time.monotonic() < deadline:
                if not alive(pid) and health(port, timeout=0.5) == 200:
                    new = listeners(args.engine).get(port)
                    if new and new != pid:
                        took = time.monotonic() - t0
                        break
                if time.monotonic() >= next_look:  # a manager that gave up ends the series
                    next_look += 0.25
                    gave_up = given_up(m.states())
                    if gave_up:
                        break
                time.sleep(0.002)
            if took is None:
                waited = time.monotonic() - t0
                note = (f"kill {i + 1}: not serving again after {waited:.1f} s "
                        f"({'the manager gave up' if gave_up else 'timeout'}); "
                        f"state {m.states()}")
                log(note)
                break
            samples.append(took * 1000)
        return {"samples_ms": samples, "note": note, "settings": m.settings(),
                "final_state": m.states()}
    finally:
        m.stop()
        cleanup(args.engine)


def manager_kill(args, manager, profile, workdir, mode):
    """SIGKILL of the manager with `args.engines` engines serving, then its restart."""
    m = make(manager, profile, workdir, args)
    engines = []
    for i in range(args.engines):
        port = free_port()
        engines.append((f"e{i}", port, engine_argv(args, port)))
    names_ports = [(n, p) for n, p, _ in engines]
    m.start(engines)
    try:
        before = wait_for(f"{manager}: all {args.engines} engines running",
                          lambda: (lambda s: s if len(s) == len(engines) else None)(
                              serving(m, names_ports)), 60, interval=0.1)
        if not before:
            return {"error": f"not all engines ran: {m.states()}"}
        time.sleep(args.spacing)
        m.kill()
        if mode == "killed":
            for pid in before.values():
                sigkill(pid)
            wait_for("the engines to die", lambda: not any(alive(p) for p in before.values()),
                     10)
        t0 = time.monotonic()
        m.restart()
        took = None
        deadline = t0 + args.manager_timeout
        now_serving = {}
        while time.monotonic() < deadline:
            now_serving = serving(m, names_ports)
            if len(now_serving) == len(engines):
                took = time.monotonic() - t0
                break
            states = m.states()
            if states and all(given_up({n: s}) for n, s in states.items()):
                break  # the manager gave up on every engine: nothing more will change
            time.sleep(0.01)
        restarted = sum(1 for pid in before.values() if not alive(pid))
        answering = sum(1 for _, p in names_ports if health(p) == 200)
        states = m.states()
        summary = {}
        for s in states.values():
            summary[s] = summary.get(s, 0) + 1
        waited = time.monotonic() - t0
        return {"ms": None if took is None else took * 1000, "restarted": restarted,
                "waited_s": round(waited, 1),
                "managed": len(now_serving), "answering": answering,
                "states": summary, "timeout_s": args.manager_timeout}
    finally:
        m.stop()
        cleanup(args.engine)


def crash_loop(args, manager, profile, workdir):
    """An engine that exits at once: its starts in `args.loop_secs` and the final state."""
    m = make(manager, profile, workdir, args)
    port = free_port()
    count = os.path.join(workdir, "starts")
    launcher = os.path.join(workdir, "launch-e0.sh")
    with open(launcher, "w") as f:
        f.write(f"#!/bin/sh\necho start >> {count}\nexec {args.engine} \"$@\"\n")
    os.chmod(launcher, 0o755)
    argv = [launcher, "--port", str(port), "--crash-after-ms", "0"]
    try:
        t0 = time.monotonic()
        m.start([("e0", port, argv)])
        time.sleep(max(0.0, args.loop_secs - (time.monotonic() - t0)))
        try:
            with open(count) as f:
                starts = sum(1 for _ in f)
        except OSError:
            starts = 0
        return {"starts": starts, "restarts": max(0, starts - 1),
                "final_state": m.states().get("e0"), "secs": args.loop_secs}
    finally:
        m.stop()
        cleanup(args.engine)


def fmt_ms(v):
    return "-" if v is None else (f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms")


def ratio(v, ref):
    if v is None or ref is None or ref <= 0:
        return ""
    return f" ({v / ref:,.1f}x)"


def table(results, managers, profiles):
    """One row per manager and profile, one column per figure; ratios against pool-managerd
    at the same profile (a ratio above 1 is that many times pool-managerd's figure)."""

    def kill_stat(m, p, q):
        r = results.get(f"kill/{m}/{p}")
        if not r or not r["samples_ms"]:
            return None
        s = r["samples_ms"]
        return statistics.median(s) if q == 0.5 else percentile(s, q)

    def kill_cell(m, p, q):
        v = kill_stat(m, p, q)
        return fmt_ms(v) + ratio(v, kill_stat("pool-managerd", p, q))

    def kill_n(m, p):
        r = results.get(f"kill/{m}/{p}")
        if not r:
            return "-"
        return f"{len(r['samples_ms'])}" + (" (ended, see notes)" if r["note"] else "")

    def manager_cell(m, p, mode):
        r = results.get(f"manager-{mode}/{m}/{p}")
        if not r:
            return "-"
        if "error" in r:
            return "error: " + r["error"]
        ref = results.get(f"manager-{mode}/pool-managerd/{p}", {}).get("ms")
        time_cell = (fmt_ms(r["ms"]) + ratio(r["ms"], ref) if r["ms"] is not None
                     else f"not all supervised after {r['waited_s']:g} s")
        states = ", ".join(f"{n} {s}" for s, n in sorted(r["states"].items()))
        return (f"{time_cell}; {r['restarted']} restarted; {r['managed']} supervised and "
                f"serving, {r['answering']} answering /health; {states}")

    def loop_cell(m, p):
        r = results.get(f"loop/{m}/{p}")
        if not r:
            return "-"
        ref = results.get(f"loop/pool-managerd/{p}", {}).get("restarts")
        return f"{r['restarts']}{ratio(r['restarts'], ref)}; {r['final_state']}"

    columns = []
    if any(k.startswith("kill/") for k in results):
        columns += [("kills measured", kill_n),
                    ("engine SIGKILL to /health 200, p50", lambda m, p: kill_cell(m, p, 0.5)),
                    ("p99", lambda m, p: kill_cell(m, p, 0.99)),
                    ("max", lambda m, p: kill_cell(m, p, 1.0))]
    if any(k.startswith("manager-kept/") for k in results):
        columns.append(("manager SIGKILL, engines left running: restart exec to all supervised "
                        "and serving", lambda m, p: manager_cell(m, p, "kept")))
    if any(k.startswith("manager-killed/") for k in results):
        columns.append(("manager SIGKILL, engines killed with it: restart exec to all "
                        "supervised and serving", lambda m, p: manager_cell(m, p, "killed")))
    if any(k.startswith("loop/") for k in results):
        columns.append(("engine exiting at once: restarts in the window; final state",
                        loop_cell))
    lines = ["| manager, settings | " + " | ".join(c for c, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for p in profiles:
        for m in managers:
            lines.append(f"| {m}, {p} | " + " | ".join(f(m, p) for _, f in columns) + " |")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemon", default=os.path.join(ROOT, "target/release/pool-managerd"))
    ap.add_argument("--engine", default=os.path.join(ROOT, "target/release/engine-sim"))
    ap.add_argument("--managers", default="pool-managerd,supervisord,circus")
    ap.add_argument("--profiles", default="defaults,fastest",
                    help="defaults, fastest; and for pool-managerd alone, oneoff (the defaults "
                         "with reset_after_ms = 500, so that every kill is a one-off failure)")
    ap.add_argument("--scenarios", default="kill,manager,loop")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--engines", type=int, default=20)
    ap.add_argument("--loop-secs", type=float, default=60.0)
    ap.add_argument("--spacing", type=float, default=1.0,
                    help="seconds an engine serves before it is killed, plus a random extra "
                         "of up to one period of the manager's tick (1 s; circus: check_delay)")
    ap.add_argument("--seed", type=int, default=42, help="of the random extra waits")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a killed engine may take to serve again")
    ap.add_argument("--manager-timeout", type=float, default=30.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    args.engine = os.path.abspath(args.engine)
    args.daemon = os.path.abspath(args.daemon)
    return args


def main():
    args = parse_args()
    workdir = args.workdir or os.path.join(ROOT, "target/peers-bench")
    shutil.rmtree(workdir, ignore_errors=True)  # a journal left by an earlier run would answer 409
    managers = args.managers.split(",")
    profiles = args.profiles.split(",")
    scenarios = args.scenarios.split(",")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    results = {}
    load_before = open("/proc/loadavg").read().split()[:3]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        for scenario in scenarios:
            for profile in profiles:
                for manager in managers:
                    if scenario == "manager":
                        for mode in ("kept", "killed"):
                            key = f"manager-{mode}/{manager}/{profile}"
                            log(f"{key}")
                            results[key] = manager_kill(
                                args, manager, profile, os.path.join(workdir, key), mode)
                            log(f"{key}: {results[key]}")
                        continue
                    key = f"{scenario}/{manager}/{profile}"
                    log(key)
                    fn = {"kill": kill_series, "loop": crash_loop}[scenario]
                    results[key] = fn(args, manager, profile, os.path.join(workdir, key))
                    log(f"{key}: " + json.dumps({k: v for k, v in results[key].items()
                                                  if k != "samples_ms"}))
    finally:
        cleanup(args.engine)
    settings = {f"{m}/{p}": make(m, p, os.path.join(workdir, "settings", m, p), args).settings()
                for m in managers for p in profiles}
    cleanup(args.engine)
    print(f"peers bench, {started}, {os.cpu_count()} cores, kernel {os.uname().release}; "
          f"{args.kills} kills, {args.engines} engines, loop window {args.loop_secs:g} s; "
          f"ratios against pool-managerd at the same profile; load average "
          f"{' '.join(load_before)} at the start, "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])} at the end\n")
    print(table(results, managers, profiles))
    print("\nsettings:")
    for k, v in settings.items():
        print(f"- {k}: {v}")
    notes = [f"- {k}: {r['note']}" for k, r in results.items() if r.get("note")]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "args": vars(args), "settings": settings,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
