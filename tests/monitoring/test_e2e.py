"""End to end: a trained model behind real gunicorn workers, scraped by a real Prometheus that
runs the repo's rule files, with traffic whose scores drifted from the training baseline.

What the unit tests cannot show: that the names, labels and multiprocess merging of the server,
the recording rules, the alerts and the dashboard fit together on live data.

The rule files are loaded unchanged. Their windows (5m, 1h) are satisfied by a few 1s scrapes,
and an alert is `pending` from the first evaluation its expression is true: `for:` only delays
`firing`, so asserting `pending` needs no shortened durations. Loopback addresses only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from deploy import harness
from deploy.local_scale import stop_process
from features.db import make_engine
from stack.settings import Settings
from tests.conftest import free_port
from tests.monitoring.test_rules import (
    DASHBOARDS,
    RULE_FILES,
    dashboard_exprs,
    find_promtool,
    rules,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 600  # well above the 200 predictions PredictionDistributionShift needs
SHIFT_ALERT = "PredictionDistributionShift"
# Alerts that must stay silent on a healthy server. ModelLatencyHigh is left out: on a shared
# 2-core CI machine a few preempted model calls can push p99 over 25ms.
HEALTHY_SILENT = {
    "ServeTargetDown",
    "HighErrorRate",
    "ModelStale",
    "NoPredictions",
    "ModelReloadFailures",
}
PREDICTIONS = 'sum(model_predictions_total{job="serve"})'
BINS = 'model_prediction_score_bin_total{job="serve"}'
CLAMP = 0.0001  # the recording rules' floor for an empty bin
# Grafana's built-in interval variables, and what any other $variable stands for in a query.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass
class Stack:
    server: str  # base URL of the model server
    prometheus: httpx.Client  # base_url is the Prometheus server
    version: str  # the model version being served
    meta: dict[str, Any]  # its meta.json
    multiproc_dir: Path  # PROMETHEUS_MULTIPROC_DIR of the server


@dataclass
class Traffic:
    scores: list[float]  # one per request, as the server answered


# --- processes -------------------------------------------------------------------------------


@contextmanager
def running(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run argv in its own process group; SIGTERM the group on exit, SIGKILL if it lingers."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def until(check: Callable[[], tuple[bool, Any]], what: str, timeout: float = 60.0) -> Any:
    """Poll check() until it says done; fail with `what` and the last thing it saw."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, seen = check()
        except (httpx.HTTPError, ValueError) as exc:  # not up yet, or an answer mid-write
            done, seen = False, repr(exc)
        if done:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f}s, still waiting for {what}; last saw: {seen}")
        time.sleep(0.25)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> dict:
    def check() -> tuple[bool, Any]:
        if process.poll() is not None:
            pytest.fail(f"{process.args[:3]} exited with {process.returncode}:\n{tail(log)}")
        response = httpx.get(url, timeout=2)
        return response.status_code == 200, response.text

    body = until(check, f"{url} to answer 200 (log: {log})", timeout)
    return json.loads(body) if body.startswith("{") else {}


def prometheus_binary() -> str:
    """prometheus next to promtool (.tools/ or PATH; monitoring/install_promtool.sh puts both)."""
    found = Path(find_promtool()).with_name("prometheus")
    if found.is_file():
        return str(found)
    on_path = shutil.which("prometheus")
    if on_path is None:
        pytest.fail(
            f"no prometheus binary next to {found.parent} nor on PATH; "
            "run `bash monitoring/install_promtool.sh` or put prometheus on PATH"
        )
    return on_path


# --- Prometheus API ----------------------------------------------------------------------------


def query_raw(prometheus: httpx.Client, expr: str) -> dict:
    """The /api/v1/query answer as JSON, errors included (they come with HTTP 400 or 422)."""
    return prometheus.get("/api/v1/query", params={"query": expr}).json()


def query(prometheus: httpx.Client, expr: str) -> list[dict]:
    answer = query_raw(prometheus, expr)
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def scalar(prometheus: httpx.Client, expr: str) -> float | None:
    """The value of a query that returns one series, or None when it returns none."""
    result = query(prometheus, expr)
    assert len(result) <= 1, f"{expr} returned {len(result)} series: {result}"
    return float(result[0]["value"][1]) if result else None


def active_alerts(prometheus: httpx.Client) -> dict[str, dict]:
    alerts = prometheus.get("/api/v1/alerts").json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts}


def predictions_by_process(multiproc_dir: Path, scratch: Path) -> dict[str, float]:
    """model_predictions_total of each process, read from its own value file alone."""
    counts = {}
    for path in multiproc_dir.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir()
        shutil.copy(path, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[path.stem.removeprefix("counter_")] = sum(
            sample.value
            for family in registry.collect()
            if family.name == "model_predictions"
            for sample in family.samples
            if sample.name == "model_predictions_total"
        )
    return counts


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(small_sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one model trained and deployed on the small demo data."""
    from registry.store import Registry
    from train.pipeline import TrainConfig, run

    root = tmp_path_factory.mktemp("e2e-models")
    # one thread: OpenMP threads spin-waiting on a busy 2-core CI machine slow training tenfold
    config = TrainConfig(as_of_count=4, params={"num_threads": 1})
    run(
        make_engine(small_sqlite_url),
        Registry(root / "models"),
        root / "runs.csv",
        config,
        progress=lambda _message: None,
    )
    return root / "models"


@pytest.fixture(scope="module")
def stack(
    model_dir: Path, small_sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`python -m serve` with 2 workers and Prometheus scraping it every second."""
    tmp = tmp_path_factory.mktemp("e2e-stack")
    serve_port, prometheus_port = free_port(), free_port()
    multiproc = tmp / "prom-multiproc"
    # nothing from the caller's environment may configure the server, only what is set here
    base = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env = {
        "WEB_CONCURRENCY": "2",
        "MODEL_DIR": str(model_dir),
        "DATABASE_URL": small_sqlite_url,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "AB_CONFIG": str(tmp / "no-experiment.yml"),  # absent: no A/B split, variant "none"
    }
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "serve",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus_argv = [
        prometheus_binary(),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--log.level=warn",
    ]
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    with ExitStack() as stop:
        serve_log, prometheus_log = tmp / "serve.log", tmp / "prometheus.log"
        serve = stop.enter_context(harness.start(serve_log, env, port=serve_port, base=base))
        prometheus = stop.enter_context(running(prometheus_argv, prometheus_log))
        # generous deadlines, not expected durations: on a busy 2-core machine two workers
        # importing lightgbm and scikit-learn side by side have taken a minute to be ready
        wait_ready(f"{prometheus_url}/-/ready", prometheus, prometheus_log, timeout=60)
        ready = serve.wait_ready(timeout=180)
        client = stop.enter_context(httpx.Client(base_url=prometheus_url, timeout=10))
        version = ready["model_version"]
        meta = json.loads((model_dir / "versions" / version / "meta.json").read_text())

        # /ready answers once one worker has loaded the model; the traffic is for both
        def workers_with_model() -> tuple[bool, list[str]]:
            files = sorted(path.name for path in multiproc.glob("gauge_livemax_*.db"))
            return len(files) == 2, files

        until(workers_with_model, "both workers to export the model (gauge_livemax_<pid>.db)")
        yield Stack(serve.url, client, version, meta, multiproc)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Traffic:
    """REQUESTS predictions of the highest-scoring users only: a mix training never saw."""
    bins = len(stack.meta["score_baseline"]["fractions"])

    # increase() needs a sample from before the traffic: wait until every bin was scraped at 0
    def bins_scraped_at_zero() -> tuple[bool, list[dict]]:
        seen = query(stack.prometheus, BINS)
        return len(seen) == bins and all(float(s["value"][1]) == 0 for s in seen), seen

    until(bins_scraped_at_zero, "a scrape of the score bins before any prediction")

    top = sorted(stack.meta["self_check"], key=lambda row: row["expected"])[-3:]
    bodies = [{"features": top[i % len(top)]["features"]} for i in range(REQUESTS)]
    # a connection per request: each is accepted by whichever worker is free, so both serve
    with (
        httpx.Client(
            base_url=stack.server,
            timeout=30,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=0),
        ) as client,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        responses = list(pool.map(lambda body: client.post("/predict", json=body), bodies))
    failed = [r for r in responses if r.status_code != 200]
    assert not failed, f"{len(failed)} of {REQUESTS} predictions failed: {failed[0].text}"
    return Traffic([r.json()["score"] for r in responses])


@pytest.fixture(scope="module")
def scraped(stack: Stack, traffic: Traffic) -> None:
    """Wait until Prometheus has scraped every prediction."""
    until(
        lambda: ((n := scalar(stack.prometheus, PREDICTIONS)) == REQUESTS, n),
        f"{PREDICTIONS} == {REQUESTS}",
    )


def expected_psi(scores: list[float], baseline: dict[str, list[float]]) -> float:
    """PSI as monitoring/rules/recording.yml computes it, from the scores the server answered."""
    counts, _ = np.histogram(scores, bins=baseline["edges"])
    live = np.maximum(counts / counts.sum(), CLAMP)
    base = np.maximum(np.asarray(baseline["fractions"]), CLAMP)
    return float(np.sum((live - base) * np.log(live / base)))


# --- tests -------------------------------------------------------------------------------------


def test_every_prediction_of_both_workers_is_counted_once(
    stack: Stack, scraped: None, tmp_path: Path
) -> None:
    assert scalar(stack.prometheus, 'up{job="serve"}') == 1.0
    # one count per request, summed over both workers: none lost, none counted twice
    assert scalar(stack.prometheus, PREDICTIONS) == REQUESTS
    by_process = predictions_by_process(stack.multiproc_dir, tmp_path)
    serving = {pid: n for pid, n in by_process.items() if n > 0}
    assert len(serving) == 2 and sum(serving.values()) == REQUESTS, by_process
    by_version = query(stack.prometheus, 'model_predictions_total{job="serve"}')
    assert [(s["metric"]["model_version"], s["metric"]["variant"]) for s in by_version] == [
        (stack.version, "none")
    ]
    # the baseline gauge is the same in both workers: merged with max, never added up
    baseline = scalar(stack.prometheus, 'sum(model_prediction_baseline_bin_fraction{job="serve"})')
    assert baseline == pytest.approx(1.0, abs=0.01)


def test_drifted_scores_raise_psi_and_the_shift_alert(
    stack: Stack, traffic: Traffic, scraped: None
) -> None:
    psi = expected_psi(traffic.scores, stack.meta["score_baseline"])
    assert psi > 0.2, f"the traffic is not shifted enough to test the alert (PSI {psi:.3f})"
    psi1h = f'model:prediction_score:psi1h{{job="serve",model_version="{stack.version}"}}'

    def settled() -> tuple[bool, Any]:
        recorded = scalar(stack.prometheus, psi1h)
        alerts = active_alerts(stack.prometheus)
        states = {name: a["state"] for name, a in alerts.items()}
        # the alert's value lags the recorded PSI by up to one evaluation
        alert_value = float(alerts[SHIFT_ALERT]["value"]) if SHIFT_ALERT in alerts else None
        done = (
            recorded is not None
            and recorded == pytest.approx(psi, rel=1e-6)
            and alert_value == pytest.approx(psi, rel=1e-6)
            and not HEALTHY_SILENT & alerts.keys()
        )
        return done, {
            "psi1h": recorded,
            "alert value": alert_value,
            "expected": psi,
            "alerts": states,
        }

    seen = until(settled, f"psi1h == {psi:.4f}, {SHIFT_ALERT} active, no other alert")
    shift = active_alerts(stack.prometheus)[SHIFT_ALERT]
    assert shift["state"] in {"pending", "firing"}, seen
    assert shift["labels"]["model_version"] == stack.version
    assert shift["labels"]["severity"] == "warning"
    increase1h = f'model:predictions:increase1h{{job="serve",model_version="{stack.version}"}}'
    assert scalar(stack.prometheus, increase1h) >= 200  # the alert's minimum-traffic guard


def test_every_rule_evaluates_on_live_data(stack: Stack, scraped: None) -> None:
    groups = stack.prometheus.get("/api/v1/rules").json()["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules("alert")) + len(rules("record"))
    unhealthy = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert not unhealthy, f"rules that failed to evaluate: {unhealthy}"

    for rule in rules("alert") + rules("record"):
        query(stack.prometheus, rule["expr"])  # asserts status success

    # a rule evaluation after the scrape of the traffic gives every recording rule a series, but
    # the realized-quality ones: they need `python -m monitoring.quality` on matured labels
    # (tests/monitoring/test_quality.py)
    def without_series() -> tuple[bool, list[str]]:
        empty = [r["record"] for r in rules("record")
                 if not needs_matured_labels(r["expr"]) and not query(stack.prometheus, r["record"])]
        return not empty, empty

    until(without_series, f"a series from every recording rule after {REQUESTS} predictions")


def needs_matured_labels(expr: str) -> bool:
    """Realized quality: series only once the quality job has scored matured predictions."""
    return "realized" in expr


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus runs it: Grafana's variables substituted."""
    return GRAFANA_VARIABLE.sub(lambda m: GRAFANA_INTERVALS.get(m.group(1), ".+"), expr)


def test_every_dashboard_query_runs_and_shows_data(stack: Stack, scraped: None) -> None:
    queries = [(where, grafana_to_promql(expr)) for where, expr in dashboard_exprs()]
    assert DASHBOARDS and queries
    refused = {}
    for where, expr in queries:
        answer = query_raw(stack.prometheus, expr)
        if answer["status"] != "success":
            refused[where] = (expr, answer.get("error"))
    assert not refused, f"dashboard queries Prometheus refused: {refused}"

    # every panel has data on a serving model, except the A/B ones, which need an experiment, and
    # the realized-quality ones, which need matured labels
    def without_data() -> tuple[bool, list[str]]:
        empty = [
            f"{where}: {expr}"
            for where, expr in queries
            if "ab_exposures_" not in expr and not needs_matured_labels(expr) and not query(stack.prometheus, expr)
        ]
        return not empty, empty

    until(without_data, "data for every dashboard query but the A/B and realized-quality ones")
