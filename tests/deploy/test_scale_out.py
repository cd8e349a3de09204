"""Scale-out on one machine: nginx spreads requests over instances and routes around a dead one.

Runs deploy/local_scale.py (the same script `make up SCALE=N` uses) with a tiny stand-in server
per instance, `python -m http.server` serving a file that names the instance, so the test
needs nothing but nginx and is independent of the model server. Loopback addresses only.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/local_scale.py"
INSTANCES = 2


def free_port_block(size: int) -> int:
    """A base port such that base .. base+size-1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"found no {size} consecutive free ports on 127.0.0.1")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode().strip()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed child nobody has reaped yet is a zombie: gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture
def cluster(tmp_path: Path):
    """nginx on a free loopback port in front of INSTANCES http.server processes."""
    for index in range(INSTANCES):
        (tmp_path / f"www{index}").mkdir()
        (tmp_path / f"www{index}" / "whoami.txt").write_text(f"instance-{index}\n")
    command = (
        f"{shlex.quote(sys.executable)} -m http.server {{port}} --bind 127.0.0.1 "
        f"--directory {shlex.quote(str(tmp_path))}/www{{index}}"
    )
    base = free_port_block(INSTANCES + 1)
    common = [
        "--run-dir", str(tmp_path / "run"), "--log-dir", str(tmp_path / "log"),
        "--nginx-dir", str(tmp_path / "nginx"), "--timeout", "10",
    ]
    started = subprocess.run(
        [sys.executable, str(SCRIPT), "start", "--instances", str(INSTANCES), "--port", str(base),
         "--command", command, "--health-path", "/whoami.txt", *common],
        capture_output=True, text=True, timeout=60,
    )
    try:
        assert started.returncode == 0, f"local_scale.py start failed:\n{started.stdout}{started.stderr}"
        yield base, tmp_path / "run"
    finally:
        stopped = subprocess.run(
            [sys.executable, str(SCRIPT), "stop", *common], capture_output=True, text=True, timeout=60
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not list((tmp_path / "run").glob("*.pid")), "stop left pid files behind"


def test_nginx_spreads_requests_and_routes_around_a_killed_instance(cluster) -> None:
    port, run_dir = cluster
    url = f"http://127.0.0.1:{port}/whoami.txt"

    seen = Counter(get(url) for _ in range(20))
    assert set(seen) == {f"instance-{i}" for i in range(INSTANCES)}, f"not balanced: {seen}"

    victim = int((run_dir / f"serve-{port + 1}.pid").read_text())  # instance 0
    os.killpg(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(victim) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(victim)

    answers: Counter[str] = Counter()
    failures = []
    for _ in range(200):
        try:
            answers[get(url)] += 1
        except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
            failures.append(repr(exc))
    assert not failures, f"{len(failures)} of 200 requests failed after one instance died: {failures[:3]}"
    assert set(answers) == {f"instance-{i}" for i in range(1, INSTANCES)}, answers
