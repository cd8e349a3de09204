"""monitoring/metrics.py: label sets, binning, meta.json validation and multiprocess merging."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics
from registry.meta import ScoreBaseline

ROOT = Path(__file__).resolve().parents[2]
FRACTIONS = [0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05]


def register(version: str, meta: dict) -> metrics.ModelMetrics:
    """register_model with what the server passes from a loaded meta.json."""
    return metrics.register_model(version, meta["model_type"], datetime.fromisoformat(meta["created_at"]),
                                  ScoreBaseline(**meta["score_baseline"]))


def make_meta(**overrides: object) -> dict:
    meta = {
        "version": "ignored",
        "created_at": "2024-05-01T12:00:00Z",
        "model_type": "lightgbm",
        "score_baseline": {"edges": [i / 10 for i in range(11)], "fractions": FRACTIONS},
    }
    meta.update(overrides)
    return meta


@pytest.fixture
def version() -> str:
    """A fresh model version per test: the default registry is shared by the whole session."""
    return f"test-{uuid.uuid4().hex[:8]}"


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_register_model_exports_baseline_info_and_empty_bins(version: str) -> None:
    register(version, make_meta())

    for i, fraction in enumerate(FRACTIONS):
        labels = {"model_version": version, "bin": str(i)}
        assert value("model_prediction_baseline_bin_fraction", **labels) == fraction
        assert value("model_prediction_score_bin_total", **labels) == 0.0  # present, not missing
    assert value("model_predictions_total", model_version=version, variant="none") == 0.0
    info = {
        "model_version": version,
        "model_type": "lightgbm",
        "trained_at": "2024-05-01T12:00:00Z",
    }
    assert value("model_info", **info) == 1.0
    assert value("model_trained_timestamp_seconds", model_version=version) == 1714564800.0
    assert value("model_inference_latency_seconds_count", model_version=version) == 0.0


def test_scores_fall_in_the_same_bins_as_numpy_histogram(version: str) -> None:
    # uneven, quantile-like edges as training may write them; scores on every edge too
    edges = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0]
    model = register(version, make_meta(score_baseline={"edges": edges, "fractions": FRACTIONS})
    )
    scores = np.random.default_rng(7).beta(2, 5, size=500).tolist() + edges

    model.observe(scores, latency_s=0.004)

    expected, _ = np.histogram(scores, bins=edges)
    got = [
        value("model_prediction_score_bin_total", model_version=version, bin=str(i))
        for i in range(10)
    ]
    assert got == expected.tolist()
    assert value("model_predictions_total", model_version=version, variant="none") == len(scores)
    assert value("model_prediction_score_count", model_version=version) == len(scores)
    assert value("model_prediction_score_sum", model_version=version) == pytest.approx(sum(scores))
    assert value("model_inference_latency_seconds_count", model_version=version) == 1.0  # one call


def test_single_scores_and_variants(version: str) -> None:
    model = register(version, make_meta())

    model.observe(0.42, latency_s=0.003)
    model.observe(np.float32(0.97), latency_s=0.030, variant="treatment")
    model.observe(np.array([0.1, 0.2]), latency_s=0.002, variant="treatment")

    assert value("model_predictions_total", model_version=version, variant="none") == 1.0
    assert value("model_predictions_total", model_version=version, variant="treatment") == 3.0
    assert value("model_prediction_score_bin_total", model_version=version, bin="4") == 1.0
    assert value("model_prediction_score_bin_total", model_version=version, bin="9") == 1.0
    latency = {"model_version": version}
    assert value("model_inference_latency_seconds_bucket", le="0.025", **latency) == 2.0
    assert value("model_inference_latency_seconds_bucket", le="0.05", **latency) == 3.0


def test_latency_slo_is_a_bucket_edge() -> None:
    assert metrics.LATENCY_SLO_SECONDS in metrics.INFERENCE_LATENCY_BUCKETS
    below = [b for b in metrics.INFERENCE_LATENCY_BUCKETS if b < metrics.LATENCY_SLO_SECONDS]
    assert len(below) >= 6, "keep the buckets fine-grained below the SLO"


def test_created_at_without_offset_is_utc(version: str) -> None:
    register(version, make_meta(created_at="2024-05-01T12:00:00", model_type="sklearn")
    )

    assert value("model_trained_timestamp_seconds", model_version=version) == 1714564800.0
    info = {"model_version": version, "model_type": "sklearn", "trained_at": "2024-05-01T12:00:00Z"}
    assert value("model_info", **info) == 1.0


def test_retire_drops_model_info_to_zero(version: str) -> None:
    model = register(version, make_meta())
    model.retire()

    info = {
        "model_version": version,
        "model_type": "lightgbm",
        "trained_at": "2024-05-01T12:00:00Z",
    }
    assert value("model_info", **info) == 0.0


def test_observe_http_labels_status_class() -> None:
    route = f"/test/{uuid.uuid4().hex[:8]}/{{user_id}}"
    for status in (200, 201, 422, 503):
        metrics.observe_http(route, "POST", status, 0.004)

    assert value("http_requests_total", route=route, method="POST", status="2xx") == 2.0
    assert value("http_requests_total", route=route, method="POST", status="4xx") == 1.0
    assert value("http_requests_total", route=route, method="POST", status="5xx") == 1.0
    duration = {"route": route, "method": "POST", "status": "2xx", "le": "0.005"}
    assert value("http_request_duration_seconds_bucket", **duration) == 2.0


def test_render_latest_without_multiprocess_dir(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    register(version, make_meta()).observe([0.5], latency_s=0.001)

    body, content_type = metrics.render_latest()

    assert content_type.startswith("text/plain")
    assert (
        f'model_predictions_total{{model_version="{version}",variant="none"}} 1.0' in body.decode()
    )


def test_sample_names_are_what_prometheus_sees() -> None:
    names = metrics.sample_names()

    assert {"http_requests_total", "model_info", "model_reload_failures_total"} <= names
    assert {"model_inference_latency_seconds_bucket", "model_prediction_score_sum"} <= names
    assert "model_predictions_total_total" not in names


# --- multiprocess mode: real processes, as under gunicorn ------------------------------------

WORKER = """
from datetime import datetime
from monitoring import metrics
from registry.meta import ScoreBaseline
meta = {meta!r}
model = metrics.register_model("v1", meta["model_type"], datetime.fromisoformat(meta["created_at"]),
                               ScoreBaseline(**meta["score_baseline"]))
model.observe([0.05, 0.06, 0.07, 0.95], latency_s=0.002)
model.observe(0.08, latency_s=0.001, variant="control")
metrics.observe_http("/predict", "POST", 200, 0.003)
assert metrics.is_multiprocess()
print("ready", flush=True)
"""


def run_python(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a fresh interpreter: prometheus_client picks multiprocess mode at import."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def samples(body: bytes) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_two_workers_are_summed_and_their_gauges_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {metrics.MULTIPROC_ENV: str(tmp_path)}
    workers = [run_python(WORKER.format(meta=make_meta()), env) for _ in range(2)]
    pids = [w.pid for w in workers]
    for worker in workers:
        assert finish(worker).strip() == "ready"
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))

    got = samples(metrics.render_latest()[0])

    def at(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert at("model_predictions_total", model_version="v1", variant="none") == 8.0
    assert at("model_predictions_total", model_version="v1", variant="control") == 2.0
    assert at("model_prediction_score_bin_total", model_version="v1", bin="0") == 8.0
    assert at("model_prediction_score_bin_total", model_version="v1", bin="9") == 2.0
    assert at("model_prediction_score_bin_total", model_version="v1", bin="5") == 0.0
    assert at("model_inference_latency_seconds_count", model_version="v1") == 4.0
    assert at("http_requests_total", route="/predict", method="POST", status="2xx") == 2.0
    assert at("model_reload_failures_total") == 0.0
    # the same baseline in two workers is still 0.05, not 0.1
    assert at("model_prediction_baseline_bin_fraction", model_version="v1", bin="0") == 0.05
    info = {"model_version": "v1", "model_type": "lightgbm", "trained_at": "2024-05-01T12:00:00Z"}
    assert at("model_info", **info) == 1.0

    # gunicorn's child_exit hook: a dead worker's gauges go, its counts stay
    metrics.child_exit(None, SimpleNamespace(pid=pids[0]))
    got = samples(metrics.render_latest()[0])
    assert at("model_info", **info) == 1.0  # the other worker still serves v1
    metrics.child_exit(None, SimpleNamespace(pid=pids[1]))
    got = samples(metrics.render_latest()[0])
    assert at("model_info", **info) is None
    assert at("model_prediction_baseline_bin_fraction", model_version="v1", bin="0") is None
    assert at("model_predictions_total", model_version="v1", variant="none") == 8.0


def test_setup_multiprocess_dir_removes_stale_value_files(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"stale")
    (folder / "notes.txt").write_text("not ours, kept")
    code = """
        import os
        from pathlib import Path
        from monitoring import metrics
        folder = metrics.setup_multiprocess_dir()
        print(sorted(p.name for p in folder.iterdir()))
        print(f"counter_{os.getpid()}.db")
    """
    listing, own_file = finish(run_python(code, {metrics.MULTIPROC_ENV: str(folder)})).splitlines()

    assert "counter_999999.db" not in listing
    assert "notes.txt" in listing
    assert own_file in listing  # this process's open file is left alone


def test_setup_multiprocess_dir_refuses_a_late_environment_variable(tmp_path: Path) -> None:
    code = f"""
        from monitoring import metrics
        try:
            metrics.setup_multiprocess_dir({str(tmp_path)!r})
        except RuntimeError as exc:
            print(exc)
    """
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "was not set when prometheus_client was first imported" in process.stdout, process.stderr


def test_observe_many_counts_like_observe_one_at_a_time():
    """The bulk path and the single-score path write the same histogram, bins and counters as observe()."""
    import numpy as np
    from prometheus_client import CollectorRegistry  # noqa: F401  (default registry is fine here)

    from monitoring import metrics

    meta = {"created_at": "2026-11-28T00:00:00Z", "model_type": "lightgbm",
            "score_baseline": {"edges": [0.0, 0.1, 0.25, 0.5, 1.0], "fractions": [0.25] * 4}}
    scores = np.array([0.0, 0.05, 0.1, 0.1000001, 0.25, 0.3, 0.5, 0.75, 0.95, 1.0, 0.05])
    bulk = register("bulk-v", meta)
    single = register("single-v", meta)
    one = register("one-v", meta)
    bulk.observe_many(scores, 0.001)
    single.observe(scores.tolist(), 0.001)
    for score in scores.tolist():
        one.observe_one(score, 0.001, None if score < 0.5 else "control")

    def samples(version):
        out = {}
        for family in (metrics.MODEL_PREDICTION_SCORE, metrics.MODEL_PREDICTION_SCORE_BIN, metrics.MODEL_PREDICTIONS):
            for metric in family.collect():
                for s in metric.samples:
                    if s.labels.get("model_version") == version and not s.name.endswith("_created"):
                        out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_version")))] = s.value
        return out

    assert samples("bulk-v") == samples("single-v")
    assert samples("bulk-v")  # something was compared
    by_variant = samples("one-v")  # observe_one, the /predict path: the same but for the variant split
    predictions = {k: v for k, v in by_variant.items() if k[0] == "model_predictions_total"}
    assert predictions == {("model_predictions_total", (("variant", "none"),)): 7.0,
                           ("model_predictions_total", (("variant", "control"),)): 4.0}
    assert {k: v for k, v in by_variant.items() if k[0] != "model_predictions_total"} == \
        {k: v for k, v in samples("single-v").items() if k[0] != "model_predictions_total"}


def test_in_a_server_single_scores_are_counted_in_bulk_within_the_pending_window():
    """observe_one under a running event loop buffers; the loop's timer counts the window at once."""
    import asyncio

    from monitoring import metrics

    meta = {"created_at": "2026-11-28T00:00:00Z", "model_type": "lightgbm",
            "score_baseline": {"edges": [0.0, 0.1, 0.25, 0.5, 1.0], "fractions": [0.25] * 4}}
    model = register("pending-v", meta)

    def predictions(variant: str) -> float:
        return REGISTRY.get_sample_value("model_predictions_total",
                                         {"model_version": "pending-v", "variant": variant}) or 0.0

    def latencies() -> float:
        return REGISTRY.get_sample_value("model_inference_latency_seconds_count", {"model_version": "pending-v"}) or 0.0

    async def serve() -> list[tuple[float, float, float]]:
        seen = []
        for i in range(10):
            model.observe_one(0.05 * i, 0.001, "treatment" if i % 2 else None)
        seen.append((predictions("none"), predictions("treatment"), latencies()))  # buffered
        await asyncio.sleep(metrics.PENDING_SECONDS * 3)
        seen.append((predictions("none"), predictions("treatment"), latencies()))  # the timer counted them
        model.observe_one(0.9, 0.002)
        model.flush_pending()  # what /metrics, the poll and shutdown do
        seen.append((predictions("none"), predictions("treatment"), latencies()))
        return seen

    assert asyncio.run(serve()) == [(0.0, 0.0, 0.0), (5.0, 5.0, 10.0), (6.0, 5.0, 11.0)]
    assert REGISTRY.get_sample_value("model_prediction_score_bin_total",
                                     {"model_version": "pending-v", "bin": "3"}) == 1.0  # 0.9 in [0.5, 1.0]
