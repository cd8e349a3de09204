"""Local mode of `make up` / `make down`: the stack as processes on this machine, no Docker.

    python -m stack.local up [--scale N]    seed if empty, train if no model, serve in the
                                            background (N>1: N servers behind nginx), Prometheus
                                            when its binary is installed; prints URLs and a curl
    python -m stack.local down              stop all of it

State lives in var/: pid files in var/run, logs in var/log, Prometheus data in var/prometheus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy import harness
from deploy.local_scale import (
    ScaleError,
    is_running,
    port_is_free,
    spawn,
    terminate,
    wait_healthy,
)
from features.schema import example_request
from features.spec import SPEC
from stack.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
RUN, LOGS = VAR / "run", VAR / "log"
SCALE_RUN = RUN / "scale"
PROMETHEUS_PORT = 9090
PROMETHEUS_CANDIDATES = (ROOT / ".tools/prometheus/usr/bin/prometheus",)


class LocalError(SystemExit):
    """A problem the user can fix; printed as one line, non-zero exit."""


def _python(*args: str) -> None:
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    if result.returncode != 0:
        raise LocalError(f"up: `python {' '.join(args)}` failed (exit {result.returncode}); see above")


def _alive(pid_file: Path) -> bool:
    try:
        return is_running(int(pid_file.read_text()))
    except (OSError, ValueError):
        return False


def find_prometheus() -> str | None:
    """The prometheus binary: PATH, or the one `make system-deps` unpacked into .tools/."""
    return shutil.which("prometheus") or next((str(p) for p in PROMETHEUS_CANDIDATES if p.exists()), None)


def start_prometheus(ports: list[int]) -> str | None:
    """Start Prometheus scraping each server on 127.0.0.1:<port> with the stack's rules; its URL."""
    binary = find_prometheus()
    if binary is None:
        print("up: Prometheus not installed (run `make system-deps`); skipping it")
        return None
    if not port_is_free(PROMETHEUS_PORT):
        print(f"up: port {PROMETHEUS_PORT} is taken; not starting Prometheus")
        return None
    folder = VAR / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config = (ROOT / "monitoring/prometheus.local.yml").read_text()
    config = config.replace("rules/*.yml", str(ROOT / "monitoring/rules/*.yml"))
    # Scrape every instance, never the balancer: each gunicorn sums its own workers only.
    config = config.replace('["127.0.0.1:8000"]', "[" + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]")
    (folder / "prometheus.yml").write_text(config)
    argv = [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"]
    log = LOGS / "prometheus.log"
    process = spawn(argv, dict(os.environ), log, RUN / "prometheus.pid")
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
    wait_healthy(f"{url}/-/ready", process, log, 30)
    return url


def up(scale: int) -> None:
    settings = get_settings()
    port = settings.port
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    if _alive(RUN / "serve.pid") or any(_alive(p) for p in SCALE_RUN.glob("*.pid")):
        raise LocalError("up: the stack is already running; `make down` first")
    ports = [port] if scale == 1 else [port, *range(port + 1, port + scale + 1)]
    busy = [p for p in ports if not port_is_free(p)]
    if busy:
        raise LocalError(f"up: port {busy[0]} on 127.0.0.1 is already in use; stop what listens there "
                         f"or run `make up PORT=<another>`")
    _python("-m", "features.demo")
    _python("-m", "train", "--if-missing")
    if scale == 1:
        server = harness.start(LOGS / "serve.log", port=port, pid_file=RUN / "serve.pid")
        server.wait_ready(90)
        print(f"up: model server on {server.url} (pid {server.process.pid}, log {server.log})")
    else:
        result = subprocess.run([sys.executable, str(ROOT / "deploy/local_scale.py"), "start",
                                 "--instances", str(scale), "--port", str(port), "--run-dir", str(SCALE_RUN),
                                 "--health-path", "/ready", "--timeout", "90"], cwd=ROOT)
        if result.returncode != 0:
            raise LocalError("up: could not start the scaled servers; see above")
    example = VAR / "example.json"  # a /predict body from features/spec.yml, for the curl below
    example.write_text(json.dumps(example_request()) + "\n")
    prometheus = start_prometheus([port] if scale == 1 else list(range(port + 1, port + scale + 1)))
    base = f"http://127.0.0.1:{port}"
    print(f"""
The stack is up.
  API docs     {base}/docs
  metrics      {base}/metrics
  model        {base}/model{f'''
  Prometheus   {prometheus}  (alerts: {prometheus}/alerts)''' if prometheus else ''}
Try a prediction ({SPEC.task}):
  curl -s -X POST {base}/predict/user/{SPEC.entity.example}
  curl -s -X POST {base}/predict -H 'content-type: application/json' -d @var/example.json
Stop with: make down""")


def down() -> None:
    stopped = []
    for pid_file in (RUN / "prometheus.pid", RUN / "serve.pid"):
        if pid_file.exists():
            if _alive(pid_file):
                terminate(int(pid_file.read_text()), 30)
                stopped.append(pid_file.stem)
            pid_file.unlink(missing_ok=True)
    if any(SCALE_RUN.glob("*.pid")):
        subprocess.run([sys.executable, str(ROOT / "deploy/local_scale.py"), "stop", "--run-dir", str(SCALE_RUN)],
                       cwd=ROOT, check=False)
        stopped.append("scaled servers")
    print("down: stopped " + ", ".join(stopped) if stopped else "down: nothing was running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.local", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--scale", type=int, default=1, help="server instances (2+: behind nginx)")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale must be at least 1, got {args.scale}")
    try:
        up(args.scale) if args.action == "up" else down()
    except (ScaleError, harness.ServerError) as exc:
        print(f"up: {exc}", file=sys.stderr)
        return 2
    except LocalError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
