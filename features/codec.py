"""The rules a feature value must keep, and the float matrix models see: one source for all.

`Codec` is compiled once from the feature schema. Each feature becomes one `Rule` (allowed
codes or range, nullability); every path checks with those rules:

- `row` / `matrix` / `columns`: a request's features (the server's hot path: /predict, and
  /predict/batch as rows or as columns) checked and encoded in one pass; None when anything is
  wrong, then
- `errors` / `column_errors`: every problem, each naming the field (the 422 body), and
- `frame_problems` / `encode_frame`: a training frame (pandas), the same rules column-wise.

Encoding: numbers pass through (missing -> NaN); a categorical becomes the index of its value in
the schema's `values` (LightGBM reads those columns as categorical).
`tests/features/test_codec.py` holds every path to the same verdict on the same values.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from features.schema import FEATURES, Feature
from features.spec import shown

NAN = float("nan")
_BIG = sys.float_info.max  # a bound of +-max also refuses +-inf; NaN fails every comparison
_NUMBER_OR_NONE = frozenset({int, float, type(None)})


@dataclass(frozen=True)
class Rule:
    """What one feature's value may be."""

    name: str
    codes: dict[str, float] | None  # categorical: value -> code; None for numbers
    low: float
    high: float
    nullable: bool
    feature: Feature

    def problem(self, v: Any) -> str | None:
        """Why `v` is not a valid value (None: valid). The wording every 422 uses."""
        f = self.feature
        if v is None:
            return None if self.nullable else "is required and may not be null"
        if self.codes is not None:
            return None if type(v) is str and v in self.codes else f"must be one of {list(f.values)}, got {shown(v)}"
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"must be a number, got {type(v).__name__}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v}"
        if v < self.low:
            return f"must be >= {f.minimum:g}, got {shown(v)}"
        if v > self.high:
            return f"must be <= {f.maximum:g}, got {shown(v)}"
        return None


def _rule(f: Feature) -> Rule:
    codes = {v: float(i) for i, v in enumerate(f.values)} if f.kind == "categorical" else None
    return Rule(f.name, codes, -_BIG if f.minimum is None else f.minimum,
                _BIG if f.maximum is None else f.maximum, f.nullable, f)


class Codec:
    """Checks and encodes features by the schema's rules."""

    def __init__(self, features: Sequence[Feature] = FEATURES) -> None:
        self.features = tuple(features)
        self.rules = tuple(_rule(f) for f in self.features)
        self.names = tuple(f.name for f in self.features)
        self.name_set = frozenset(self.names)
        self._plan = [(r.name, r.codes, r.low, r.high, r.nullable) for r in self.rules]

    # -- requests ---------------------------------------------------------------------------

    def row(self, obj: Any) -> list[float] | None:
        """The encoded row of a valid features object, else None (then ask `errors`).

        The inlined twin of `Rule.problem`: valid input, nearly all traffic, builds no message.
        """
        if type(obj) is not dict or not obj.keys() <= self.name_set:
            return None
        out: list[float] = []
        append = out.append
        for name, codes, lo, hi, nullable in self._plan:
            v = obj.get(name)
            if v is None:
                if not nullable:
                    return None
                append(NAN)
            elif codes is not None:
                code = codes.get(v) if type(v) is str else None
                if code is None:
                    return None
                append(code)
            elif (type(v) is float or type(v) is int) and lo <= v <= hi:
                try:
                    append(float(v))
                except OverflowError:  # an integer beyond float range
                    return None
            else:
                return None
        return out

    def matrix(self, rows: list[Any]) -> np.ndarray | None:
        """The encoded matrix of valid rows, column by column (the batch path), else None.

        The loops run in C (map, set.union, numpy); a 1,000-row batch costs ~2 us a row.
        """
        if not rows or set(map(type, rows)) != {dict} or not set().union(*rows) <= self.name_set:
            return None
        X = np.empty((len(rows), len(self._plan)), dtype=np.float64)
        for j, rule in enumerate(self.rules):
            if not self._fill(X, j, rule, list(map(dict.get, rows, repeat(rule.name)))):
                return None
        return X

    def columns(self, columns: Any) -> np.ndarray | None:
        """The encoded matrix of a valid columnar batch, else None (then ask `column_errors`).

        `columns` maps feature names to lists of equal length, one value per row (TF Serving's
        columnar format); a feature left out is null in every row. The same rules as `matrix`, with
        no row objects to build, read and free: a third of the cost per row.
        """
        if type(columns) is not dict or not columns or not columns.keys() <= self.name_set:
            return None
        lists = list(columns.values())
        if set(map(type, lists)) != {list}:
            return None
        n = len(lists[0])
        if n == 0 or any(len(c) != n for c in lists):
            return None
        X = np.empty((n, len(self._plan)), dtype=np.float64)
        for j, rule in enumerate(self.rules):
            column = columns.get(rule.name)
            if column is None:
                if not rule.nullable:
                    return None
                X[:, j] = NAN
            elif not self._fill(X, j, rule, column):
                return None
        return X

    @staticmethod
    def _fill(X: np.ndarray, j: int, rule: Rule, column: list) -> bool:
        """Encode one column's values into X[:, j]; False when any breaks `rule` (Rule.problem's verdict).

        numpy stores None as NaN; a NaN is then either a None (counted) or a value the rules refuse.
        """
        try:
            if rule.codes is not None:
                encoded = list(map(rule.codes.get, column))  # non-strings are never keys: None
                X[:, j] = encoded
                return not np.isnan(X[:, j]).any() or (rule.nullable and _only_missing_unknown(column, encoded))
            kinds = set(map(type, column))
            if not kinds <= _NUMBER_OR_NONE:
                return False
            X[:, j] = column
            values = X[:, j]
            if type(None) in kinds:
                if not rule.nullable or np.count_nonzero(np.isnan(values)) != column.count(None):
                    return False  # a null where none may be, or a NaN the client sent
                return not ((values < rule.low).any() or (values > rule.high).any())  # NaN compares False
            # the same verdict as Rule.problem, in two C passes: NaN and +-inf fail a bound too
            return bool((values >= rule.low).all() and (values <= rule.high).all())
        except (OverflowError, TypeError):  # an integer too large for a float; an unhashable value
            return False

    def errors(self, obj: Any, loc: Sequence[str | int]) -> list[dict[str, Any]]:
        """Every problem with `obj` as features, FastAPI-style (empty list: valid)."""
        if not isinstance(obj, dict):
            return [error(loc, "must be an object of feature values", "dict_type", obj)]
        out = [error([*loc, key], f"unknown feature; expected only {sorted(self.names)}",
                     "extra_forbidden", obj[key])
               for key in sorted(obj.keys() - self.name_set, key=str)]
        for rule in self.rules:
            v = obj.get(rule.name)
            problem = rule.problem(v)
            if problem is not None:
                out.append(error([*loc, rule.name], problem, _kind(rule, v), v))
        return out

    def column_errors(self, columns: Any, loc: Sequence[str | int]) -> list[dict[str, Any]]:
        """Every problem with `columns` as a columnar batch (empty list: valid); a value's entry
        names its column and row, e.g. columns.country.3."""
        if not isinstance(columns, dict) or not columns:
            return [error(loc, "must be an object of feature columns, {feature: [one value per row]}, with at "
                               "least one column", "dict_type", columns)]
        out = [error([*loc, key], f"unknown feature; expected only {sorted(self.names)}", "extra_forbidden",
                     columns[key]) for key in sorted(columns.keys() - self.name_set, key=str)]
        lists = {k: v for k, v in columns.items() if k in self.name_set}
        out += [error([*loc, k], "must be a list of values, one per row", "list_type", v)
                for k, v in lists.items() if not isinstance(v, list)]
        lengths = {k: len(v) for k, v in lists.items() if isinstance(v, list)}
        if lengths:
            n = Counter(lengths.values()).most_common(1)[0][0]  # the odd columns out are the ones named
            first = next(k for k, m in lengths.items() if m == n)
            if n == 0:
                out.append(error([*loc, first], "must hold at least one value (one per row)", "too_short", []))
            out += [error([*loc, k], f"has {m} values; {first} has {n} (every column holds one value per row)",
                          "length_mismatch", m) for k, m in lengths.items() if m != n]
        for rule in self.rules:
            if rule.name not in lists:
                if not rule.nullable:
                    out.append(error([*loc, rule.name], "is required and may not be null (a column of values, "
                                                        "one per row)", "missing"))
                continue
            column = lists[rule.name]
            for i, v in enumerate(column if isinstance(column, list) else ()):  # not a list: named above
                problem = rule.problem(v)
                if problem is not None:
                    out.append(error([*loc, rule.name, i], problem, _kind(rule, v), v))
        return out

    def encode_known(self, obj: Mapping[str, Any]) -> list[float]:
        """A row without checks (rows the caller already checked: self-check rows, tests)."""
        out = []
        for name, codes, *_ in self._plan:
            v = obj.get(name)
            out.append(NAN if v is None else (float(v) if codes is None else codes.get(v, NAN)))
        return out

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Many checked rows as a C-contiguous float64 matrix."""
        return np.array([self.encode_known(r) for r in rows], dtype=np.float64).reshape(len(rows), len(self.names))

    # -- training frames ----------------------------------------------------------------------

    def frame_problems(self, frame: pd.DataFrame) -> list[str]:
        """Every way `frame` breaks the rules, one line each (empty list: valid)."""
        problems = []
        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            problems.append(f"columns missing from the frame: {missing} (renamed in features/sql?)")
        for rule in self.rules:
            if rule.name not in frame.columns:
                continue
            col = frame[rule.name]
            absent = col.isna().to_numpy()
            if rule.codes is not None:
                present = col[~absent].astype(object)
                bad = sorted({str(v) for v in present.unique() if not (type(v) is str and v in rule.codes)})
                if bad:
                    problems.append(f"{rule.name}: values {bad[:5]} not in the schema's {list(rule.feature.values)}")
            else:
                if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                    problems.append(f"{rule.name}: expected numeric, got {col.dtype}")
                    continue
                values = col.to_numpy(dtype="float64", na_value=np.nan)
                problem = _numeric_problem(rule, values, absent, nulls_checked_here=False)
                if problem:
                    problems.append(f"{rule.name}: {problem}")
            if absent.any() and not rule.nullable:
                problems.append(f"{rule.name}: {int(absent.sum())} missing values, but the schema says "
                                "it may not be missing")
        return problems

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """A (rows x features) float64 matrix in schema order (unknown categories -> NaN)."""
        out = np.empty((len(frame), len(self.rules)), dtype=np.float64)
        for j, rule in enumerate(self.rules):
            column = frame[rule.name]
            if rule.codes is not None:
                codes = pd.Categorical(column, categories=list(rule.feature.values)).codes.astype(np.float64)
                codes[codes < 0] = np.nan
                out[:, j] = codes
            else:
                out[:, j] = pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def categorical_indices(self) -> list[int]:
        """Column positions of the categorical features."""
        return [i for i, r in enumerate(self.rules) if r.codes is not None]

    def with_dtypes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Numbers as float64, categoricals as pandas categories in schema order (training frames)."""
        frame = frame.copy()
        for rule in self.rules:
            if rule.codes is not None:
                frame[rule.name] = pd.Categorical(frame[rule.name].astype(object),
                                                  categories=list(rule.feature.values))
            else:
                frame[rule.name] = frame[rule.name].astype("float64")
        return frame


def as_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Rows as a columnar batch (what `Codec.columns` reads): every key any row has, in the order
    first seen, with None where a row lacks it."""
    return {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}


def _only_missing_unknown(column: list, encoded: list) -> bool:
    """A nullable categorical column whose unencodable entries are all None."""
    return all(v is None for v, c in zip(column, encoded, strict=True) if c is None)


def _numeric_problem(rule: Rule, values: np.ndarray, missing: np.ndarray | None,
                     nulls_checked_here: bool = True) -> str | None:
    """The column-wise `Rule.problem` for numbers; NaN at `missing`, anything else must be in range."""
    if missing is not None and missing.any():
        if nulls_checked_here and not rule.nullable:
            return "is required and may not be null"
        values = values[~missing]
    if np.isinf(values).any():
        return "contains infinity"
    if np.isnan(values).any():
        return "contains NaN"
    if values.size and values.min() < rule.low:
        return f"minimum {values.min()} below the schema's {rule.feature.minimum}"
    if values.size and values.max() > rule.high:
        return f"maximum {values.max()} above the schema's {rule.feature.maximum}"
    return None


def _kind(rule: Rule, v: Any) -> str:
    if v is None:
        return "missing"
    if rule.codes is not None:
        return "enum"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "float_type"
    if isinstance(v, float) and not math.isfinite(v):
        return "finite_number"
    return "greater_than_equal" if v < rule.low else "less_than_equal"


def error(loc: Sequence[str | int], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    """One FastAPI-style error entry whose message starts with the field's path."""
    where = ".".join(str(p) for p in loc)
    return {"loc": ["body", *loc], "msg": f"{where}: {msg}", "type": kind, "input": safe_input(value)}


def safe_input(value: Any) -> Any:
    """A value as it may be echoed in an error body: JSON-safe and short."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else f"<integer of {len(str(abs(value)))} digits>"
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:80] + "..."
    return f"<{type(value).__name__}>"


CODEC = Codec()  # the serving and training codec of this checkout's schema
