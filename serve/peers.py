"""`make bench-peers`: this server next to Seldon MLServer and BentoML, same model, same load, one run.

Each peer is installed at a pinned version into its own throwaway virtualenv under var/peers/
(outside the project's lock; reused while the pins are the same) and serves the current model's
LightGBM booster, saved as LightGBM's own text format. The peers get the most favourable case:
numeric input, already encoded, no validation. This server gets its usual request: named
features, every value checked (serve/README.md). Each configuration runs as its docs advise:
defaults first, then tuned (one worker process per core, one OpenMP thread per prediction).

All servers are up at once and measured in interleaved rounds by the same wrk command (one
thread, 32 connections, a Lua script posting the same row), so a slow spell of a shared host
lowers every figure of a round alike. Before measuring, every server's score for the row is
checked against this server's: the same model, or the run stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path

from deploy.harness import free_port
from deploy.local_scale import stop_process
from serve.bench import ROOT, combine, ensure_model, lua_post, spread, wrk

MLSERVER = ("mlserver==1.7.1", "mlserver-lightgbm==1.7.1",
            "uvloop==0.21.0")  # mlserver 1.7.1 does not start with uvloop 0.22
BENTOML = ("bentoml==1.4.40",)
MODEL_NAME = "model"


def pins(peer: str) -> tuple[str, ...]:
    """What a peer's virtualenv gets: the peer's pins plus this project's LightGBM, so the file loads the same."""
    own = {"mlserver": MLSERVER, "bentoml": BENTOML}[peer]
    return (*own, f"lightgbm=={installed_version('lightgbm')}", f"numpy=={installed_version('numpy')}")


def ensure_venv(root: Path, peer: str, progress=print) -> Path:
    """A virtualenv at root/<peer> with pins(peer) installed; reused while the pins are unchanged."""
    venv = root / peer
    stamp = venv / "pins.txt"
    wanted = "\n".join(pins(peer)) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return venv
    progress(f"peers: installing {' '.join(pins(peer))} into {venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *pins(peer)], check=True)
    stamp.write_text(wanted)
    return venv


# -- model files, as each peer's docs describe them ------------------------------------------------

def mlserver_files(model_dir: Path, booster_file: Path, port: int, grpc_port: int, metrics_port: int,
                   workers: int | None) -> Path:
    """settings.json + model-settings.json for `mlserver start`; workers=None keeps MLServer's default."""
    model_dir.mkdir(parents=True, exist_ok=True)
    settings: dict = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port,
                      "metrics_port": metrics_port, "debug": False}
    if workers is not None:
        settings["parallel_workers"] = workers
    (model_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": str(booster_file), "version": "v1"}}, indent=2))
    return model_dir


BENTO_SERVICE = '''"""BentoML service for the benchmark: the booster at $PEER_MODEL_FILE, numeric rows in, scores out."""
import os

import bentoml
import lightgbm
import numpy as np

WORKERS = int(os.environ.get("PEER_WORKERS", "1"))
THREADS = int(os.environ.get("PEER_NUM_THREADS", "0"))  # 0: LightGBM's default (all cores)


@bentoml.service(workers=WORKERS)
class Scorer:
    def __init__(self) -> None:
        self.booster = lightgbm.Booster(model_file=os.environ["PEER_MODEL_FILE"])

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[float]:
        options = {"num_threads": THREADS} if THREADS else {}
        return self.booster.predict(np.asarray(rows, dtype=np.float64), **options).tolist()
'''


def bento_files(service_dir: Path) -> Path:
    """service.py for `bentoml serve service:Scorer`."""
    service_dir.mkdir(parents=True, exist_ok=True)
    (service_dir / "service.py").write_text(BENTO_SERVICE)
    return service_dir


def v2_body(row: list[float]) -> dict:
    """One row in the Open Inference (V2) protocol MLServer speaks."""
    return {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}


def v2_score(response: dict) -> float:
    return float(response["outputs"][0]["data"][0])


# -- the run ---------------------------------------------------------------------------------------

@dataclass
class Target:
    """One server configuration: how to start it, what to post, how to read its score."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    ready_path: str
    path: str
    body: dict
    score: object  # callable: response JSON -> float
    runs: list[dict] = field(default_factory=list)
    process: subprocess.Popen | None = None
    script: Path | None = None  # wrk's Lua script posting `body`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def post_json(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(target: Target, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise SystemExit(f"peers: {target.name} exited {target.process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(target.url + target.ready_path, timeout=1) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"peers: {target.name} not ready in {seconds:.0f}s:\n{log.read_text()[-3000:]}")


def ratio_table(figures: dict[str, dict], baseline: str) -> list[str]:
    """Rows of the printed table: req/s, p50, p99, errors and req/s against `baseline` (first row)."""
    base = figures[baseline]["rps"]
    lines = [f"   {'server':44s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'vs this':>8s}"]
    for name, f in figures.items():
        lines.append(f"   {name:44s} {f['rps']:>8,.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.1f} {f['errors']:>7d} "
                     f"{f['rps'] / base:>7.2f}x  {spread(f)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="this server's and the tuned peers' worker processes")
    parser.add_argument("--peers-dir", type=Path, default=ROOT / "var" / "peers",
                        help="where the peers' virtualenvs live (default var/peers, git-ignored)")
    parser.add_argument("--only", nargs="*", choices=["mlserver", "bentoml"], default=["mlserver", "bentoml"])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("peers: wrk not found; run `make system-deps` (Debian package wrk)", file=sys.stderr)
        return 2
    venvs = {peer: ensure_venv(args.peers_dir, peer) for peer in args.only}

    from features.codec import CODEC
    from registry import open_registry

    work = Path(tempfile.mkdtemp(prefix="peers-"))
    targets: list[Target] = []
    try:
        model_dir, db_url = ensure_model(work)
        registry = open_registry(model_dir)
        version = registry.current()
        model, meta = registry.load(version)
        features = meta.self_check[0].features
        row = CODEC.row(features)
        booster_file = work / "model.bst"
        model.booster.save_model(str(booster_file))
        expected = model.score_one(row)
        print(f"peers: model {version}; one row, {len(row)} numeric features; {args.workers} workers where tuned")

        def ours() -> Target:
            port = free_port()
            env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(args.workers),
                   "MODEL_DIR": str(model_dir), "DATABASE_URL": db_url, "AB_CONFIG": str(work / "none.yml"),
                   "PROMETHEUS_MULTIPROC_DIR": str(work / "prom")}
            return Target(f"this server ({args.workers} workers, full validation)", [sys.executable, "-m", "serve"],
                          env, ROOT, port, "/ready", "/predict", {"features": features}, lambda r: r["score"])

        targets.append(ours())
        one_thread = {"OMP_NUM_THREADS": "1"}
        if "mlserver" in args.only:
            for label, workers, extra in (("defaults", None, {}),
                                          (f"{args.workers} parallel workers, 1 OpenMP thread", args.workers, one_thread)):
                port = free_port()
                folder = mlserver_files(work / f"mlserver-{len(targets)}", booster_file, port, free_port(), free_port(),
                                        workers)
                targets.append(Target(f"MLServer {MLSERVER[0].split('==')[1]} ({label})",
                                      [str(venvs["mlserver"] / "bin" / "mlserver"), "start", str(folder)],
                                      {**_clean_env(), **extra}, folder, port, "/v2/health/ready",
                                      f"/v2/models/{MODEL_NAME}/infer", v2_body(row), v2_score))
        if "bentoml" in args.only:
            folder = bento_files(work / "bento")
            for label, extra in (("defaults", {}),
                                 (f"{args.workers} workers, 1 OpenMP thread",
                                  {"PEER_WORKERS": str(args.workers), "PEER_NUM_THREADS": "1", **one_thread})):
                port = free_port()
                targets.append(Target(f"BentoML {BENTOML[0].split('==')[1]} ({label})",
                                      [str(venvs["bentoml"] / "bin" / "bentoml"), "serve", "service:Scorer",
                                       "--host", "127.0.0.1", "--port", str(port)],
                                      {**_clean_env(), "PEER_MODEL_FILE": str(booster_file),
                                       "BENTOML_HOME": str(work / "bentoml-home"), **extra},
                                      folder, port, "/readyz", "/predict", {"rows": [row]},
                                      lambda r: float(r[0])))

        for t in targets:
            log = work / f"{len(t.name)}-{t.port}.log"
            with log.open("wb") as out:
                t.process = subprocess.Popen(t.command, cwd=t.cwd, env=t.env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            wait_ready(t, log)
            got = t.score(post_json(t.url + t.path, t.body))
            if abs(got - expected) > 1e-9:
                raise SystemExit(f"peers: {t.name} scores the row {got!r}, this server's model {expected!r}: "
                                 "not the same model; stopping")
            t.script = lua_post(work / f"body-{t.port}.lua", t.body)
            print(f"   ready: {t.name} on :{t.port} (score {got:.6f}, matches)")

        for t in targets:  # warm-up: every worker has served
            wrk(t.url + t.path, 2, args.connections, t.script)
        for _ in range(args.rounds):
            for t in targets:
                t.runs.append(wrk(t.url + t.path, args.seconds, args.connections, t.script))
    finally:
        for t in targets:
            if t.process is not None:
                stop_process(t.process, 30)
        shutil.rmtree(work, ignore_errors=True)

    figures = {t.name: combine(t.runs) for t in targets}
    baseline = targets[0].name
    print(f"\nPOST one row, wrk 1 thread, {args.connections} connections, {args.seconds} s x {args.rounds} "
          f"interleaved rounds (medians; each round's req/s in brackets), on {os.cpu_count()} cores shared with wrk")
    print("\n".join(ratio_table(figures, baseline)))
    # the ratio people quote: this server against each peer's best configuration, round by round
    for peer in ("MLServer", "BentoML"):
        names = [t.name for t in targets if t.name.startswith(peer)]
        if names:
            best = max(names, key=lambda n: figures[n]["rps"])
            ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(targets[0].runs,
                                      next(t for t in targets if t.name == best).runs, strict=True))
            print(f"   this server / best {peer} ({best}): {ratio:.1f}x the req/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(f["errors"] == 0 for f in figures.values()) else 1


def _clean_env() -> dict[str, str]:
    """The environment without this project's virtualenv, so a peer's own packages are found."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


if __name__ == "__main__":
    sys.exit(main())
