"""The real server: gunicorn + uvicorn workers, hot swap under load, graceful SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy import harness
from monitoring.metrics import PENDING_SECONDS
from tests.conftest import copy_registry


class Server:
    """`python -m serve` (deploy.harness) with 2 workers on a copy of the registry; HTTP helpers."""

    def __init__(self, tmp: Path, registry, db_url: str, workers: int = 2) -> None:
        self.server = harness.start(tmp / "serve.log", {
            "WEB_CONCURRENCY": str(workers), "MODEL_DIR": str(registry.root), "DATABASE_URL": db_url,
            "MODEL_POLL_SECONDS": "0.5", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
            "AB_CONFIG": str(tmp / "no-experiment.yml")})
        self.port, self.log, self.proc = self.server.port, self.server.log, self.server.process
        self.server.wait_ready(60)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def stop(self) -> None:
        self.server.stop(30)


@pytest.fixture
def server_and_registry(tmp_path, small_models, small_sqlite_url):
    registry = copy_registry(small_models[0], tmp_path / "models")
    server = Server(tmp_path, registry, small_sqlite_url)
    yield server, registry
    server.stop()


def _features(registry, version):
    return registry.meta(version).self_check[0].features


def test_hot_swap_under_load_fails_no_request(server_and_registry, small_models):
    server, registry = server_and_registry
    _, v1, v2 = small_models
    body = json.dumps({"features": _features(registry, v1)})
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def hammer():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                version = json.loads(data)["model_version"] if response.status == 200 else data.decode()
                results.append((time.monotonic(), response.status, version))
            except (OSError, http.client.HTTPException) as exc:
                results.append((time.monotonic(), 0, repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    swapped_at = time.monotonic()
    registry.set_current(v2, "promote", "swap test")
    time.sleep(3.0)  # 6 poll periods
    stop.set()
    for t in threads:
        t.join()
    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]
    assert len(results) > 200
    before = {v for t, _, v in results if t < swapped_at}
    late = {v for t, _, v in results if t > swapped_at + 2.0}
    assert before == {v1} and late == {v2}
    # every worker serves v2: many fresh connections land on both workers
    assert {server.request("POST", "/predict", {"features": _features(registry, v1)})[1]["model_version"]
            for _ in range(60)} == {v2}


def test_sigterm_finishes_in_flight_requests(server_and_registry, small_models):
    server, registry = server_and_registry
    body = json.dumps({"features": _features(registry, small_models[1])}).encode()
    socks = []
    for _ in range(4):  # requests in flight: headers and half the body sent
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        socks.append(s)
    time.sleep(0.5)
    os.killpg(server.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    for s in socks:
        s.sendall(body[len(body) // 2:])
    for s in socks:
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b'"score"' in reply
    assert server.proc.wait(30) == 0
    assert "Shutting down" in server.log.read_text() or "Handling signal: term" in server.log.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_metrics_add_up_across_workers(server_and_registry, small_models):
    server, registry = server_and_registry
    features = _features(registry, small_models[1])
    for _ in range(40):
        assert server.request("POST", "/predict", {"features": features})[0] == 200

    def scrape() -> tuple[str, float]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return text, sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("model_predictions_total{"))

    # each worker counts its /predict scores in bulk within PENDING_SECONDS (50 ms) of the first
    # of a window: a scrape right after the last request may miss the other worker's last window
    deadline, totals = time.monotonic() + 10 * PENDING_SECONDS, []
    while not totals or (totals[-1] < 40 and time.monotonic() < deadline):
        text, total = scrape()
        totals.append(total)
        time.sleep(PENDING_SECONDS / 5)
    assert totals[-1] == 40 and max(totals) == 40, totals
    baseline = [line for line in text.splitlines() if line.startswith("model_prediction_baseline_bin_fraction{")]
    assert len(baseline) == 10 and sum(float(b.rsplit(" ", 1)[1]) for b in baseline) == pytest.approx(1)


def _connections_by_pid(port: int, pids: list[int], state: str = "01") -> dict[int, int]:
    """Sockets on `port` in `state` held by each of `pids` (from /proc: no tools needed); 01 ESTABLISHED."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:  # state, local port
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        counts[pid] = sum(1 for fd in fds.iterdir() if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes)
    return counts


def _listening_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    return _connections_by_pid(port, pids, "0A")  # 0A: LISTEN


def test_a_burst_of_new_connections_is_spread_over_the_workers(server_and_registry):
    """32 connections opened at once (as wrk or a proxy's pool does) do not all land on one worker.

    With one shared listening socket, the first worker to wake accepted whole bursts and served
    one core's worth; each worker now has its own SO_REUSEPORT socket and the kernel spreads them.
    """
    server, _ = server_and_registry
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert len(workers) == 2
    # A worker listens only once its model is loaded (serve/worker.py): wait until both do.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and min(_listening_by_pid(server.port, workers).values()) == 0:
        time.sleep(0.1)
    for _ in range(5):
        socks = [socket.socket() for _ in range(32)]
        try:
            for s in socks:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", server.port))  # all handshakes in flight at once
            for s in socks:
                s.setblocking(True)
                s.settimeout(10)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            for s in socks:
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            counts = _connections_by_pid(server.port, workers)
            assert sum(counts.values()) == 32, counts
            assert min(counts.values()) >= 4, f"one worker took nearly the whole burst: {counts}"
        finally:
            for s in socks:
                s.close()
        time.sleep(0.2)
