"""Model artifacts: what model.joblib holds and how any part of the stack scores with it.

An artifact is a plain dict: {"model_type", "estimator", "feature_names"}. `estimator` is a
LightGBM Booster or a scikit-learn Pipeline; both take the matrix of `features.encode`.
This module is imported by the server, so it imports no training library at module level.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np


def predict(artifact: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Probability of the positive class for each row of the encoded matrix X."""
    estimator = artifact["estimator"]
    if artifact["model_type"] == "lightgbm":
        return estimator.predict(X, num_threads=1)
    return estimator.predict_proba(X)[:, 1]


class Scorer:
    """Scores encoded rows with the least overhead the model type allows (the hot path).

    `one()` is for the event loop only (its LightGBM fast path is not thread-safe);
    `many()` is safe anywhere.
    """

    def __init__(self, artifact: dict[str, Any]) -> None:
        self.model_type = artifact["model_type"]
        self.artifact = artifact
        self.n_features = len(artifact["feature_names"])
        self._one = None
        if self.model_type == "lightgbm":
            self._one = _LightGBMSingleRow(artifact["estimator"], self.n_features)

    def one(self, row: list[float]) -> float:
        """Score one encoded row."""
        if self._one is not None:
            return self._one(row)
        return float(predict(self.artifact, np.asarray([row], dtype=np.float64))[0])

    def many(self, X: np.ndarray) -> np.ndarray:
        """Score an encoded matrix."""
        return predict(self.artifact, X)


class _LightGBMSingleRow:
    """LightGBM's C fast path for one row: set up once, ~microseconds a call, not thread-safe."""

    def __init__(self, booster: Any, n_features: int) -> None:
        import ctypes

        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._ctypes, self._lib, self._safe_call = ctypes, _LIB, _safe_call
        self._handle = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle,
            ctypes.c_int(0),  # C_API_PREDICT_NORMAL: probabilities
            ctypes.c_int(0),  # start_iteration
            ctypes.c_int(-1),  # all iterations
            ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
            ctypes.c_int32(n_features),
            _c_str("num_threads=1"),
            ctypes.byref(self._handle),
        ))
        self._booster = booster  # keep the booster alive as long as the fast config
        self._row = (ctypes.c_double * n_features)()
        self._out = ctypes.c_double()
        self._out_len = ctypes.c_int64()
        self._out_ref, self._len_ref = ctypes.byref(self._out), ctypes.byref(self._out_len)

    def __call__(self, row: list[float]) -> float:
        self._row[:] = row
        self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self._handle, self._row, self._len_ref, self._out_ref))
        return self._out.value

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self._lib.LGBM_FastConfigFree(self._handle)
