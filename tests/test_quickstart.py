"""The README's quickstart on a fresh copy of the tree: `make up`, a prediction, `make down`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from features.spec import SPEC
from tests.conftest import ROOT, free_port

STACK_VARS = ("DATABASE_URL", "MODEL_DIR", "EXPERIMENTS_LOG", "AB_CONFIG", "PORT", "HOST", "WEB_CONCURRENCY",
              "PROMETHEUS_MULTIPROC_DIR", "ADMIN_TOKEN", "MODEL_POLL_SECONDS")


def fresh_copy(dest: Path) -> Path:
    """The files a clone would have (tracked and untracked-but-not-ignored), nothing else."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def make(copy: Path, target: str, port: int, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and not k.startswith("MAKE")}
    env["STACK_MODE"] = "local"  # this tests local mode, whatever Docker engine answers
    return subprocess.run(["make", target, f"VENV={ROOT / '.venv'}", f"PORT={port}"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=timeout)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_make_up_predict_make_down(tmp_path):
    copy = fresh_copy(tmp_path / "clone")
    port = free_port()
    try:
        up = make(copy, "up", port)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert f"http://127.0.0.1:{port}/docs" in up.stdout and "curl" in up.stdout
        body = (copy / "var/example.json").read_bytes()  # written by make up from features/spec.yml
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                         headers={"content-type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"]
        user = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/predict/user/{SPEC.entity.example}", method="POST"), timeout=10).read())
        assert 0.0 <= user["score"] <= 1.0
        again = make(copy, "up", port, timeout=60)  # a second `make up` refuses, in one line
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = make(copy, "down", port, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not listening(port) and not listening(9090) or not (copy / "var/run/prometheus.pid").exists()
    assert not listening(port)


def test_make_up_with_the_port_taken_says_so(tmp_path):
    copy = fresh_copy(tmp_path / "clone")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = make(copy, "up", port, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "port" in line]
    assert lines and f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert not (copy / "var/app.db").exists()  # nothing half-done: it stopped before seeding
