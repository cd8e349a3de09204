"""Every Prometheus metric of the stack, defined once.

The server, the A/B exposure writer, the rules in monitoring/rules/ and the Grafana dashboard
all use the names defined here; tests/monitoring fails when a rule or a panel queries a name
this module does not export.

Importing this module defines the metrics and changes nothing else. The server's process setup
is explicit: `python -m serve` sets the environment first (monitoring/environment.py).

Several gunicorn workers (multiprocess mode): PROMETHEUS_MULTIPROC_DIR must be in the
environment (and the folder must exist) before anything imports prometheus_client, which picks
its value storage once, at import. Each worker then writes its values to files in that folder and render_latest() merges
them. The gunicorn master calls setup_multiprocess_dir() at start and child_exit() when a
worker dies (see monitoring/README.md).
"""

from __future__ import annotations

import asyncio
import os
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime
from numbers import Real
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

from monitoring.client_internals import bulk_observe, multiprocess_storage
from monitoring.environment import MULTIPROC_ENV
from registry.meta import FeatureBaseline, ScoreBaseline

LATENCY_SLO_SECONDS = 0.025
"""p99 model inference latency objective; a bucket edge, and the ModelLatencyHigh threshold."""

INFERENCE_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, LATENCY_SLO_SECONDS,
    0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
HTTP_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05, 0.10, ..., 1.0
NO_VARIANT = "none"
"""The `variant` label of predictions made outside an A/B experiment."""
PENDING_SECONDS = 0.05
"""In a server, /predict's model metrics are counted in bulk at most this long after the first
score of a window (ModelMetrics.observe_one): six value-file writes per window, not per request."""

# --- HTTP (the server's middleware calls observe_http) -------------------------------------

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status class (2xx, 4xx, 5xx).",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request received to response sent, by route template, method and status class.",
    ["route", "method", "status"],
    buckets=HTTP_DURATION_BUCKETS,
)

# --- Model (register_model() creates every label combination at load) ----------------------

MODEL_PREDICTIONS = Counter(
    "model_predictions_total",
    "Scores returned (one per row of a batch), by model version and A/B variant ('none').",
    ["model_version", "variant"],
)
MODEL_INFERENCE_LATENCY = Histogram(
    "model_inference_latency_seconds",
    "Time of one model call (a single row or a whole batch), without HTTP and validation.",
    ["model_version"],
    buckets=INFERENCE_LATENCY_BUCKETS,
)
MODEL_PREDICTION_SCORE = Histogram(
    "model_prediction_score",
    "Scores returned, in fixed buckets of 0.05.",
    ["model_version"],
    buckets=SCORE_BUCKETS,
)
MODEL_PREDICTION_SCORE_BIN = Counter(
    "model_prediction_score_bin_total",
    "Scores returned, counted in the training-time baseline bins of meta.json (bin '0'..'9').",
    ["model_version", "bin"],
)
# The gauges below describe the models a process has loaded: 'livemax' merges the workers
# without adding them up, and child_exit() drops the values of a worker that has gone.
MODEL_PREDICTION_BASELINE_BIN_FRACTION = Gauge(
    "model_prediction_baseline_bin_fraction",
    "Fraction of training-time validation scores in each bin (meta.json score_baseline).",
    ["model_version", "bin"],
    multiprocess_mode="livemax",
)
MODEL_FEATURE_BIN = Counter(
    "model_feature_bin_total",
    "Served inputs counted in each feature's training-time bins (meta.json feature_baselines): "
    "bin '0'..'n' of a number, the value of a category, 'missing'.",
    ["model_version", "feature", "bin"],
)
MODEL_FEATURE_BASELINE_BIN_FRACTION = Gauge(
    "model_feature_baseline_bin_fraction",
    "Fraction of training inputs of each feature in each bin (meta.json feature_baselines).",
    ["model_version", "feature", "bin"],
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "model_info",
    "1 while a worker serves this model version, 0 once every worker has retired it.",
    ["model_version", "model_type", "trained_at"],
    multiprocess_mode="livemax",
)
MODEL_TRAINED_TIMESTAMP = Gauge(
    "model_trained_timestamp_seconds",
    "Unix time at which the model version was trained (meta.json created_at).",
    ["model_version"],
    multiprocess_mode="livemax",
)
MODEL_RELOAD_FAILURES = Counter(
    "model_reload_failures_total",
    "New model versions that failed to load or self-check; the old model kept serving.",
)
MODEL_SERVING_FALLBACK = Gauge(
    "model_serving_fallback",
    "1 while a worker serves this version instead of the one `current` names (refused or unreadable).",
    ["model_version"],  # labelled: no series (and no multiprocess file) until a fallback happens
    multiprocess_mode="livemax",
)
MODEL_REGISTRY_ERRORS = Counter(
    "model_registry_errors_total",
    "Model polls (or downloads) that could not reach the registry's object store; the model kept serving.",
)

ONLINE_FEATURE_VIOLATIONS = Counter(
    "model_online_feature_violations_total",
    "Features computed from the database (POST /predict/user) that break the feature schema; "
    "the request was refused with 422 instead of being scored.",
    ["feature"],
)

# --- A/B (ab/exposures.py counts into these) -----------------------------------------------

AB_EXPOSURES_RECORDED = Counter(
    "ab_exposures_recorded_total",
    "A/B exposures written to the exposure store.",
    ["experiment"],
)
AB_EXPOSURES_LOST = Counter(
    "ab_exposures_lost_total",
    "A/B exposures dropped (queue full, store down); the request was still answered.",
    ["experiment"],
)
LOG_RECORD_ERRORS = Counter(
    "serve_log_record_errors_total",
    "Rows the exposure or prediction log could not even queue (an exception in record(); the request "
    "was still answered).",
    ["log"],
)
ADMIN_AUTH_FAILURES = Counter(
    "serve_admin_auth_failures_total",
    "POST /admin/reload requests refused for a missing or wrong bearer token.",
)

# --- Realized quality (monitoring/realized.py sets these from `python -m monitoring.quality`) --

def _realized(name: str, what: str) -> Gauge:
    return Gauge(f"model_realized_{name}", f"{what} of the predictions whose label window closed in the "
                 "quality job's last window (served or shadow).", ["model_version", "kind"],
                 multiprocess_mode="livemax")


MODEL_REALIZED_ROC_AUC = _realized("roc_auc", "ROC AUC")
MODEL_REALIZED_PR_AUC = _realized("pr_auc", "PR AUC (average precision)")
MODEL_REALIZED_LOG_LOSS = _realized("log_loss", "Log loss")
MODEL_REALIZED_BASE_RATE = _realized("base_rate", "Observed positive rate")
MODEL_REALIZED_MEAN_SCORE = _realized("mean_score", "Mean score")
MODEL_REALIZED_MATURED = _realized("matured", "Number")
REALIZED_GAUGES = (
    (MODEL_REALIZED_ROC_AUC, "roc_auc"), (MODEL_REALIZED_PR_AUC, "pr_auc"),
    (MODEL_REALIZED_LOG_LOSS, "log_loss"), (MODEL_REALIZED_BASE_RATE, "base_rate"),
    (MODEL_REALIZED_MEAN_SCORE, "mean_score"), (MODEL_REALIZED_MATURED, "matured"),
)
MODEL_REALIZED_COMPUTED = Gauge(
    "model_realized_computed_timestamp_seconds", "Unix time the quality job computed the model_realized_* "
    "figures (latest.json computed_at) over its window of window_days: ModelQualityStale fires when it stops "
    "running.", ["window_days"], multiprocess_mode="livemax",
)
MODEL_HOLDOUT_ROC_AUC = Gauge(
    "model_holdout_roc_auc", "ROC AUC of the model version on its training holdout (meta.json metrics).",
    ["model_version"], multiprocess_mode="livemax",
)
MODEL_HOLDOUT_LOG_LOSS = Gauge(
    "model_holdout_log_loss", "Log loss of the model version on its training holdout (meta.json metrics).",
    ["model_version"], multiprocess_mode="livemax",
)

# --- Shadow model (serve/shadow.py) -------------------------------------------------------

MODEL_SHADOW_SCORE = Histogram(
    "model_shadow_prediction_score",
    "Scores of the shadow model (never returned) on the requests the serving model answered.",
    ["model_version"],
    buckets=SCORE_BUCKETS,
)
MODEL_SHADOW_ERRORS = Counter(
    "model_shadow_errors_total",
    "Shadow model failures (stage: load, score, queue_full); serving was never affected.",
    ["stage"],
)

# --- Prediction log (monitoring/predictions.py counts into these) ---------------------------

PREDICTION_LOG_RECORDED = Counter(
    "model_prediction_log_recorded_total",
    "Predictions written to the prediction log, by kind (served, shadow).",
    ["kind"],
)
PREDICTION_LOG_LOST = Counter(
    "model_prediction_log_lost_total",
    "Predictions dropped from the prediction log (queue full, database down); the request was still answered.",
    ["kind"],
)

ALL_METRICS: tuple[MetricWrapperBase, ...] = (
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    MODEL_PREDICTIONS,
    MODEL_INFERENCE_LATENCY,
    MODEL_PREDICTION_SCORE,
    MODEL_PREDICTION_SCORE_BIN,
    MODEL_PREDICTION_BASELINE_BIN_FRACTION,
    MODEL_FEATURE_BIN,
    MODEL_FEATURE_BASELINE_BIN_FRACTION,
    MODEL_INFO,
    MODEL_TRAINED_TIMESTAMP,
    MODEL_RELOAD_FAILURES,
    MODEL_SERVING_FALLBACK,
    MODEL_REGISTRY_ERRORS,
    ONLINE_FEATURE_VIOLATIONS,
    AB_EXPOSURES_RECORDED,
    AB_EXPOSURES_LOST,
    LOG_RECORD_ERRORS,
    ADMIN_AUTH_FAILURES,
    PREDICTION_LOG_RECORDED,
    PREDICTION_LOG_LOST,
    *(gauge for gauge, _ in REALIZED_GAUGES),
    MODEL_REALIZED_COMPUTED,
    MODEL_HOLDOUT_ROC_AUC,
    MODEL_HOLDOUT_LOG_LOSS,
    MODEL_SHADOW_SCORE,
    MODEL_SHADOW_ERRORS,
)

_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def sample_names() -> frozenset[str]:
    """Every series name this module exports, as PromQL sees it (`_total`, `_bucket`, ...)."""
    names: set[str] = set()
    for metric in ALL_METRICS:
        for family in metric.describe():
            names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
    return frozenset(names)


INPUT_BUFFER_ROWS = 4096
"""Served rows one worker buffers per model version before counting them into the input bins."""


class InputBins:
    """Served inputs of one model version counted into its training-time bins, per feature.

    add() only appends the encoded row to a flat array (the /predict hot path); flush() bins the buffered rows
    with numpy, one bincount over every feature's bins, and adds each bin's count to its counter:
    every INPUT_BUFFER_ROWS rows, and from the server's poll loop and /metrics, so a quiet
    worker's counts are at most a poll late. Rows are encoded as the model sees them
    (features/codec.py): a category is its index, a missing input NaN. Call add/flush from one
    thread (the event loop).
    """

    def __init__(self, version: str, baselines: Iterable[FeatureBaseline]) -> None:
        self._plan: list[tuple[int, Any, int, int, int]] = []
        self._children: list[Any] = []
        for column, baseline in enumerate(baselines):
            labels = baseline.bins()
            for label, fraction in zip(labels, baseline.fractions, strict=True):
                MODEL_FEATURE_BASELINE_BIN_FRACTION.labels(version, baseline.name, label).set(fraction)
            edges = list(baseline.edges) if baseline.kind == "numeric" else None
            value_bins = len(baseline.values) if edges is None else len(edges) + 1
            self._plan.append((column, edges, value_bins, len(labels), len(self._children)))
            self._children += [MODEL_FEATURE_BIN.labels(version, baseline.name, label) for label in labels]
        # one flat array of doubles: no Python object per row (nothing for the GC to walk)
        self._width = len(self._plan)
        self._buffer = array("d")
        self._limit = INPUT_BUFFER_ROWS * self._width

    def add(self, row: list[float]) -> None:
        """Buffer one encoded row (an array extend), and flush every INPUT_BUFFER_ROWS rows."""
        buffer = self._buffer
        buffer.extend(row)
        if len(buffer) >= self._limit:
            self.flush()

    def flush(self) -> None:
        """Count the buffered rows into the bins now."""
        buffer, self._buffer = self._buffer, array("d")
        if buffer:
            import numpy as np

            self.add_matrix(np.frombuffer(buffer, dtype=np.float64).reshape(-1, self._width))

    def add_matrix(self, X: Any) -> None:
        """Count an encoded (rows x features) matrix into the bins (the batch path, and flush)."""
        import numpy as np

        index = np.empty((X.shape[0], len(self._plan)), dtype=np.int64)
        for j, (column, edges, value_bins, bins, offset) in enumerate(self._plan):
            values = X[:, column]
            missing = np.isnan(values)
            if edges is None:
                where = np.where(missing, 0, values).astype(np.int64)
            else:
                where = np.searchsorted(edges, values, side="right")
            where[missing] = value_bins  # the "missing" bin; a feature that may not be missing has none
            index[:, j] = np.minimum(where, bins - 1) + offset
        counts = np.bincount(index.ravel(), minlength=len(self._children))
        children = self._children
        for i in np.flatnonzero(counts).tolist():
            children[i].inc(int(counts[i]))


class ModelMetrics:
    """The metric children of one model version, bound once so that observe() stays cheap.

    Made by register_model(); marks the version as served (model_info 1) until retire().
    """

    def __init__(self, version: str, model_type: str, trained_at: str, edges: list[float],
                 feature_baselines: Iterable[FeatureBaseline] = ()) -> None:
        self.version = version
        baselines = list(feature_baselines)
        self.inputs: InputBins | None = InputBins(version, baselines) if baselines else None
        self._info = MODEL_INFO.labels(version, model_type, trained_at)
        self._latency = MODEL_INFERENCE_LATENCY.labels(version)
        self._score = MODEL_PREDICTION_SCORE.labels(version)
        self._inner_edges = edges[1:-1]  # bisect on these gives the bin index directly
        self._bins = [
            MODEL_PREDICTION_SCORE_BIN.labels(version, str(i)) for i in range(len(edges) - 1)
        ]
        self._by_variant: dict[str, Any] = {}
        self._predictions(NO_VARIANT)
        self._info.set(1)
        # observe_one's scores and latencies not yet counted, and the variants' counts
        self._pending_scores, self._pending_latency = array("d"), array("d")
        self._pending_variants: dict[str, int] = {}
        self._flush_due = False

    def _predictions(self, variant: str) -> Any:
        child = self._by_variant.get(variant)
        if child is None:
            child = self._by_variant[variant] = MODEL_PREDICTIONS.labels(self.version, variant)
        return child

    def observe(
        self, scores: Iterable[float] | float, latency_s: float, variant: str | None = None
    ) -> None:
        """Record one model call: its scores (one, or a batch; a list is fastest) and its latency."""
        if isinstance(scores, Real):
            scores = (scores,)
        score_observe = self._score.observe
        inner_edges = self._inner_edges
        counts = [0] * len(self._bins)
        n = 0
        for score in scores:
            score_observe(score)
            # [e_i, e_i+1), the last bin closed at both ends: what numpy.histogram does
            counts[bisect_right(inner_edges, score)] += 1
            n += 1
        for child, count in zip(self._bins, counts, strict=True):
            if count:
                child.inc(count)
        self._predictions(variant or NO_VARIANT).inc(n)
        self._latency.observe(latency_s)

    def observe_one(self, score: float, latency_s: float, variant: str | None = None) -> None:
        """observe() for one score: the /predict hot path (a test holds the two equal).

        In an event loop (a server's worker) the score is buffered and counted in bulk by
        flush_pending within PENDING_SECONDS, so /metrics lags by at most that; buffering the six
        value-file writes of one observe gave /predict +12% req/s. Without a running loop (a script, a
        test calling the predictor) it is counted at once. Call from one thread, the loop's.
        """
        self._pending_scores.append(score)
        self._pending_latency.append(latency_s)
        name = variant or NO_VARIANT
        pending = self._pending_variants
        pending[name] = pending.get(name, 0) + 1
        if not self._flush_due:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_pending()
                return
            self._flush_due = True
            loop.call_later(PENDING_SECONDS, self.flush_pending)

    def flush_pending(self) -> None:
        """Count observe_one's buffered scores now (the timer, /metrics, the poll and shutdown call it)."""
        self._flush_due = False
        if not self._pending_scores:
            return
        import numpy as np

        scores, self._pending_scores = np.frombuffer(self._pending_scores, dtype=np.float64), array("d")
        latency, self._pending_latency = np.frombuffer(self._pending_latency, dtype=np.float64), array("d")
        variants, self._pending_variants = self._pending_variants, {}
        self._count(scores)
        for name, n in variants.items():
            self._predictions(name).inc(n)
        bulk_observe(self._latency, latency)

    def _count(self, scores: Any) -> None:
        """The score histogram and the baseline bins of a numpy array of scores."""
        import numpy as np

        bulk_observe(self._score, scores)
        bins = np.bincount(np.searchsorted(self._inner_edges, scores, side="right"), minlength=len(self._bins))
        for child, count in zip(self._bins, bins, strict=True):
            if count:
                child.inc(int(count))

    def observe_many(self, scores: Any, latency_s: float, variant: str | None = None) -> None:
        """Record one model call over a numpy array of scores: counts per bucket, not per row.

        prometheus_client has no bulk observe; monitoring/client_internals.py adds each bucket's
        count to the histogram's value cells directly (what observe() does one row at a time). A
        test holds the two equal.
        """
        import numpy as np

        scores = np.asarray(scores, dtype=np.float64)
        self._count(scores)
        self._predictions(variant or NO_VARIANT).inc(len(scores))
        self._latency.observe(latency_s)

    def retire(self) -> None:
        """Mark this version as no longer served by this process (model_info drops to 0)."""
        self._info.set(0)


def register_model(version: str, model_type: str, created_at: datetime, baseline: ScoreBaseline,
                   feature_baselines: Iterable[FeatureBaseline] = (),
                   holdout: dict[str, float] | None = None) -> ModelMetrics:
    """Export a freshly loaded model version and return the object its predictions go through.

    `baseline` and `created_at` come from the version's meta.json (registry.meta.ModelMeta has
    validated them). Every bin and the "none" variant start at 0, so empty bins read 0 instead
    of missing. `feature_baselines` (meta.json) makes `model.inputs` count served inputs per
    feature; a version trained before those existed counts none. `holdout` (meta.json
    metrics) sets the holdout gauges the realized-quality alerts compare with.
    """
    trained = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at.astimezone(UTC)
    model = ModelMetrics(version, model_type, trained.strftime("%Y-%m-%dT%H:%M:%SZ"), list(baseline.edges),
                         feature_baselines)
    for i, fraction in enumerate(baseline.fractions):
        MODEL_PREDICTION_BASELINE_BIN_FRACTION.labels(version, str(i)).set(fraction)
    MODEL_TRAINED_TIMESTAMP.labels(version).set(trained.timestamp())
    for gauge, key in ((MODEL_HOLDOUT_ROC_AUC, "roc_auc"), (MODEL_HOLDOUT_LOG_LOSS, "log_loss")):
        if holdout and key in holdout:
            gauge.labels(version).set(holdout[key])
    return model


_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_http(route: str, method: str, status_code: int, seconds: float) -> None:
    """Count one answered request. `route` is the route template ("/predict/user/{user_id}"),
    never the raw path (one series per user id would flood Prometheus); use "unmatched" for
    requests no route matched."""
    key = (route, method, status_code)
    children = _http_children.get(key)
    if children is None:
        labels = (route, method, f"{status_code // 100}xx")
        children = (HTTP_REQUESTS.labels(*labels), HTTP_REQUEST_DURATION.labels(*labels))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def is_multiprocess() -> bool:
    """Whether prometheus_client stores values in PROMETHEUS_MULTIPROC_DIR files (fixed at import)."""
    return multiprocess_storage()


def setup_multiprocess_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Prepare the multiprocess folder; the gunicorn master calls this once, before any worker.

    Deletes the value files (*.db) left by earlier runs, whose counts would otherwise be added
    to this run's, and keeps anything else in the folder. `path` defaults to
    $PROMETHEUS_MULTIPROC_DIR.
    """
    raw = path if path is not None else os.environ.get(MULTIPROC_ENV)
    if not raw:
        raise ValueError(f"{MULTIPROC_ENV} is not set; set it to a folder such as var/prometheus.")
    if not is_multiprocess():
        raise RuntimeError(
            f"{MULTIPROC_ENV} was not set when prometheus_client was first imported, so each "
            "gunicorn worker would count alone and /metrics would show one worker's numbers. "
            f"Set {MULTIPROC_ENV} in the environment, or at the top of the gunicorn config before "
            "importing monitoring.metrics."
        )
    directory = Path(raw)
    directory.mkdir(parents=True, exist_ok=True)
    own_files = f"_{os.getpid()}.db"  # this process's metrics already have their files open
    for stale in directory.glob("*.db"):
        if not stale.name.endswith(own_files):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn `child_exit` hook: drop the model gauges of a worker that has exited."""
    multiprocess.mark_process_dead(worker.pid)


def render_latest() -> tuple[bytes, str]:
    """The /metrics body and its content type: every worker's values in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
