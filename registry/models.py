"""The model protocol: fit, score one row, score a matrix, importance. Every model_type branch.

Two models sit behind it: LightGBM (the default) and a scikit-learn logistic regression. Both
take the float matrix of features/codec.py. model.joblib holds the plain artifact dict
{"model_type", "estimator", "feature_names"} (`to_artifact` / `from_artifact`), so a file
stays loadable when these classes change. Training libraries are imported only when a model of
their kind is fitted or loaded: the server imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from registry import adapters

MODEL_TYPES = ("lightgbm", "logreg")


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message says why."""


class Model(Protocol):
    """What training, the gate, the server and the self-check need of a model."""

    model_type: str
    feature_names: list[str]

    def score(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of the encoded matrix."""

    def score_one(self, row: list[float]) -> float:
        """One encoded row (the server's event loop; not thread-safe for LightGBM)."""

    def importance(self) -> dict[str, float]:
        """Importance per feature (empty when the model type has none)."""


class LightGBMModel:
    model_type = "lightgbm"

    def __init__(self, booster: Any, feature_names: Sequence[str]) -> None:
        self.booster = booster
        self.feature_names = list(feature_names)
        self._one: adapters.LightGBMSingleRow | None = None

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, num_threads=1)

    def score_one(self, row: list[float]) -> float:
        if self._one is None:  # set up on first use: the C handle cannot be pickled
            self._one = adapters.LightGBMSingleRow(self.booster, len(self.feature_names))
        return self._one(row)

    def importance(self) -> dict[str, float]:
        gains = self.booster.feature_importance(importance_type="gain")
        return {n: float(g) for n, g in zip(self.feature_names, gains, strict=True)}


class LogisticModel:
    model_type = "logreg"

    def __init__(self, pipeline: Any, feature_names: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.feature_names = list(feature_names)

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(X)[:, 1]

    def score_one(self, row: list[float]) -> float:
        return float(self.score(np.asarray([row], dtype=np.float64))[0])

    def importance(self) -> dict[str, float]:
        return {}


def known_params(model_type: str) -> set[str]:
    """Every parameter name (and alias) the model type accepts."""
    if model_type == "lightgbm":
        return adapters.lightgbm_param_names()
    if model_type == "logreg":
        from sklearn.linear_model import LogisticRegression

        return set(LogisticRegression().get_params())
    raise ModelError(f"unknown model type {model_type!r}; choose one of {MODEL_TYPES}")


def check_params(model_type: str, params: dict[str, Any]) -> None:
    """Refuse parameters the model does not know (a typo would otherwise be ignored, yet logged)."""
    unknown = sorted(set(params) - known_params(model_type))
    if unknown:
        raise ModelError(f"unknown {model_type} parameter(s) {unknown}; see the {model_type} documentation "
                         "for the names it takes")


def fit(model_type: str, X: np.ndarray, y: np.ndarray, params: dict[str, Any],
        feature_names: Sequence[str], categorical: Sequence[int]) -> Model:
    """Fit a model of `model_type` on the encoded matrix."""
    check_params(model_type, params)
    names = list(feature_names)
    if model_type == "lightgbm":
        import lightgbm as lgb

        p = dict(params)
        rounds = int(p.pop("num_boost_round", 300))
        data = lgb.Dataset(X, y, feature_name=names, categorical_feature=list(categorical), free_raw_data=False)
        return LightGBMModel(lgb.train(p, data, num_boost_round=rounds), names)
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cats = list(categorical)
    nums = [i for i in range(len(names)) if i not in cats]
    prep = ColumnTransformer([
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), cats),
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), nums),
    ])
    return LogisticModel(make_pipeline(prep, LogisticRegression(**params)).fit(X, y), names)


def to_artifact(model: Model) -> dict[str, Any]:
    """What model.joblib holds."""
    estimator = model.booster if isinstance(model, LightGBMModel) else model.pipeline  # type: ignore[union-attr]
    return {"model_type": model.model_type, "estimator": estimator, "feature_names": list(model.feature_names)}


def from_artifact(artifact: Any) -> Model:
    """The model a model.joblib artifact holds; ModelError when it is not one."""
    if not isinstance(artifact, dict) or not {"model_type", "estimator", "feature_names"} <= artifact.keys():
        raise ModelError("not a model artifact written by `python -m train` "
                         "(expected a dict with model_type, estimator, feature_names)")
    kind = artifact["model_type"]
    if kind == "lightgbm":
        return LightGBMModel(artifact["estimator"], artifact["feature_names"])
    if kind == "logreg":
        return LogisticModel(artifact["estimator"], artifact["feature_names"])
    raise ModelError(f"unknown model type {kind!r} in the artifact; this code serves {MODEL_TYPES}")


def self_check_problem(model: Model, X: np.ndarray, expected: Sequence[float], tolerance: float) -> str | None:
    """Why the model does not reproduce the stored scores (None: it does). Scores through
    `score_one`, the path the server uses."""
    got = np.array([model.score_one(list(row)) for row in X])
    if not np.all(np.isfinite(got)):
        return f"self-check scores are not finite: {got[~np.isfinite(got)][:3].tolist()}"
    worst = float(np.max(np.abs(got - np.asarray(expected)))) if len(got) else 0.0
    if worst > tolerance:
        i = int(np.argmax(np.abs(got - np.asarray(expected))))
        return f"self-check row {i} scored {got[i]!r}, expected {expected[i]!r} (differs by {worst:.3g})"
    return None
