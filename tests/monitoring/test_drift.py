"""Per-feature drift: training stores each feature's bins, the server counts served inputs into them."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY

from features.schema import Feature
from monitoring import metrics as prom
from registry.meta import FeatureBaseline
from train.evaluate import feature_baselines

FEATURES = (
    Feature("n", "numeric", "a count", minimum=0, maximum=100),
    Feature("c", "categorical", "a category", nullable=True, values=("a", "b", "c")),
    Feature("m", "numeric", "may be missing", nullable=True, minimum=0, maximum=10),
)


def matrix(rng: np.random.Generator, rows: int) -> np.ndarray:
    X = np.column_stack([rng.poisson(3, rows), rng.integers(0, 3, rows), rng.uniform(0, 10, rows)]).astype(float)
    X[rng.random(rows) < 0.1, 1] = np.nan
    X[rng.random(rows) < 0.2, 2] = np.nan
    return X


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_training_bins_each_feature_and_the_meta_validates_them():
    baselines = [FeatureBaseline(**b) for b in feature_baselines(matrix(np.random.default_rng(0), 5000), FEATURES)]
    n, c, m = baselines
    assert n.kind == "numeric" and 2 <= len(n.edges) <= 9 and n.edges[0] > 0  # no empty bin below the minimum
    assert c.bins() == ["a", "b", "c", "missing"] and c.fractions[-1] == pytest.approx(0.1, abs=0.02)
    assert m.bins()[-1] == "missing" and m.fractions[-1] == pytest.approx(0.2, abs=0.02)
    assert all(sum(b.fractions) == pytest.approx(1) for b in baselines)
    with pytest.raises(ValueError, match="one per bin"):
        FeatureBaseline(name="x", kind="numeric", edges=[1.0], fractions=[1.0])
    with pytest.raises(ValueError, match="ascending"):
        FeatureBaseline(name="x", kind="numeric", edges=[2.0, 1.0], fractions=[0.5, 0.25, 0.25])


def test_served_inputs_land_in_the_training_bins():
    rng = np.random.default_rng(1)
    baselines = [FeatureBaseline(**b) for b in feature_baselines(matrix(rng, 5000), FEATURES)]
    model = prom.register_model("drift-v1", "test", prom.datetime(2026, 1, 1), _score_baseline(), baselines)
    served = matrix(rng, 1000)
    for row in served[:600].tolist():  # the /predict path: buffered, flushed every INPUT_BUFFER_ROWS rows
        model.inputs.add(row)
    model.inputs.flush()
    model.inputs.add_matrix(served[600:])  # the batch path
    for baseline in baselines:
        counts = [value("model_feature_bin_total", model_version="drift-v1", feature=baseline.name, bin=b)
                  for b in baseline.bins()]
        assert sum(counts) == 1000, baseline.name
        assert np.allclose(np.array(counts) / 1000, baseline.fractions, atol=0.06), baseline.name
        base = value("model_feature_baseline_bin_fraction", model_version="drift-v1", feature=baseline.name,
                     bin=baseline.bins()[0])
        assert base == pytest.approx(baseline.fractions[0])


def test_a_model_trained_before_feature_bins_counts_nothing():
    model = prom.register_model("drift-v0", "test", prom.datetime(2026, 1, 1), _score_baseline())
    assert model.inputs is None


def _score_baseline():
    from registry.meta import ScoreBaseline

    return ScoreBaseline(edges=[0.0, 0.5, 1.0], fractions=[0.5, 0.5])
