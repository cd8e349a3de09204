"""Features -> the float matrix models see. One encoding for training and serving.

Numeric features pass through (missing -> NaN); a categorical becomes the index of its value in
the schema's `values` (LightGBM reads those columns as categorical). Requests are already
validated against the schema, so the row encoder does no checking: it is on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from features.schema import FEATURES, Feature

NAN = float("nan")


def categorical_indices(features: Sequence[Feature] = FEATURES) -> list[int]:
    """Column positions of the categorical features."""
    return [i for i, f in enumerate(features) if f.kind == "categorical"]


def encode_frame(frame: pd.DataFrame, features: Sequence[Feature] = FEATURES) -> np.ndarray:
    """A (rows x features) float64 matrix in schema order."""
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, f in enumerate(features):
        column = frame[f.name]
        if f.kind == "categorical":
            codes = pd.Categorical(column, categories=list(f.values)).codes.astype(np.float64)
            codes[codes < 0] = np.nan
            out[:, j] = codes
        else:
            out[:, j] = pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)
    return out


class RowEncoder:
    """Encodes request dicts into rows of the model matrix, without pandas."""

    def __init__(self, features: Sequence[Feature] = FEATURES) -> None:
        self.names = [f.name for f in features]
        self.codes: list[dict[str, float] | None] = [
            {v: float(i) for i, v in enumerate(f.values)} if f.kind == "categorical" else None
            for f in features
        ]
        self._plan = list(zip(self.names, self.codes, strict=True))

    def row(self, values: Mapping[str, object]) -> list[float]:
        """One request's features as a list of floats in schema order."""
        out = []
        for name, codes in self._plan:
            v = values.get(name)
            if v is None:
                out.append(NAN)
            elif codes is None:
                out.append(float(v))
            else:
                out.append(codes.get(v, NAN))
        return out

    def matrix(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """Many requests as a C-contiguous float64 matrix."""
        return np.array([self.row(r) for r in rows], dtype=np.float64).reshape(len(rows), len(self.names))
