"""`python -m monitoring.demo` (make monitoring-demo): the monitoring loop closing, on demo data.

Seeds a database through the spec's loader, trains a model, starts the real server (gunicorn,
2 workers) and a real Prometheus running a copy of monitoring/rules/ whose windows and `for:`
durations are divided by --speedup (the production rules are not touched), then plays three
phases of traffic, each from its own entities:

  (a) normal: the holdout's entities, as they were; each one's outcome is what it really did
      in the label window after the holdout date, replayed after its prediction;
  (b) drift: one feature (picked from the spec: the numeric one with the most training bins,
      or --feature) moves by the width of its training distribution; outcomes as in (a): the
      input moved, the relation did not. FeatureDrift fires naming that feature;
  (c) relation change: inputs as in (a), but the outcomes go to other entities of the phase
      (shuffled): the same base rate, and the features no longer say who. Once the outcomes
      mature and the quality job runs, ModelQualityDegraded fires.

Outcomes are simulated into the spec's outcome table (the loader's record_outcomes) at times
inside each prediction's label window; the quality job (monitoring.quality) then runs as of one
label horizon after the phase (--now), over that phase's predictions, so the server's
model_realized_* gauges describe one phase at a time. Writes to --out: realized_auc.png
(realized ROC AUC over time against the holdout AUC), summary.txt (which alert fired when),
summary.json, the logs, the demo rules and the quality job's own files (models/quality/).
Nothing outside --out is read or written: not var/app.db, not var/models.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deploy import harness
from deploy.local_scale import HOST, http_ok, log_tail, spawn, stop_process
from features.spec import SPEC

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules"
MARKER = ".monitoring-demo"  # only a folder holding this file (or an empty one) is ever wiped
DRIFT_ALERT, QUALITY_ALERT = "FeatureDrift", "ModelQualityDegraded"
CLIENTS = 8  # concurrent clients of a phase; the server runs --workers workers
SCRAPE_S = 1  # Prometheus scrape and rule evaluation interval
MIN_WINDOW_S = 4  # a shortened range window keeps at least 4 scrapes: rate() needs two samples
RESOLUTION_MIN = 5.0  # the quality job's label resolution (its default); outcomes come later than this
BUCKETS_PER_PHASE = 4  # points of realized AUC per phase in the chart
QUALITY_DROP = 0.05  # ModelQualityDegraded: realized AUC this far below the holdout's
MATURED_GUARD = 500  # ... on at least this many matured predictions (the rule's guard)
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d|w|y))(:(\d+(?:ms|s|m|h|d|w|y))?)?\]")
SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}

Progress = Callable[[str], None]


class DemoError(RuntimeError):
    """A step of the demo went wrong; the message says which and where to look."""


@dataclass
class Phase:
    key: str  # a, b, c
    title: str
    rows: list[dict]  # request bodies' features, one per entity
    keys: list[str]  # canonical entity keys, as sent in user_id
    labels: np.ndarray  # the outcome each entity gets (1 = positive label), after the phase's rule
    start: float = 0.0  # wall clock (Unix seconds) of the first request
    end: float = 0.0  # ... and when the last one was answered
    realized: dict[str, Any] = field(default_factory=dict)  # the quality job's window figures
    quality_at: float = 0.0  # when the quality job for this phase wrote latest.json
    exported_at: float = 0.0  # when Prometheus first saw the phase's realized figures


@dataclass
class AlertSpan:
    alertname: str
    labels: dict[str, str]
    pending_at: float | None  # Unix seconds of the first evaluation that found it true
    firing_at: float | None
    until: float  # the last evaluation that still had it


# --- demo rules --------------------------------------------------------------------------------


def seconds_of(text: str) -> float:
    """A Prometheus duration ("1h", "15m", "1h30m") in seconds."""
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * SECONDS[u] for n, u in parts)


def shortened(text: str, speedup: float, floor: float) -> str:
    return f"{max(floor, math.ceil(seconds_of(text) / speedup))}s"


def demo_rules(speedup: float, sources: list[Path] | None = None) -> dict[str, tuple[str, dict[str, str]]]:
    """The rule files with every range window and `for:` divided by `speedup`.

    Returns {file name: (YAML text, {original duration: demo duration})}. Range windows keep at
    least MIN_WINDOW_S seconds (a few scrapes), `for:` at least one second. Thresholds, guards
    and expressions are otherwise the production ones.
    """
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for path in sources or sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        changed: dict[str, str] = {}

        def window(match: re.Match[str], changed: dict[str, str] = changed) -> str:
            new = shortened(match.group(1), speedup, MIN_WINDOW_S)
            changed[f"[{match.group(1)}]"] = f"[{new}]"
            step = match.group(3)
            return f"[{new}:{shortened(step, speedup, SCRAPE_S)}]" if step else (
                f"[{new}:]" if match.group(2) else f"[{new}]")

        for group in doc["groups"]:
            for rule in group["rules"]:
                rule["expr"] = RANGE.sub(window, rule["expr"])
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        new = shortened(str(rule[key]), speedup, SCRAPE_S)
                        changed[f"{key}: {rule[key]}"] = f"{key}: {new}"
                        rule[key] = new
        header = (f"# GENERATED by python -m monitoring.demo from monitoring/rules/{path.name}: every range window\n"
                  f"# and `for:` divided by {speedup:g} so that alerts fire within a minute. A demo copy, never\n"
                  "# for production: the rule names (psi1h, increase1h) keep their names, not their windows.\n")
        out[path.name] = (header + yaml.safe_dump(doc, sort_keys=False, width=120), changed)
    return out


# --- processes ---------------------------------------------------------------------------------


def find_prometheus() -> str:
    """prometheus from PATH or .tools/, else unpacked there by monitoring/install_promtool.sh."""
    import subprocess

    found = shutil.which("prometheus")
    if found:
        return found
    local = ROOT / ".tools" / "prometheus" / "usr" / "bin" / "prometheus"
    if not local.is_file():
        result = subprocess.run(["bash", str(ROOT / "monitoring" / "install_promtool.sh")], capture_output=True,
                                text=True, timeout=600)
        lines = result.stdout.strip().splitlines()
        if result.returncode == 0 and lines:
            local = Path(lines[-1]).with_name("prometheus")
    if not local.is_file():
        raise DemoError("no prometheus binary on PATH nor in .tools/prometheus: run `make system-deps` "
                        "(or `bash monitoring/install_promtool.sh`), or put prometheus on PATH")
    return str(local)


@contextmanager
def prometheus(out: Path, serve_port: int, rule_files: list[Path]) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping the server every second; its base URL."""
    port = harness.free_port()
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                   "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "serve", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"{HOST}:{serve_port}"]}]}],
    }
    (out / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log = out / "prometheus.log"
    process = spawn([find_prometheus(), f"--config.file={out / 'prometheus.yml'}",
                     f"--storage.tsdb.path={out / 'tsdb'}", f"--web.listen-address={HOST}:{port}",
                     "--log.level=warn"], dict(os.environ), log, None)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while not http_ok(f"{url}/-/ready"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"Prometheus did not become ready (exit {process.poll()}). Last lines of {log}:\n"
                                f"{log_tail(log)}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process, 10)


class Prom:
    """The few Prometheus API calls the demo makes (the standard library's HTTP client)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> dict:
        import urllib.error
        import urllib.parse
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a refused query answers 400/422 with a JSON body
            return json.loads(exc.read() or b"{}")

    def query(self, expr: str) -> list[dict]:
        answer = self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            raise DemoError(f"Prometheus refused {expr!r}: {answer}")
        return answer["data"]["result"]

    def alerts(self) -> list[dict]:
        return self.get("/api/v1/alerts")["data"]["alerts"]

    def timeline(self, start: float, end: float) -> list[AlertSpan]:
        """Every alert that was pending or firing between start and end, from the ALERTS series."""
        answer = self.get("/api/v1/query_range", query="ALERTS", start=start, end=end, step=f"{SCRAPE_S}s")
        if answer.get("status") != "success":
            raise DemoError(f"Prometheus refused the ALERTS range query: {answer}")
        spans: dict[tuple, AlertSpan] = {}
        for series in answer["data"]["result"]:
            labels = dict(series["metric"])
            state = labels.pop("alertstate")
            name = labels.pop("alertname")
            labels.pop("__name__", None)
            times = [float(t) for t, _ in series["values"]]
            key = (name, tuple(sorted(labels.items())))
            span = spans.setdefault(key, AlertSpan(name, labels, None, None, times[-1]))
            first = times[0]
            if state == "pending":
                span.pending_at = first if span.pending_at is None else min(span.pending_at, first)
            else:
                span.firing_at = first if span.firing_at is None else min(span.firing_at, first)
            span.until = max(span.until, times[-1])
        return sorted(spans.values(), key=lambda s: (s.pending_at or s.firing_at or 0, s.alertname))


def until(check: Callable[[], tuple[bool, Any]], what: str, timeout: float) -> Any:
    """Poll check() until it says done; DemoError naming `what` and the last thing seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, seen = check()
        except (OSError, ValueError, KeyError) as exc:  # not answering yet, or an answer mid-write
            done, seen = False, repr(exc)
        if done:
            return seen
        if time.monotonic() > deadline:
            raise DemoError(f"after {timeout:.0f}s, still waiting for {what}; last saw: {seen}")
        time.sleep(0.25)


# --- traffic -----------------------------------------------------------------------------------


class Client:
    """POST /predict over one keep-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def predict(self, body: dict) -> tuple[int, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request("POST", "/predict", body=json.dumps(body), headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            self.local.conn = None
            return 0, {"error": repr(exc)}


def send_phase(client: Client, phase: Phase) -> list[float]:
    """Every entity of the phase once, CLIENTS at a time; the scores, in the phase's order."""
    bodies = [{"features": row, "user_id": key} for row, key in zip(phase.rows, phase.keys, strict=True)]
    phase.start = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client.predict, bodies))
    phase.end = time.time()
    failed = [(status, body) for status, body in answers if status != 200]
    if failed:
        raise DemoError(f"phase {phase.key}: {len(failed)} of {len(bodies)} requests failed, e.g. {failed[:2]}")
    return [body["score"] for _, body in answers]


class Background:
    """Anonymous requests (no entity: not in the prediction log) at a steady rate, so that the
    shortened NoPredictions alert keeps quiet while the demo waits for Prometheus."""

    def __init__(self, client: Client, rows: list[dict], rate: float) -> None:
        self.client, self.rows, self.rate = client, rows, rate
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="background-traffic", daemon=True)

    def __enter__(self) -> Background:
        if self.rate > 0 and self.rows:
            self.thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(1.0 / self.rate):
            self.client.predict({"features": self.rows[i % len(self.rows)]})
            self.sent += 1
            i += 1

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)


# --- the world ---------------------------------------------------------------------------------


@dataclass
class Shift:
    feature: str
    kind: str
    amount: float | None  # numeric: added to every present value
    value: str | None  # categorical: every row gets this value
    text: str  # how the summary says it

    def apply(self, row: dict) -> dict:
        row = dict(row)
        if self.kind == "categorical":
            row[self.feature] = self.value
        elif row.get(self.feature) is not None:
            spec = next(f for f in SPEC.features if f.name == self.feature)
            low, high = spec.range or (-math.inf, math.inf)
            row[self.feature] = float(min(high, max(low, row[self.feature] + self.amount)))
        return row


def pick_shift(meta: Any, requested: str | None, rows: list[dict]) -> Shift:
    """The feature to move: --feature, else the spec's numeric feature with the most training bins
    (the first in spec order on a tie; a fork without numbers: its categorical with most values)."""
    baselines = {b.name: b for b in meta.feature_baselines}
    names = [f.name for f in SPEC.features if f.name in baselines]
    if not names:
        raise DemoError("the model's meta.json has no feature_baselines: train it with this version of train/")
    if requested is not None and requested not in baselines:
        raise DemoError(f"--feature {requested!r} is not a feature of the model; choose one of {names}")
    numeric = [n for n in names if baselines[n].kind == "numeric" and len(baselines[n].edges) >= 2]
    if requested is None:
        pool = numeric or [n for n in names if baselines[n].kind == "categorical"]
        requested = max(pool, key=lambda n: (len(baselines[n].edges) or len(baselines[n].values), -names.index(n)))
    base = baselines[requested]
    if base.kind == "categorical":
        shares = base.fractions[: len(base.values)]
        value = base.values[int(np.argmin(shares))]
        return Shift(requested, "categorical", None, value,
                     f"every {requested} set to {value!r} (its rarest value in training)")
    span = float(base.edges[-1] - base.edges[0])
    present = [r[requested] for r in rows if r.get(requested) is not None]
    if present and all(float(v).is_integer() for v in present):
        span = float(max(1, round(span)))
    return Shift(requested, "numeric", span, None,
                 f"{requested} + {span:.4g} (the width of its training bins): an upstream change the model never saw")


def plant_outcomes(engine: Any, phase: Phase, seed: int) -> int:
    """One outcome per entity whose label is to be positive (per spec.yml's label rule), at a time
    inside its prediction's label window; through the loader's record_outcomes."""
    import sqlalchemy as sa

    from monitoring.predictions import prediction_log

    t = prediction_log
    with engine.connect() as conn:
        logged = dict(conn.execute(sa.select(t.c.entity_id, sa.func.min(t.c.ts))
                                   .where(t.c.entity_id.in_(phase.keys)).group_by(t.c.entity_id)).all())
    wanted = phase.labels == 1 if SPEC.label.positive == "count > 0" else phase.labels == 0
    rng = np.random.default_rng(seed)
    low = (RESOLUTION_MIN + 1) * 60  # later than the quality job's rounding of prediction times
    delays = rng.uniform(low, SPEC.label.horizon.total_seconds() - 60, len(phase.keys))
    outcomes = [(SPEC.entity.parse(key), _naive(logged[key]) + timedelta(seconds=float(delay)))
                for key, want, delay in zip(phase.keys, wanted, delays, strict=True) if want]
    written = SPEC.load_loader().record_outcomes(engine, outcomes)
    if written != len(outcomes):
        raise DemoError(f"{SPEC.loader}.record_outcomes wrote {written} of {len(outcomes)} outcomes")
    return written


def _naive(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=None) if value.tzinfo else value


def logged_count(engine: Any, keys: list[str]) -> int:
    import sqlalchemy as sa

    from monitoring.predictions import prediction_log

    t = prediction_log
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return 0
        return conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.entity_id.in_(keys))).scalar_one()


# --- the run -----------------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    """Empty the demo folder; refuse a non-empty one this demo did not create."""
    if out.exists():
        if not out.is_dir():
            raise DemoError(f"--out {out} is a file; pick a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"--out {out} is not empty and was not made by monitoring.demo; refusing to wipe it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by python -m monitoring.demo; wiped on every run\n")


def run(args: argparse.Namespace, out: Path, progress: Progress) -> dict[str, Any]:
    from features.build import build_training_frame, feature_rows, training_as_of_dates
    from features.db import make_engine
    from features.schema import LABEL
    from monitoring import quality
    from registry.store import Registry
    from stack.settings import Settings
    from train.pipeline import TrainConfig
    from train.pipeline import run as train

    db_url = f"sqlite:///{out / 'app.db'}"
    engine = make_engine(db_url)
    model_dir = out / "models"
    loader = SPEC.load_loader()
    data = loader.generate(scale=args.entities / loader.ENTITIES_PER_SCALE, seed=args.seed, end=None)
    loader.load(engine, data)
    progress(f"seeded {out / 'app.db'} ({SPEC.loader}): {loader.describe(data)}")

    t0 = time.perf_counter()
    result = train(engine, Registry(model_dir), out / "runs.csv",
                   TrainConfig(as_of_count=4, holdout_dates=1, params={"num_threads": 1}, notes="monitoring.demo"),
                   progress=lambda _m: None)
    _, meta = Registry(model_dir).load(result.version)
    holdout_auc = float(result.metrics["roc_auc"])
    progress(f"trained and deployed {result.version} in {time.perf_counter() - t0:.1f}s: holdout ROC AUC "
             f"{holdout_auc:.3f} (the newest as_of date is the holdout)")

    # the traffic: the holdout's entities, their features and what they really did afterwards
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of])
    frame = frame.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    rows = feature_rows(frame)
    keys = [SPEC.entity.canonical(k) for k in frame[SPEC.entity.key].tolist()]
    labels = frame[LABEL].to_numpy(dtype=np.int64)
    per_phase = args.per_phase or len(frame) // 3
    if 3 * per_phase > len(frame):
        raise DemoError(f"--per-phase {per_phase}: the holdout has {len(frame):,} {SPEC.entity.name}s, "
                        f"3 phases need {3 * per_phase:,}; lower it or raise --entities")
    if per_phase < MATURED_GUARD:
        progress(f"warning: {per_phase} predictions a phase is below the {MATURED_GUARD} matured predictions "
                 f"{QUALITY_ALERT} waits for: it will stay silent")
    shift = pick_shift(meta, args.feature, rows)
    rng = np.random.default_rng(args.seed)

    def part(i: int) -> slice:
        return slice(i * per_phase, (i + 1) * per_phase)

    phases = [
        Phase("a", "normal traffic", rows[part(0)], keys[part(0)], labels[part(0)]),
        Phase("b", f"drift: {shift.text}", [shift.apply(r) for r in rows[part(1)]], keys[part(1)],
              labels[part(1)]),
        Phase("c", "relation change: outcomes shuffled among the phase's entities (same base rate)",
              rows[part(2)], keys[part(2)], rng.permutation(labels[part(2)])),
    ]
    progress(f"traffic: {len(phases)} phases of {per_phase:,} {SPEC.entity.name}s each (features as of "
             f"{as_of:%Y-%m-%d}, the holdout date), outcomes = what each did in the {SPEC.label.horizon_days} days "
             f"after it, replayed after its prediction")

    rules_dir = out / "rules"
    rules_dir.mkdir()
    changed: dict[str, str] = {}
    for name, (text, mapping) in demo_rules(args.speedup).items():
        (rules_dir / name).write_text(text, encoding="utf-8")
        changed.update(mapping)
    shown = ", ".join(f"{k} -> {v}" for k, v in sorted(changed.items(), key=lambda kv: seconds_of(
        re.sub(r"^[a-z_]+: |[\[\]]", "", kv[0])), reverse=True))
    progress(f"rules: a demo copy of monitoring/rules/ in {rules_dir} with windows and for: divided by "
             f"{args.speedup:g} ({shown}); thresholds and guards unchanged; the production rules are untouched")

    base = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env = {"WEB_CONCURRENCY": str(args.workers), "MODEL_DIR": str(model_dir), "DATABASE_URL": db_url,
           "PROMETHEUS_MULTIPROC_DIR": str(out / "prom-multiproc"), "AB_CONFIG": str(out / "no-experiment.yml"),
           "MODEL_POLL_SECONDS": "1", "PREDICTION_LOG_SAMPLE": "0"}
    with ExitStack() as stack:
        server = stack.enter_context(harness.start(out / "serve.log", env, base=base))
        progress(f"starting the server (python -m serve, {args.workers} workers) on {server.url}, log {server.log}")
        server.wait_ready(180)
        # Prometheus after the server: a target that is not up yet would fire the shortened ServeTargetDown
        prom_url = stack.enter_context(prometheus(out, server.port, sorted(rules_dir.glob("*.yml"))))
        prom = Prom(prom_url)
        version = result.version
        bins = f'model_feature_bin_total{{job="serve",model_version="{version}",feature="{shift.feature}"}}'
        until(lambda: (bool(r := prom.query(bins)) and all(float(s["value"][1]) == 0 for s in r), r),
              "a scrape of the feature bins before any traffic", 120)
        progress(f"server ready; Prometheus {prom_url} scrapes it every {SCRAPE_S}s (alerts: {prom_url}/alerts)")
        client = Client(server.port)
        started = time.time()
        background = stack.enter_context(Background(client, rows[3 * per_phase:] or rows, args.background_rate))

        def at(t: float) -> str:
            return f"{t - started:5.1f}s"

        for phase in phases:
            scores = send_phase(client, phase)
            progress(f"phase {phase.key} ({phase.title}): {len(scores):,} requests {at(phase.start)}-{at(phase.end)}, "
                     f"mean score {np.mean(scores):.3f}")
            until(lambda p=phase: ((n := logged_count(engine, p.keys)) == len(p.keys), n),
                  f"the prediction log to hold phase {phase.key}'s {len(phase.keys)} predictions", 60)
            planted = plant_outcomes(engine, phase, args.seed + ord(phase.key))
            now = datetime.fromtimestamp(phase.end + 1, UTC) + SPEC.label.horizon
            window_days = (phase.end - phase.start + 2) / 86400
            progress(f"  outcomes: {planted:,} {SPEC.outcome.noun}s into {SPEC.outcome.table} (record_outcomes), "
                     f"inside each prediction's {SPEC.label.horizon_days}-day window; quality job as of "
                     f"{now:%Y-%m-%d %H:%M:%S}Z, when they have matured:")
            progress(f"  python -m monitoring.quality --now {now:%Y-%m-%dT%H:%M:%S}Z --window-days {window_days:.6f}")
            q = quality.run(db_url, model_dir, now=now, window_days=window_days, resolution_minutes=RESOLUTION_MIN,
                            progress=lambda m: progress(f"    {m}"))
            phase.quality_at = time.time()
            served = [w for w in q.window if w["kind"] == "served" and w["model_version"] == version]
            if not served:
                raise DemoError(f"the quality job found no matured served predictions of {version} in phase {phase.key}")
            phase.realized = served[0]
            wait_exported(prom, version, phase)
            if phase.key == "b":
                wait_alert(prom, DRIFT_ALERT, {"feature": shift.feature}, 120)
                progress(f"  {DRIFT_ALERT} firing for feature={shift.feature} at {at(time.time())}")
            if phase.key == "c":
                wait_alert(prom, QUALITY_ALERT, {}, 180)
                progress(f"  {QUALITY_ALERT} firing at {at(time.time())}")
            else:
                time.sleep(2.5 * SCRAPE_S)  # two more evaluations on the phase's figures
                active = [a for a in prom.alerts() if a["labels"]["alertname"] == QUALITY_ALERT]
                progress(f"  {QUALITY_ALERT} " + (f"ACTIVE after phase {phase.key}: {active}" if active else
                                                  f"silent after phase {phase.key}'s figures were scraped"))
        background.__exit__()
        spans = prom.timeline(started - 5, time.time() + 1)

    labelled = labelled_predictions(db_url, phases)
    engine.dispose()
    chart = out / "realized_auc.png"
    plot(chart, phases, labelled, holdout_auc, spans, started, version)
    return report(out, args, phases, spans, started, shift, holdout_auc, version, changed, chart, background.sent)


def wait_exported(prom: Prom, version: str, phase: Phase) -> None:
    """Until Prometheus has scraped the phase's realized figures from the server."""
    matured = f'max(model_realized_matured{{job="serve",model_version="{version}",kind="served"}})'

    def exported() -> tuple[bool, Any]:
        seen = prom.query(matured)
        return bool(seen) and float(seen[0]["value"][1]) == phase.realized["matured"], seen

    until(exported, f"Prometheus to scrape phase {phase.key}'s realized figures", 60)
    phase.exported_at = time.time()


def wait_alert(prom: Prom, name: str, labels: dict[str, str], timeout: float) -> None:
    """Until the alert (with these labels) is firing."""
    def firing() -> tuple[bool, Any]:
        found = [a for a in prom.alerts() if a["labels"]["alertname"] == name
                 and all(a["labels"].get(k) == v for k, v in labels.items())]
        return any(a["state"] == "firing" for a in found), found or prom.alerts()

    until(firing, f"{name} {labels or ''} firing", timeout)


def labelled_predictions(db_url: str, phases: list[Phase]) -> Any:
    """Every phase's logged predictions with their labels, as the quality job computes them."""
    from features.db import make_engine
    from monitoring import quality

    engine = make_engine(db_url)
    try:
        now = datetime.fromtimestamp(phases[-1].end + 1, UTC) + SPEC.label.horizon
        raw = quality.matured_predictions(engine, now)
        return quality.with_labels(engine, raw, RESOLUTION_MIN, progress=None)
    finally:
        engine.dispose()


def bucket_auc(labelled: Any, phases: list[Phase]) -> list[tuple[str, float, float | None, int]]:
    """(phase, mean prediction time, realized ROC AUC, n) for BUCKETS_PER_PHASE slices of each phase."""
    from monitoring.quality import figures

    ts = labelled["ts"].map(lambda v: _naive(v).replace(tzinfo=UTC).timestamp()).to_numpy(dtype=float)
    out = []
    for phase in phases:
        inside = np.flatnonzero(labelled["entity_id"].isin(set(phase.keys)).to_numpy())
        inside = inside[np.argsort(ts[inside], kind="stable")]
        for chunk in np.array_split(inside, BUCKETS_PER_PHASE):
            if len(chunk):
                f = figures(labelled["label"].to_numpy()[chunk], labelled["score"].to_numpy(dtype=float)[chunk])
                out.append((phase.key, float(ts[chunk].mean()), f["roc_auc"], len(chunk)))
    return out


def plot(path: Path, phases: list[Phase], labelled: Any, holdout_auc: float, spans: list[AlertSpan],
         started: float, version: str) -> None:
    """Realized ROC AUC over the demo's time (quarters of each phase and the quality job's figure
    for each phase) against the holdout AUC and the alert's threshold, with the alerts' firing times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.2))
    colors = {"a": "#e8f4e8", "b": "#fff3d6", "c": "#fde2e2"}
    names = {"a": "(a) normal", "b": "(b) input drift", "c": "(c) relation change"}
    points = bucket_auc(labelled, phases)
    for i, phase in enumerate(phases):
        ax.axvspan(phase.start - started, max(phase.end, phase.exported_at) - started, color=colors[phase.key],
                   zorder=0)
        ax.text(phase.start - started, 0.99, names[phase.key], fontsize=8, va="top")
        xs = [t - started for key, t, auc, _ in points if key == phase.key and auc is not None]
        ys = [auc for key, _, auc, _ in points if key == phase.key and auc is not None]
        ax.plot(xs, ys, "o-", color="#1f77b4", label=None if i else "realized ROC AUC, a quarter of a phase each")
    qx = [(p.start + p.end) / 2 - started for p in phases if p.realized.get("roc_auc") is not None]
    qy = [p.realized["roc_auc"] for p in phases if p.realized.get("roc_auc") is not None]
    ax.plot(qx, qy, "D", color="#d62728", markersize=8, label="the quality job's figure for the phase "
            "(model_realized_roc_auc)")
    ax.axhline(holdout_auc, linestyle="--", color="black", label=f"holdout ROC AUC {holdout_auc:.3f}")
    ax.axhline(holdout_auc - QUALITY_DROP, linestyle=":", color="grey",
               label=f"{QUALITY_ALERT} threshold {holdout_auc - QUALITY_DROP:.3f}")
    for span in spans:
        if span.alertname in (DRIFT_ALERT, QUALITY_ALERT) and span.firing_at is not None:
            what = span.alertname + (f" {span.labels['feature']}" if "feature" in span.labels else "")
            color = "#9467bd" if span.alertname == DRIFT_ALERT else "#d62728"
            ax.axvline(span.firing_at - started, color=color, linewidth=1)
            ax.text(span.firing_at - started, 0.62, f" {what} fires", rotation=90, fontsize=7, va="bottom",
                    color=color)
    ax.set(xlabel="seconds since the first request (each phase's outcomes simulated, then measured as of "
           "one label window later)", ylabel="ROC AUC", ylim=(0.3, 1.0),
           title=f"Realized ROC AUC of {version} against its holdout AUC")
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def phase_of(t: float | None, phases: list[Phase]) -> str:
    if t is None:
        return "-"
    key = "before (a)"
    for phase in phases:
        if t >= phase.start:
            key = phase.key
    return key


def report(out: Path, args: argparse.Namespace, phases: list[Phase], spans: list[AlertSpan], started: float,
           shift: Shift, holdout_auc: float, version: str, changed: dict[str, str], chart: Path,
           background: int) -> dict[str, Any]:
    """summary.txt and summary.json; the checks the demo exists to show, with their outcome."""
    drift = [s for s in spans if s.alertname == DRIFT_ALERT and s.labels.get("feature") == shift.feature
             and s.firing_at is not None]
    quality_spans = [s for s in spans if s.alertname == QUALITY_ALERT]
    c = phases[-1]
    first_quality = min((s.pending_at or s.firing_at for s in quality_spans), default=None)
    checks = {
        f"{DRIFT_ALERT} fired naming {shift.feature} during phase (b)":
            any(phases[1].start <= s.firing_at < c.start for s in drift),
        f"{QUALITY_ALERT} fired after phase (c)'s outcomes matured":
            any(s.firing_at is not None and s.firing_at >= c.quality_at for s in quality_spans),
        f"{QUALITY_ALERT} was silent before (no pending or firing until then)":
            first_quality is not None and first_quality >= c.quality_at,
        "realized ROC AUC in (c) below (a)":
            (c.realized.get("roc_auc") or 1.0) < (phases[0].realized.get("roc_auc") or 0.0),
    }

    def t(x: float | None) -> str:
        return "-" if x is None else f"{x - started:.1f}s"

    lines = [
        f"monitoring demo: {args.entities:,} {SPEC.entity.name}s ({SPEC.loader}), model {version}, "
        f"holdout ROC AUC {holdout_auc:.3f}",
        f"rules: a DEMO COPY of monitoring/rules/ ({out / 'rules'}) with every window and for: divided by "
        f"{args.speedup:g}: " + ", ".join(f"{k} -> {v}" for k, v in sorted(changed.items())),
        "",
        "phase  traffic (s)    requests  realized ROC AUC  matured  base rate  mean score  what changed",
    ]
    for p in phases:
        r = p.realized
        auc = "n/a" if r.get("roc_auc") is None else f"{r['roc_auc']:.3f}"
        lines.append(f"({p.key})    {t(p.start):>6}-{t(p.end):<6} {len(p.keys):>9,}  {auc:>16}  {r.get('matured', 0):>7,}"
                     f"  {r.get('base_rate') or 0:>9.1%}  {r.get('mean_score') or 0:>10.1%}  {p.title}")
    lines += ["", "alerts (Prometheus ALERTS series: first pending, first firing, last seen; phase it fired in):"]
    for s in spans:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k in ("feature", "kind", "model_version"))
        lines.append(f"  {s.alertname}{{{labels}}}  pending {t(s.pending_at)}  firing {t(s.firing_at)}  "
                     f"until {t(s.until)}  ({phase_of(s.firing_at or s.pending_at, phases)})")
    if not spans:
        lines.append("  none")
    lines += ["", "quality job runs (outcomes matured): " + ", ".join(
        f"({p.key}) {t(p.quality_at)}, scraped {t(p.exported_at)}" for p in phases),
        f"background: {background:,} anonymous requests at {args.background_rate:g}/s (keep NoPredictions quiet; "
        "not in the prediction log)", "", "checks:"]
    lines += [f"  [{'ok' if ok else 'FAILED'}] {what}" for what, ok in checks.items()]
    lines += ["", f"chart:   {chart}", f"quality: {out / 'models' / 'quality'} (quality.csv, latest.json, "
              "realized_auc.png, calibration.png)", f"logs:    {out / 'serve.log'}, {out / 'prometheus.log'}"]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text, encoding="utf-8")
    doc = {
        "version": version, "holdout_roc_auc": holdout_auc, "speedup": args.speedup, "rules_changed": changed,
        "started": started, "shifted_feature": shift.feature, "shift": shift.text,
        "phases": [{"key": p.key, "title": p.title, "start": p.start, "end": p.end, "requests": len(p.keys),
                    "quality_at": p.quality_at, "exported_at": p.exported_at, "realized": p.realized}
                   for p in phases],
        "alerts": [asdict(s) for s in spans], "checks": checks, "chart": str(chart),
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    print("\n" + text, end="", flush=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    """0 when every check passed, 1 when a step failed or a check did not hold, 2 for usage errors."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[monitoring-demo {time.perf_counter() - t0:5.1f}s] {msg}", flush=True)

    out = args.out.resolve()
    try:
        prepare_out(out)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        doc = run(args, out, progress)
    except (RuntimeError, OSError) as exc:  # DemoError, ServerError, TrainError, a database error
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [what for what, ok in doc["checks"].items() if not ok]
    progress("done" if not failed else f"done, but {len(failed)} check(s) failed: {'; '.join(failed)}")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m monitoring.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("var/monitoring-demo"),
                   help="everything goes here; wiped at the start (default: var/monitoring-demo)")
    p.add_argument("--entities", "--users", dest="entities", type=int, default=8000,
                   help=f"{SPEC.entity.name}s in the demo database (default: 8000)")
    p.add_argument("--per-phase", type=int, default=0,
                   help="entities (requests) per phase (default: a third of the holdout's)")
    p.add_argument("--speedup", type=float, default=120.0,
                   help="divide the rules' windows and for: durations by this (default 120: 1h -> 30s)")
    p.add_argument("--feature", help="the feature that moves in phase (b) (default: the numeric feature "
                   "with the most training bins)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default: 2)")
    p.add_argument("--background-rate", type=float, default=10.0,
                   help="anonymous requests a second between and during phases (default: 10)")
    p.add_argument("--seed", type=int, default=1, help="data, phases and outcomes (default: 1)")
    return p


if __name__ == "__main__":
    sys.exit(main())
