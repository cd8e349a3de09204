"""The smoke load test: `python -m loadtest` against a real server on the small demo data.

A few users for a few seconds: it proves the scenario, the server's answers to every request
kind (bad inputs get their 4xx) and the report, not capacity; the SLOs are loosened so that a
busy CI machine passes, except the error rate, which must be zero. Loopback only.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import harness
from features.db import make_engine
from loadtest import payloads, report, traffic
from loadtest import results as lr
from tests.conftest import demo

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

VARIANTS = ("control", "treatment")
AB_CONFIG = f"""\
experiment:
  name: loadtest-smoke
  salt: loadtest-smoke-1
  variants:
    - {{name: {VARIANTS[0]}, weight: 50, model: current}}
    - {{name: {VARIANTS[1]}, weight: 50, model: current}}
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_demo) -> Iterator[tuple[str, Path]]:
    """A trained model served by `python -m serve` (one worker) on its own copy of the demo data,
    with an A/B experiment of two variants (both `current`) so that routing runs.

    The server starts first and polls for a model while this process trains one (in process:
    no second interpreter importing scikit-learn) and builds the payloads: the slow part.
    """
    from registry.store import Registry
    from train.pipeline import TrainConfig, run

    tmp = tmp_path_factory.mktemp("loadtest_server")
    url = f"sqlite:///{tmp / 'app.db'}"
    engine = make_engine(url)
    demo.load(engine, small_demo)
    ab_config = tmp / "experiment.yml"
    ab_config.write_text(AB_CONFIG)
    serve = harness.start(tmp / "serve.log", {
        "DATABASE_URL": url, "MODEL_DIR": str(tmp / "models"), "EXPERIMENTS_LOG": str(tmp / "runs.csv"),
        "WEB_CONCURRENCY": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        "MODEL_POLL_SECONDS": "0.5", "AB_CONFIG": str(ab_config), "ADMIN_TOKEN": None,
    })
    try:
        payload_path = payloads.write(payloads.build(url, rows=500, progress=lambda _msg: None),
                                      tmp / "payloads.json")
        run(engine, Registry(tmp / "models"), tmp / "runs.csv",
            TrainConfig(model_type="logreg", as_of_count=3, notes="loadtest smoke"),
            progress=lambda _msg: None)
        serve.wait_ready(60)
        yield serve.url, payload_path
    finally:
        engine.dispose()
        serve.stop()


def test_smoke_load_test(server: tuple[str, Path], tmp_path: Path) -> None:
    base, payload_path = server
    out = tmp_path / "loadtest"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "--host", base, "--users", "4", "--spawn-rate", "4",
         "--duration", "6s", "--processes", "1", "--user-rps", "30", "--payloads", str(payload_path),
         "--out", str(out), "--slo-p99-ms", "5000", "--slo-min-rps", "1", "--slo-error-rate", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    runs = [p for p in out.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert f"loadtest: report {run_dir / report.REPORT}" in proc.stdout

    text = (run_dir / report.REPORT).read_text()
    assert "All SLOs met" in text
    png = (run_dir / report.CHART).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000

    res = lr.read(run_dir / report.CSV_PREFIX)
    assert res.total.failures == 0 and res.exception_count == 0, res.failures
    for name in traffic.ENDPOINT_NAMES:
        entry = res.endpoint(name)
        # A bad input counts as a success only when the server answered 4xx naming the field.
        assert entry is not None and entry.requests > 0, f"no requests to {name}: {output}"
        assert entry.failures == 0, f"{name}: {res.failures}"
    history = lr.read_history(run_dir / report.CSV_PREFIX)
    assert any(p.name == traffic.PREDICT and p.rps > 0 for p in history)

    # The user ids in /predict requests went through the A/B split: both variants served.
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    served = {v for v in VARIANTS for line in metrics.splitlines()
              if line.startswith("model_predictions_total{") and f'variant="{v}"' in line
              and float(line.rsplit(" ", 1)[1]) > 0}
    assert served == set(VARIANTS), [m for m in metrics.splitlines() if "predictions_total" in m]
