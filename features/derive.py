"""SQL columns -> features: each feature's `from:` in spec.yml, applied two ways.

`frame()` runs over a training frame's columns (numpy, vectorised); `row()` over one entity's
SQL row (plain Python, no pandas: the online path pays microseconds). Both implement the same
derivations and give bit-identical floats; the parity tests hold them to it on both databases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.spec import SPEC, FeatureSpec, Spec

_US_PER = {"days_since": 86_400_000_000, "hours_since": 3_600_000_000}
_US = np.timedelta64(1, "us")


def to_naive_utc(value: Any) -> datetime | None:
    """A timestamp from either database as a naive UTC datetime (SQLite hands back text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _timestamps(values: pd.Series) -> np.ndarray:
    parsed = pd.to_datetime(values, format="ISO8601", utc=True)
    return parsed.dt.tz_localize(None).astype("datetime64[us]").to_numpy()


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)


def _round_array(values: np.ndarray, digits: int | None) -> np.ndarray:
    return values if digits is None else np.round(values, digits)


def _round_one(value: float | None, digits: int | None) -> float | None:
    # numpy's rounding, not Python's round(): the two differ in the last bit for some values
    return value if digits is None or value is None else float(np.round(np.float64(value), digits))


class Transform:
    """The derivations of one spec, compiled."""

    def __init__(self, spec: Spec = SPEC) -> None:
        self.features: tuple[FeatureSpec, ...] = spec.features
        self.names = tuple(f.name for f in spec.features)
        self._scalar: list[tuple[str, Callable[[Mapping[str, Any], datetime], Any]]] = [
            (f.name, _scalar(f)) for f in spec.features]

    def frame(self, raw: pd.DataFrame, as_of: datetime) -> dict[str, np.ndarray]:
        """Every feature's column for the SQL results `raw` (one row per entity)."""
        as_of64 = np.datetime64(as_of, "us")
        out: dict[str, np.ndarray] = {}
        for f in self.features:
            how, cols = f.derivation
            missing = [c for c in cols if c not in raw.columns]
            if missing:
                raise KeyError(f"feature {f.name!r} derives from SQL column(s) {missing}, which no file "
                               f"in features/sql returns (spec.yml `from:`; the SQL files' aliases)")
            if how == "category":
                column = raw[cols[0]].to_numpy(dtype=object)
                out[f.name] = np.where(pd.isna(column), None, column)
                continue
            if how in _US_PER:
                delta = (as_of64 - _timestamps(raw[cols[0]])) / _US  # integer microseconds, exact
                values = delta.astype("float64") / _US_PER[how]
            elif how == "count":
                values = np.nan_to_num(_numbers(raw[cols[0]]), nan=0.0, posinf=np.inf, neginf=-np.inf)
            elif how == "value":
                values = _numbers(raw[cols[0]])
            else:  # ratio
                num, den = _numbers(raw[cols[0]]), _numbers(raw[cols[1]])
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.where(den == 0, np.nan, num / den)
            out[f.name] = _round_array(values, f.round)
        return out

    def row(self, raw: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
        """One entity's features from its SQL row (a mapping of column -> value)."""
        return {name: fn(raw, as_of) for name, fn in self._scalar}


def _scalar(f: FeatureSpec) -> Callable[[Mapping[str, Any], datetime], Any]:
    how, cols = f.derivation
    first, digits = cols[0], f.round
    if how == "category":
        return lambda raw, _as_of: raw.get(first)
    if how in _US_PER:
        per = _US_PER[how]

        def since(raw, as_of):
            ts = to_naive_utc(raw.get(first))
            return None if ts is None else _round_one(((as_of - ts) // _ONE_US) / per, digits)
        return since
    if how == "count":
        return lambda raw, _as_of: _round_one(0.0 if raw.get(first) is None else float(raw[first]), digits)
    if how == "value":
        return lambda raw, _as_of: _round_one(None if raw.get(first) is None else float(raw[first]), digits)

    second = cols[1]

    def ratio(raw, _as_of):
        num, den = raw.get(first), raw.get(second)
        if num is None or den is None or float(den) == 0.0:
            return None
        return _round_one(float(num) / float(den), digits)
    return ratio


_ONE_US = pd.Timedelta(microseconds=1).to_pytimedelta()
TRANSFORM = Transform()
