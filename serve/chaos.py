"""`python -m serve.chaos` (`make chaos`): a real server against hostile clients, a broken registry,
sick databases and signals; one table of what happened.

It seeds the small demo and trains two versions in a temp dir, starts `python -m serve` through
deploy/harness.py (2 workers on SQLite; 1 worker whose DATABASE_URL is a Postgres that accepts
connections and never answers), and runs each scenario while a probe sends valid /predict
requests. Each row says what happened, how many of the probe's (or the scenario's own valid)
requests failed, how long until normal service, and the workers' RSS before and after. Every
scenario checks its expectation; the exit code is 1 when one fails. The table goes to stdout and
to var/chaos/report.md (--report).

The raw-socket helpers here are the ones tests/serve/test_failure_modes.py uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HOST = "127.0.0.1"
REPORT = Path("var/chaos/report.md")


# -- raw HTTP: what a client library would refuse to send ----------------------------------------
def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are; (status, body) of the answer, (0, b"") when the server just closed."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        reply = read_reply(s)
    if not reply.startswith(b"HTTP/1.1 "):
        return 0, reply
    return int(reply[9:12]), reply.partition(b"\r\n\r\n")[2]


def read_reply(s: socket.socket) -> bytes:
    """Read one response (up to its content-length) or until the server closes."""
    reply = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError, OSError):
            break
        if not chunk:
            break
        reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        if length and len(body) >= length[0]:
            break
    return reply


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def json_of(port: int, path: str) -> tuple[int, dict]:
    status, body = raw(port, get(path))
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def metric(port: int, prefix: str) -> float:
    """The sum of every sample whose line starts with `prefix` in /metrics."""
    status, body = raw(port, get("/metrics"))
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(prefix))


def workers_of(master: int) -> list[int]:
    """The pids of a gunicorn master's workers."""
    found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, MB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def wait_for(predicate: Callable[[], object], seconds: float = 10.0, what: str = "condition"):
    """Poll `predicate` every 0.05 s until it is truthy (its value); AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = predicate()
            if value:
                return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {seconds:g}s")


DEEP = 2000
HOSTILE_BODIES = {
    "arrays nested 2,000 deep": b"[" * DEEP + b"]" * DEEP,
    "objects nested 2,000 deep": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "features: 1,000-deep arrays": b'{"features": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "a feature of 1,000-deep arrays": b'{"features": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}",
    "deep arrays after a NaN": b'{"features": {"x": NaN, "y": ' + b"[" * 990 + b"]" * 990 + b"}}",
    "a 400-digit integer feature": b'{"features": {"x": ' + b"9" * 400 + b"}}",
    "a 400-digit user_id": b'{"features": {}, "user_id": ' + b"9" * 400 + b"}",
    "a 400-digit body": b"9" * 400,
    "a 5,000-digit integer": b'{"features": {"x": ' + b"9" * 5000 + b"}}",
}


def batch_body(body: bytes) -> bytes:
    """A hostile /predict body as the /predict/batch equivalent."""
    if body.startswith(b'{"features": {'):
        return body.replace(b'{"features": {', b'{"rows": [{').replace(b"}}", b"}]}")
    return body.replace(b'"features"', b'"rows"')


# -- the probe: valid traffic while a scenario runs -------------------------------------------------
class Probe:
    """Valid requests on fresh connections from `threads` threads; every answer kept with its time."""

    def __init__(self, port: int, request: bytes, threads: int = 2, pause: float = 0.01) -> None:
        self.port, self.request, self.pause = port, request, pause
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _ = raw(self.port, self.request, timeout=5)
            except OSError:
                status = 0
            self.results.append((time.monotonic(), status))
            time.sleep(self.pause)

    def start(self) -> Probe:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def since(self, t0: float) -> tuple[int, int]:
        """(answered, failed) since `t0`."""
        rows = [s for t, s in list(self.results) if t >= t0]
        return len(rows), sum(1 for s in rows if s != 200)


# -- the report -------------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    happened: str = ""
    failed: str = ""
    recover: str = ""
    rss: str = ""
    ok: bool = False
    expected: str = ""


class Lab:
    """The temp dir with the demo data, two trained versions and the running servers."""

    def __init__(self, root: Path, progress: Callable[[str], None]) -> None:
        self.root, self.say = root, progress
        self.db = root / "app.db"
        self.db_url = f"sqlite:///{self.db}"
        self.ab = root / "ab.yml"

    def prepare(self) -> None:
        from features.db import make_engine
        from features.spec import SPEC
        from registry.store import Registry

        demo = SPEC.load_loader()
        engine = make_engine(self.db_url)
        demo.load(engine, demo.generate(scale=0.1, seed=7, end=datetime(2026, 6, 1)))
        engine.dispose()
        self.registry = Registry(self.root / "models")
        # two versions, trained as a user trains them (serve never imports training code): the
        # first deployed, the second saved only
        env = {**os.environ, "DATABASE_URL": self.db_url, "MODEL_DIR": str(self.registry.root),
               "MODEL_CACHE_DIR": str(self.root / "model-cache"), "EXPERIMENTS_LOG": str(self.root / "runs.csv")}
        for extra in ([], ["--param", "num_leaves=7", "--no-deploy"]):
            done = subprocess.run([sys.executable, "-m", "train", "--as-of-count", "4", *extra], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"chaos: training failed:\n{done.stderr[-2000:]}")
        self.v1, self.v2 = self.registry.versions()[-2:]
        meta = self.registry.meta(self.v1)
        self.features = meta.self_check[0].features
        self.body = json.dumps({"features": self.features}).encode()
        with make_engine(self.db_url).connect() as conn:
            from sqlalchemy import text
            self.user = conn.execute(text(f"SELECT {SPEC.entity.key} FROM {SPEC.entity.table} LIMIT 1")).scalar()
        self.ab.write_text("experiment:\n  name: chaos\n  salt: chaos-1\n  variants:\n"
                           "    - {name: a, weight: 50, model: current}\n    - {name: b, weight: 50, model: current}\n")

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return {"WEB_CONCURRENCY": "2", "MODEL_DIR": str(self.registry.root), "DATABASE_URL": self.db_url,
                "MODEL_POLL_SECONDS": "0.5", "PROMETHEUS_MULTIPROC_DIR": str(self.root / f"prom-{name}"),
                "AB_CONFIG": str(self.ab), "HEADER_TIMEOUT_SECONDS": "2", "BODY_TIMEOUT_SECONDS": "2",
                "ADMIN_TOKEN": "c" * 32, "ENVIRONMENT": "development", **extra}


class HungPostgres:
    """A TCP listener that accepts every connection and never answers (a frozen database host)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for s in self.held:
            s.close()
        self.sock.close()


class FreezingProxy:
    """A TCP relay to a real database that can freeze: while frozen it passes no byte either way,
    on connections old and new (a database host that froze mid-statement, or a network partition).
    It listens on `listen_host` (a free port): another address of this machine makes a loopback-only
    server reachable from elsewhere."""

    def __init__(self, target_port: int, target_host: str = HOST, listen_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.frozen = threading.Event()
        self.sock = socket.create_server((listen_host, 0))
        self.port = self.sock.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.02)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.frozen.clear()
        self.sock.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def _new_log_lines(log: Path, offset: int) -> list[dict]:
    lines = []
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


class Chaos:
    def __init__(self, lab: Lab, server, pg_server, hung: HungPostgres, say: Callable[[str], None]) -> None:
        self.lab, self.server, self.pg, self.hung, self.say = lab, server, pg_server, hung, say
        self.port = server.port
        self.rows: list[Row] = []
        self.probe = Probe(self.port, post("/predict", lab.body)).start()

    # -- helpers
    def rss(self) -> float:
        return rss_mb(workers_of(self.server.process.pid))

    def log_offset(self) -> int:
        return self.server.log.stat().st_size

    def tracebacks_since(self, offset: int) -> int:
        return sum(1 for e in _new_log_lines(self.server.log, offset) if "exc" in e or "Traceback" in e.get("msg", ""))

    def scenario(self, name: str, expected: str):
        lab = self

        class _Scenario:
            def __enter__(self_inner):
                self_inner.row = Row(name, expected=expected)
                self_inner.t0 = time.monotonic()
                self_inner.rss0 = lab.rss()
                self_inner.offset = lab.log_offset()
                lab.say(f"chaos: {name} ...")
                return self_inner

            def __exit__(self_inner, kind, error, trace):
                row = self_inner.row
                if error is not None:
                    row.ok = False
                    row.happened = (row.happened + "; " if row.happened else "") + f"FAILED: {error}"
                with contextlib.suppress(Exception):
                    after = lab.rss()
                    row.rss = f"{self_inner.rss0:.0f} → {after:.0f} MB" if after else f"{self_inner.rss0:.0f} MB → exited"
                lab.rows.append(row)
                lab.say(f"chaos: {name}: {'ok' if row.ok else 'FAILED'} ({time.monotonic() - self_inner.t0:.1f}s)")
                return kind is not None and issubclass(kind, Exception)

        return _Scenario()

    def probe_failures(self, t0: float) -> tuple[int, int]:
        return self.probe.since(t0)

    # -- hostile clients
    def never_ending_header(self) -> None:
        with self.scenario("a header that never ends (10 connections x 20 MiB)",
                           "431 or closed; RSS +< 50 MB; 0 probe failures") as s:
            chunk = b"a" * (1 << 20)
            answers = []
            for _ in range(10):
                with socket.create_connection((HOST, self.port), timeout=10) as c:
                    c.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Long: ")
                    sent = 0
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        for _ in range(20):
                            c.sendall(chunk)
                            sent += 1
                    try:
                        reply = c.recv(4096)
                    except OSError:
                        reply = b""
                    answers.append((reply[:12].decode(errors="replace") or "closed", sent))
            done = time.monotonic()
            rss_after = self.rss()
            n, failed = self.probe_failures(s.t0)
            statuses = sorted({a for a, _ in answers})
            max_mib = max(sent for _, sent in answers)
            s.row.happened = (f"{', '.join(statuses)} after at most {max_mib} MiB sent; "
                              f"worker RSS grew {rss_after - s.rss0:+.0f} MB")
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = f"{time.monotonic() - done:.1f} s"
            s.row.ok = (all(a.startswith("HTTP/1.1 431") or a == "closed" for a, _ in answers)
                        and rss_after - s.rss0 < 50 and failed == 0)

    def slowloris(self) -> None:
        with self.scenario("200 half-sent requests (slowloris)",
                           "every one 408 within the 2 s timeouts + 3 s; 0 probe failures") as s:
            halves = post("/predict", self.lab.body)[: -len(self.lab.body) // 2]
            socks = []
            for i in range(200):
                c = socket.create_connection((HOST, self.port), timeout=10)
                c.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\n" if i % 2 else halves)
                socks.append(c)
            opened = time.monotonic()
            statuses: dict[str, int] = {}
            for c in socks:
                reply = read_reply(c)
                c.close()
                key = reply[9:12].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"
                statuses[key] = statuses.get(key, 0) + 1
            took = time.monotonic() - opened
            n, failed = self.probe_failures(s.t0)
            s.row.happened = (", ".join(f"{v} x {k}" for k, v in sorted(statuses.items()))
                              + f", the last after {took:.1f} s; /predict answered meanwhile")
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = f"{took:.1f} s (the timeout)"
            s.row.ok = statuses.get("408", 0) == 200 and took < 5 and failed == 0

    def hostile_json(self) -> None:
        with self.scenario("JSON 2,000 deep, 400-digit integers (9 bodies x 2 routes)",
                           "every one 4xx, small body; no 5xx; no traceback") as s:
            five = metric(self.port, 'http_requests_total{method="POST",route="/predict')
            statuses, longest = set(), 0
            for path in ("/predict", "/predict/batch"):
                for body in HOSTILE_BODIES.values():
                    status, reply = raw(self.port, post(path, batch_body(body) if path.endswith("batch") else body))
                    statuses.add(status)
                    longest = max(longest, len(reply))
            fives = metric(self.port, 'http_requests_total{method="POST",route="/predict",status="5xx"}') + \
                metric(self.port, 'http_requests_total{method="POST",route="/predict/batch",status="5xx"}')
            n, failed = self.probe_failures(s.t0)
            s.row.happened = f"answers {sorted(statuses)}, longest body {longest} bytes, 5xx count {fives:.0f}"
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = "0 s"
            s.row.ok = (all(400 <= st < 500 for st in statuses) and longest < 20_000 and fives == 0
                        and self.tracebacks_since(s.offset) == 0 and failed == 0 and five >= 0)

    def disconnects(self) -> None:
        with self.scenario("50 clients hang up mid-body", "counted 4xx (499), no 5xx, no traceback") as s:
            before = metric(self.port, 'http_requests_total{method="POST",route="/predict",status="4xx"}')
            for _ in range(50):
                with socket.create_connection((HOST, self.port), timeout=5) as c:
                    c.sendall(post("/predict", self.lab.body)[: -len(self.lab.body) // 2])
                    time.sleep(0.005)
            counted = wait_for(lambda: (metric(self.port, 'http_requests_total{method="POST",route="/predict",'
                                                          'status="4xx"}') - before >= 50) or None, 5,
                               "50 disconnects counted")
            fives = metric(self.port, 'http_requests_total{method="POST",route="/predict",status="5xx"}')
            n, failed = self.probe_failures(s.t0)
            s.row.happened = f"all 50 counted as 4xx (499); 5xx {fives:.0f}; tracebacks {self.tracebacks_since(s.offset)}"
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = "0 s"
            s.row.ok = bool(counted) and fives == 0 and self.tracebacks_since(s.offset) == 0 and failed == 0

    # -- the registry
    def truncated_current_and_kill(self) -> None:
        lab, port = self.lab, self.port
        with self.scenario("truncated model.joblib in `current`, then kill -9 of a worker",
                           "old model keeps serving; the new worker falls back to it; <= 2 probe failures") as s:
            artifact = lab.registry.versions_dir / lab.v2 / "model.joblib"
            good = artifact.read_bytes()
            failures = metric(port, "model_reload_failures_total")
            artifact.write_bytes(good[:200])
            lab.registry.set_current(lab.v2, "promote", "chaos: a truncated artifact")
            try:
                wait_for(lambda: metric(port, "model_reload_failures_total") >= failures + 2, 10,
                         "both workers refusing the truncated version")
                ready = json_of(port, "/ready")
                workers = workers_of(self.server.process.pid)
                killed = time.monotonic()
                os.kill(workers[0], signal.SIGKILL)
                new = wait_for(lambda: set(workers_of(self.server.process.pid)) - set(workers), 20, "a new worker")
                ready_file = lab.root / "prom-main" / f"worker-ready-{min(new)}"
                wait_for(ready_file.exists, 30,
                         "the new worker listening")  # it opens its socket once its model is loaded
                recovered = time.monotonic() - killed
                wait_for(lambda: all(json.loads(raw(port, post("/predict", lab.body))[1])["model_version"] == lab.v1
                                     for _ in range(20)), 30, "every worker serving the old version")
                fallback = metric(port, "model_serving_fallback")
                n, failed = self.probe_failures(s.t0)
                s.row.happened = (f"/ready {ready[0]} on {ready[1].get('model_version')}, fallback set; "
                                  f"model_reload_failures_total +{metric(port, 'model_reload_failures_total') - failures:.0f}, "
                                  f"model_serving_fallback {fallback:.0f}; the new worker served {lab.v1[-6:]}")
                s.row.failed = f"{failed} of {n} probe"
                s.row.recover = f"{recovered:.1f} s (kill -9 to the new worker listening)"
                s.row.ok = ready[0] == 200 and ready[1].get("model_version") == lab.v1 and failed <= 2
            finally:
                artifact.write_bytes(good)
                lab.registry.set_current(lab.v1, "rollback", "chaos: repaired")

    def bad_current(self) -> None:
        lab, port = self.lab, self.port
        with self.scenario("non-UTF-8 bytes in `current`", "refused and listed; serving unchanged; 0 failures") as s:
            failures = metric(port, "model_reload_failures_total")
            lab.registry.current_file.write_bytes(b"\xff\xfe\x00garbage\n")
            wait_for(lambda: "current" in json_of(port, "/model")[1].get("refused", {}), 5, "`current` refused")
            ready = json_of(port, "/ready")
            fixed = time.monotonic()
            lab.registry.set_current(lab.v1, "rollback", "chaos: repaired `current`")
            wait_for(lambda: all("current" not in json_of(port, "/model")[1].get("refused", {}) for _ in range(6)), 5,
                     "`current` readable again")
            n, failed = self.probe_failures(s.t0)
            s.row.happened = (f"/ready {ready[0]}; `current` under `refused` in /model; "
                              f"model_reload_failures_total +{metric(port, 'model_reload_failures_total') - failures:.0f}")
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = f"{time.monotonic() - fixed:.1f} s after the fix"
            s.row.ok = ready[0] == 200 and failed == 0

    def meta_list(self) -> None:
        lab, port = self.lab, self.port
        with self.scenario("meta.json that is a JSON list", "refused and listed; serving unchanged; 0 failures") as s:
            name = "20990101T000000Z-aaaaaa"
            folder = lab.registry.versions_dir / name
            shutil.copytree(lab.registry.versions_dir / lab.v2, folder)
            (folder / "meta.json").write_text("[1, 2]")
            lab.registry.set_current(name, "promote", "chaos: a malformed meta.json")
            wait_for(lambda: name in json_of(port, "/model")[1].get("refused", {}), 5, "the version refused")
            status, ready = json_of(port, "/ready")
            lab.registry.set_current(lab.v1, "rollback", "chaos: repaired")
            n, failed = self.probe_failures(s.t0)
            s.row.happened = f"/ready {status} on {str(ready.get('model_version'))[-6:]}; {name} under `refused`"
            s.row.failed = f"{failed} of {n} probe"
            s.row.recover = "0 s (never down)"
            s.row.ok = status == 200 and ready.get("model_version") == lab.v1 and failed == 0

    # -- databases
    def sqlite_moved(self) -> None:
        lab, port = self.lab, self.port
        with self.scenario("SQLite file moved away, then back", "by-user 503 naming the file while away, 200 after; "
                           "/predict 0 failures; no restart") as s:
            by_user = post(f"/predict/user/{lab.user}", b"")
            assert raw(port, by_user)[0] == 200
            away = lab.db.with_name("app.db.away")
            workers = set(workers_of(self.server.process.pid))
            os.rename(lab.db, away)
            try:
                statuses = [raw(port, by_user)[0] for _ in range(10)]
            finally:
                os.rename(away, lab.db)
            back = time.monotonic()
            wait_for(lambda: all(raw(port, by_user)[0] == 200 for _ in range(6)), 10, "by-user 200 again")
            recovered = time.monotonic() - back
            named = any("does not exist" in e.get("msg", "") for e in _new_log_lines(self.server.log, s.offset))
            n, failed = self.probe_failures(s.t0)
            s.row.happened = (f"by-user while away: {statuses.count(503)} x 503 of {len(statuses)}, log names the file "
                              f"and `make seed`: {named}; no empty file created; same workers: "
                              f"{workers == set(workers_of(self.server.process.pid))}")
            s.row.failed = f"{failed} of {n} probe (+{statuses.count(503)} by-user 503, expected)"
            s.row.recover = f"{recovered:.1f} s after it is back"
            s.row.ok = statuses.count(503) == len(statuses) and named and failed == 0

    def hung_postgres(self) -> None:
        with self.scenario("Postgres that accepts and never answers: 60 concurrent /predict/user",
                           "all 503 within 3.5 s (connect timeout 2 s, pool wait 1 s); /predict unaffected") as s:
            port = self.pg.port
            results: list[tuple[int, float]] = []

            def one() -> None:
                t = time.monotonic()
                try:
                    status, _ = raw(port, post(f"/predict/user/{self.lab.user}", b""), timeout=40)
                except OSError:
                    status = 0
                results.append((status, time.monotonic() - t))

            threads = [threading.Thread(target=one) for _ in range(60)]
            started = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(0.3)
            t_predict = time.monotonic()
            predict = raw(port, post("/predict", self.lab.body))[0]
            predict_s = time.monotonic() - t_predict
            for t in threads:
                t.join(45)
            took = time.monotonic() - started
            slowest = max(d for _, d in results)
            statuses = sorted({st for st, _ in results})
            s.row.happened = (f"{sum(1 for st, _ in results if st == 503)} of 60 x 503 (answers {statuses}), slowest "
                              f"{slowest:.1f} s; a /predict meanwhile: {predict} in {predict_s * 1000:.0f} ms")
            s.row.failed = f"{sum(1 for st, _ in results if st != 503)} not 503 (/predict: {0 if predict == 200 else 1})"
            s.row.recover = f"{took:.1f} s for all 60"
            s.row.ok = statuses == [503] and slowest < 3.5 and predict == 200

    # -- signals
    def sighup_under_load(self) -> None:
        port = self.port
        with self.scenario("SIGHUP under load (16 connections)",
                           "no refused connections; < 0.5% of requests failed; old workers retire after the new "
                           "ones listen") as s:
            master = self.server.process.pid
            old = set(workers_of(master))
            load = _Load(port, post("/predict", self.lab.body).replace(b"Connection: close\r\n", b""))
            load.start()
            time.sleep(1.0)
            hup = time.monotonic()
            os.kill(master, signal.SIGHUP)
            wait_for(lambda: (lambda now: len(now) == 2 and not (now & old))(set(workers_of(master))), 60,
                     "only new workers")
            recovered = time.monotonic() - hup
            time.sleep(1.0)
            total, errors = load.stop()
            n, failed = self.probe_failures(s.t0)
            refused = errors.get("refused", 0)
            listening = [e["msg"] for e in _new_log_lines(self.server.log, s.offset) if "new workers listening" in
                         e.get("msg", "")]
            bad = sum(errors.values())
            s.row.happened = (f"{total:,} requests, errors {dict(errors) or 'none'}; master: "
                              f"{listening[0] if listening else 'no ready line'}")
            s.row.failed = f"{bad} of {total:,} load, {failed} of {n} probe"
            s.row.recover = f"{recovered:.1f} s (HUP to only new workers)"
            s.row.ok = refused == 0 and (bad + failed) <= 0.005 * (total + n) and bool(listening)

    def sigterm_with_stalled_upload(self) -> None:
        lab, port = self.lab, self.port
        with self.scenario("SIGTERM with a stalled upload",
                           "stalled request 408 within 2 s, logged as cut; exposures flushed; exit 0 in < 10 s") as s:
            import sqlalchemy as sa

            from features.db import make_engine

            def exposures() -> int:
                engine = make_engine(lab.db_url)
                try:
                    with engine.connect() as conn:
                        return conn.execute(sa.text("SELECT count(*) FROM ab_exposures")).scalar() or 0
                except sa.exc.SQLAlchemyError:
                    return 0
                finally:
                    engine.dispose()

            self.probe.stop()
            before = exposures()
            users = [f"chaos-{i}" for i in range(20)]
            for u in users:
                body = json.dumps({"features": lab.features, "user_id": u}).encode()
                assert raw(port, post("/predict", body))[0] == 200
            stalled = socket.create_connection((HOST, port), timeout=15)
            stalled.sendall(post("/predict", lab.body)[: -len(lab.body) // 2])
            time.sleep(0.3)
            t0 = time.monotonic()
            os.killpg(self.server.process.pid, signal.SIGTERM)
            reply = read_reply(stalled)
            stalled.close()
            cut_after = time.monotonic() - t0
            code = self.server.process.wait(20)
            exited = time.monotonic() - t0
            after = exposures()
            lines = [e.get("msg", "") for e in _new_log_lines(self.server.log, s.offset)]
            cut = [m for m in lines if m.startswith("shutdown: cut")]
            s.row.happened = (f"stalled upload {reply[9:12].decode() or 'closed'} after {cut_after:.1f} s, log: "
                              f"\"{cut[0][:70] + '...' if cut else 'none'}\"; exposures +{after - before} of 20; "
                              f"exit {code}; socket close errors: "
                              f"{sum(1 for m in lines if 'Error while closing socket' in m)}")
            s.row.failed = "0 of 20 (1 stalled, cut on purpose)" if after - before == 20 else "exposures lost"
            s.row.recover = f"{exited:.1f} s to exit"
            s.row.ok = (reply.startswith(b"HTTP/1.1 408") and code == 0 and exited < 10 and bool(cut)
                        and after - before == 20
                        and not any("Error while closing socket" in m for m in lines))

    def run(self, only: list[str] | None = None) -> list[Row]:
        for name in SCENARIOS:
            if not only or name in only:
                getattr(self, name)()
        self.probe.stop()
        return self.rows


SCENARIOS = ("never_ending_header", "slowloris", "hostile_json", "disconnects", "truncated_current_and_kill",
             "bad_current", "meta_list", "sqlite_moved", "hung_postgres", "sighup_under_load",
             "sigterm_with_stalled_upload")


class _Load:
    """Keep-alive load from Python threads, each error by kind (refused, reset, a status)."""

    def __init__(self, port: int, request: bytes, connections: int = 16, pause: float = 0.0) -> None:
        self.port, self.request, self.connections, self.pause = port, request, connections, pause
        self.errors: dict[str, int] = {}
        self.total = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def _count(self, kind: str | None) -> None:
        with self._lock:
            self.total += 1
            if kind:
                self.errors[kind] = self.errors.get(kind, 0) + 1

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = socket.create_connection((HOST, self.port), timeout=10)
                conn.sendall(self.request)
                reply = read_reply(conn)
                if not reply:
                    raise ConnectionResetError("closed")
                status = int(reply[9:12])
                self._count(None if status == 200 else f"status {status}")
                if self.pause:
                    time.sleep(self.pause)
                if b"connection: close" in reply.lower():
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                self._count("refused")
                conn = None
                time.sleep(0.01)
            except OSError:
                self._count("reset")
                if conn is not None:
                    conn.close()
                conn = None

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> tuple[int, dict[str, int]]:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.total, self.errors


def render(rows: list[Row], command: str, wall: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"`{command}`, {when}, {wall:.0f} s wall, {sum(r.ok for r in rows)} of {len(rows)} as expected", "",
             "| scenario | what happened | failed requests | time to recover | RSS before → after | as expected |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.scenario, r.happened, r.failed, r.recover, r.rss, "yes" if r.ok else f"**no** ({r.expected})"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPORT, help=f"the markdown table (default {REPORT})")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, registry) and print it")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios (repeatable)")
    args = parser.parse_args(argv)
    from deploy import harness

    started = time.monotonic()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    hung = HungPostgres()
    server = pg = None
    try:
        lab = Lab(root, say)
        lab.prepare()
        say(f"chaos: demo data and two versions in {time.monotonic() - started:.1f}s; starting the servers")
        server = harness.start(root / "serve.log", lab.env("main"))
        pg = harness.start(root / "serve-hung-postgres.log", lab.env(
            "pg", WEB_CONCURRENCY="1", DATABASE_URL=f"postgresql+psycopg://chaos@{HOST}:{hung.port}/chaos",
            PREDICTION_LOG="false", AB_CONFIG=str(root / "no-experiment.yml")))
        server.wait_ready(90)
        pg.wait_ready(90)
        wait_for(lambda: len(workers_of(server.process.pid)) == 2 and all(
            (root / "prom-main" / f"worker-ready-{p}").exists() for p in workers_of(server.process.pid)), 60,
            "both workers listening")
        rows = Chaos(lab, server, pg, hung, say).run(args.only)
    finally:
        for s in (server, pg):
            if s is not None:
                s.stop(15)
        hung.close()
        if args.keep:
            say(f"chaos: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.monotonic() - started
    table = render(rows, "make chaos", wall)
    print(table)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("# make chaos\n\n" + table)
    failed = [r.scenario for r in rows if not r.ok]
    if failed:
        print(f"chaos: {len(failed)} scenario(s) did not do what they should: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"chaos: every scenario as expected in {wall:.0f}s; the table is in {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
