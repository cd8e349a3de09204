"""python -m monitoring.quality: matured predictions, labels by the training definition as of the
prediction time, figures per version and day, and the server's model_realized_* gauges."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sklearn.metrics import roc_auc_score

from features.db import make_engine
from features.spec import SPEC
from monitoring import quality
from monitoring.predictions import create_table, prediction_log
from monitoring.realized import RealizedExport, latest_path
from tests.conftest import some_keys

START = datetime(2026, 3, 2, 9, 0)  # naive UTC, like the tables
HORIZON = SPEC.label.horizon


@pytest.fixture
def logged(tmp_path):
    return planted_predictions(tmp_path)


def planted_predictions(tmp_path):
    """400 served predictions over two days, outcomes planted around them, and one not yet matured:
    (database URL, their scores, their labels)."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    loader = SPEC.load_loader()
    loader.create_tables(engine)
    create_table(engine)
    keys = some_keys(401)
    rng = np.random.default_rng(0)
    rows, outcomes, counts = [], [], []
    for i, key in enumerate(keys[:400]):
        ts = START + timedelta(hours=12 * (i % 4), seconds=i)
        acted = bool(rng.random() < 0.4)
        score = float(np.clip(rng.normal(0.7 if acted else 0.3, 0.15), 0.01, 0.99))
        rows.append({"ts": ts, "entity_id": SPEC.entity.canonical(key), "model_version": "v1", "variant": None,
                     "score": score, "kind": "served"})
        if acted:
            outcomes.append((key, ts + timedelta(hours=30)))  # inside [ts, ts + horizon): counts
        elif i % 3 == 0:
            outcomes.append((key, ts - timedelta(hours=1)))  # before the prediction: never counts
            outcomes.append((key, ts + HORIZON + timedelta(hours=1)))  # after the window: never counts
        counts.append(1 if acted else 0)
    rows.append({"ts": START + timedelta(days=9), "entity_id": SPEC.entity.canonical(keys[400]),
                 "model_version": "v1", "variant": None, "score": 0.5, "kind": "served"})  # window still open
    with engine.begin() as conn:
        conn.execute(sa.insert(prediction_log), rows)
    loader.record_outcomes(engine, outcomes)
    labels = SPEC.label.from_counts(pd.Series(counts, dtype="float64")).to_numpy()
    return url, np.array([r["score"] for r in rows[:400]]), labels


def test_realized_quality_uses_the_training_label_as_of_each_prediction(logged, tmp_path):
    url, scores, labels = logged
    now = (START + timedelta(days=12)).replace(tzinfo=UTC)
    result = quality.run(url, tmp_path / "models", now=now, resolution_minutes=0, progress=lambda _m: None)
    assert result.matured == 400
    (window,) = result.window
    assert window["model_version"] == "v1" and window["kind"] == "served" and window["matured"] == 400
    assert window["base_rate"] == pytest.approx(labels.mean())
    assert window["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert window["mean_score"] == pytest.approx(scores.mean())
    assert window["log_loss"] > 0 and 0 <= window["calibration_error"] <= 1
    daily = result.daily
    assert list(daily["day"]) == ["2026-03-02", "2026-03-03"] and daily["matured"].sum() == 400
    folder = tmp_path / "models" / "quality"
    assert {"quality.csv", "latest.json", "calibration.png", "realized_auc.png"} <= {p.name for p in folder.iterdir()}

    export = RealizedExport(latest_path(tmp_path / "models"))
    assert export.refresh() and not export.refresh()  # the second poll sees the same file
    got = REGISTRY.get_sample_value("model_realized_roc_auc", {"model_version": "v1", "kind": "served"})
    assert got == pytest.approx(window["roc_auc"])
    assert REGISTRY.get_sample_value("model_realized_matured", {"model_version": "v1", "kind": "served"}) == 400
    computed = datetime.fromisoformat(json.loads(latest_path(tmp_path / "models").read_text())["computed_at"])
    assert REGISTRY.get_sample_value("model_realized_computed_timestamp_seconds", {"window_days": "7"}) \
        == computed.timestamp()
    assert abs(computed.timestamp() - datetime.now(UTC).timestamp()) < 600  # ModelQualityStale's clock


def test_nothing_matured_and_a_bad_file_are_harmless(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = quality.run(url, tmp_path / "models", now=datetime(2026, 1, 1, tzinfo=UTC), progress=lambda _m: None)
    assert result.matured == 0 and result.window == []
    assert json.loads((tmp_path / "models" / "quality" / "latest.json").read_text())["models"] == []
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert RealizedExport(bad).refresh() is False
    assert RealizedExport(tmp_path / "absent.json").refresh() is False
