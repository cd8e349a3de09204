"""Shadow models: score the same requests after the answer, never answer, never break serving."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from ab.exposures import ExposureWriter
from features.build import feature_rows
from features.db import make_engine
from monitoring import shadow as shadow_report
from monitoring.predictions import PredictionLogWriter
from serve.models import ModelStore
from serve.online import OnlineFeatures
from serve.predictor import Predictor
from serve.shadow import Shadow
from tests.conftest import KEY


def shadow_count(version: str) -> float:
    return REGISTRY.get_sample_value("model_shadow_prediction_score_count", {"model_version": version}) or 0.0


def test_a_shadow_scores_what_was_served_and_is_never_returned(small_models, holdout, small_sqlite_url, tmp_path):
    registry, v1, v2 = small_models
    config = tmp_path / "experiment.yml"
    config.write_text(f"experiment: null\nshadow:\n  model: {v2}\n")
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(log_url)
    shadow = Shadow(registry, config, writer)
    shadow.refresh()
    assert shadow.version == v2 and shadow.error is None
    store = ModelStore(registry, config)
    store.refresh()
    predictor = Predictor(store, ExposureWriter(small_sqlite_url), OnlineFeatures(small_sqlite_url), 10,
                          predictions=writer, shadow=shadow)
    frame = holdout.head(20)
    before = shadow_count(v2)
    answers = [predictor.one({"features": row, "user_id": key})
               for row, key in zip(feature_rows(frame), frame[KEY].tolist(), strict=True)]
    assert {a["model_version"] for a in answers} == {v1}  # the shadow never answers
    assert shadow.score_queued() == 20 and shadow_count(v2) - before == 20
    assert writer.close(5)

    pairs = shadow_report.paired(make_engine(log_url), None, 60)
    assert len(pairs) == 20 and set(pairs["shadow_version"]) == {v2} and set(pairs["served_version"]) == {v1}
    comparison = shadow_report.compare(pairs, 0.5)
    assert 0 <= comparison.agreement <= 1 and comparison.rank_correlation > 0.5
    assert "agreement at 0.5" in shadow_report.report(comparison, 0.5)


@pytest.mark.parametrize("config_text", ["shadow:\n  model: 20990101T000000Z-abcdef\n", "shadow: [1]\n"])
def test_a_shadow_that_cannot_load_leaves_serving_alone(small_models, tmp_path, config_text):
    registry, _, _ = small_models
    config = tmp_path / "experiment.yml"
    config.write_text(config_text)
    shadow = Shadow(registry, config, None)
    shadow.refresh()
    assert shadow.version is None and shadow.error
    shadow.offer([0.0], "k")  # a no-op, not an error
    assert shadow.score_queued() == 0
