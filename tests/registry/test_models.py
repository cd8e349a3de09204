"""The model protocol and the private library APIs behind adapters (these fail when a pinned
library changes what the adapters rely on)."""

from __future__ import annotations

import numpy as np
import pytest

from registry import adapters, models
from registry.meta import SELF_CHECK_TOLERANCE


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 3, 400).astype(float), rng.normal(size=400), rng.normal(size=400)])
    X[rng.random(400) < 0.1, 2] = np.nan
    y = (X[:, 1] + 0.5 * X[:, 0] + rng.normal(scale=0.5, size=400) > 0.5).astype(int)
    return X, y


@pytest.mark.parametrize("model_type, params", [
    ("lightgbm", {"objective": "binary", "num_boost_round": 20, "verbosity": -1, "num_threads": 1}),
    ("logreg", {"max_iter": 200}),
])
def test_every_model_type_keeps_the_protocol(data, model_type, params):
    X, y = data
    model = models.fit(model_type, X, y, params, ["a", "b", "c"], [0])
    scores = model.score(X)
    assert scores.shape == (len(X),) and np.all((scores >= 0) & (scores <= 1))
    one = [model.score_one(list(row)) for row in X[:20]]
    np.testing.assert_allclose(one, scores[:20], rtol=0, atol=SELF_CHECK_TOLERANCE)
    again = models.from_artifact(models.to_artifact(model))
    np.testing.assert_array_equal(again.score(X), scores)
    assert models.self_check_problem(again, X[:5], scores[:5].tolist(), SELF_CHECK_TOLERANCE) is None
    assert "differs by" in models.self_check_problem(again, X[:5], (scores[:5] + 0.1).tolist(), 1e-9)
    assert set(model.importance()) in ({"a", "b", "c"}, set())


def test_unknown_artifacts_and_parameters_are_refused():
    with pytest.raises(models.ModelError, match="not a model artifact"):
        models.from_artifact(["not", "a", "dict"])
    with pytest.raises(models.ModelError, match="unknown model type 'svm'"):
        models.from_artifact({"model_type": "svm", "estimator": None, "feature_names": []})
    with pytest.raises(models.ModelError, match=r"\['num_leave'\]"):
        models.check_params("lightgbm", {"num_leave": 3})


def test_lightgbm_private_apis_still_exist():
    """Contract: what registry/adapters.py uses from lightgbm.basic."""
    from lightgbm import basic

    for name in ("_LIB", "_c_str", "_safe_call", "_ConfigAliases"):
        assert hasattr(basic, name), f"lightgbm.basic.{name} is gone: update registry/adapters.py"
    for fn in ("LGBM_BoosterPredictForMatSingleRowFastInit", "LGBM_BoosterPredictForMatSingleRowFast",
               "LGBM_FastConfigFree"):
        assert hasattr(basic._LIB, fn), fn
    names = adapters.lightgbm_param_names()
    assert {"num_leaves", "num_leaf", "learning_rate", "eta", "num_boost_round"} <= names


def test_the_single_row_fast_path_equals_booster_predict(data):
    X, y = data
    model = models.fit("lightgbm", X, y, {"objective": "binary", "num_boost_round": 10, "verbosity": -1}, ["a", "b", "c"], [0])
    fast = adapters.LightGBMSingleRow(model.booster, 3)
    np.testing.assert_array_equal([fast(list(r)) for r in X[:50]], model.booster.predict(X[:50], num_threads=1))
