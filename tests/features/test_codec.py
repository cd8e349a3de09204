"""One source of the rules: every path of features/codec.py gives the same verdict on a value.

/predict (row), /predict/batch (matrix, and columns for the columnar body), the 422 messages
(errors, column_errors), the training frame check
(frame_problems) and the self-check all read the same `Rule`s; here they are held to agree on
valid rows and on a battery of bad values for a feature of each kind of the spec.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import build_training_frame, feature_rows, training_as_of_dates
from features.codec import CODEC, as_columns, safe_input
from features.db import make_engine
from features.schema import FEATURES

NUM = next(f for f in FEATURES if f.kind == "numeric" and not f.nullable)
CAT = next(f for f in FEATURES if f.kind == "categorical")
NULLABLE = next(f for f in FEATURES if f.nullable)

BAD_NUMBERS = (-1e12, 1e12, float("nan"), float("inf"), float("-inf"), True, "3", None, 10**400, [1])
BAD_CATEGORIES = ("fax", None, 1, ["x"], True)
BAD_NULLABLE = (float("nan"), float("-inf"), -1e12, "7", False)


@pytest.fixture(scope="module")
def rows(small_sqlite_url) -> list[dict]:
    engine = make_engine(small_sqlite_url)
    return feature_rows(build_training_frame(engine, training_as_of_dates(engine, 1)).head(20))


def _bad_rows(base: dict) -> list:
    out = [{**base, NUM.name: v} for v in BAD_NUMBERS]
    out += [{**base, CAT.name: v} for v in BAD_CATEGORIES]
    out += [{**base, NULLABLE.name: v} for v in BAD_NULLABLE]
    out += [{**base, "extra": 1}, "not a dict", {k: v for k, v in base.items() if k != CAT.name}]
    return out


def test_valid_rows_encode_the_same_way_on_every_path(rows):
    rows = [dict(r) for r in rows]
    rows[0][NULLABLE.name] = None
    rows[1].pop(NULLABLE.name)
    X = CODEC.matrix(rows)
    np.testing.assert_array_equal(X, CODEC.encode_rows(rows))
    np.testing.assert_array_equal(np.array([CODEC.row(r) for r in rows]), X)
    assert all(CODEC.errors(r, ("f",)) == [] for r in rows)
    columns = as_columns(rows)
    np.testing.assert_array_equal(CODEC.columns(columns), X)
    assert CODEC.column_errors(columns, ("c",)) == []
    without = {n: v for n, v in columns.items() if n != NULLABLE.name}  # a column left out: null in every row
    np.testing.assert_array_equal(CODEC.columns(without)[:, CODEC.names.index(NULLABLE.name)], np.nan)
    frame = pd.DataFrame([{n: r.get(n) for n in CODEC.names} for r in rows])
    frame = CODEC.with_dtypes(frame)
    assert CODEC.frame_problems(frame) == []
    np.testing.assert_array_equal(CODEC.encode_frame(frame), X)


@pytest.mark.parametrize("i", range(len(BAD_NUMBERS) + len(BAD_CATEGORIES) + len(BAD_NULLABLE) + 3))
def test_a_bad_value_is_refused_by_every_path(rows, i):
    base = rows[2]
    bad = _bad_rows(base)[i]
    errors = CODEC.errors(bad, ("f",))
    assert errors, bad
    assert CODEC.row(bad) is None, bad
    assert CODEC.matrix([base, bad]) is None, bad
    assert all(isinstance(e["msg"], str) and e["msg"].startswith("f") for e in errors)
    if isinstance(bad, dict):  # the same two rows as columns: refused, the entry naming column and row
        columns = as_columns([base, bad])
        assert CODEC.columns(columns) is None, bad
        problems = CODEC.column_errors(columns, ("c",))
        assert problems and all(e["msg"].startswith("c.") for e in problems), bad
        assert {tuple(e["loc"][2:]) for e in problems} & ({(k, 1) for k in columns} | {("extra",)}), problems


def wrong_shapes(rows: list[dict]) -> list[tuple]:
    """Columnar bodies of the wrong shape, each with the loc its first entry must name."""
    two = as_columns(rows[:2])
    without_num = {k: v for k, v in two.items() if k != NUM.name}
    return [({}, ()), ([], ()), ("x", ()), ({**two, "nope": [1, 2]}, ("nope",)), ({**two, NUM.name: 3}, (NUM.name,)),
            ({**two, NUM.name: {"a": 1}}, (NUM.name,)), ({k: [] for k in two}, (next(iter(two)),)),
            ({**two, CAT.name: two[CAT.name][:1]}, (CAT.name,)),  # one value short
            (without_num, (NUM.name,))]  # a required feature's column left out


@pytest.mark.parametrize("i", range(9))
def test_a_columnar_batch_of_the_wrong_shape_is_refused_naming_where(rows, i):
    columns, where = wrong_shapes(rows)[i]
    assert CODEC.columns(columns) is None, columns
    problems = CODEC.column_errors(columns, ("columns",))
    assert problems, columns
    assert any(tuple(e["loc"][2:2 + len(where)]) == where for e in problems), problems


def test_the_training_frame_check_refuses_what_requests_may_not_carry(rows):
    frame = CODEC.with_dtypes(pd.DataFrame([{n: r.get(n) for n in CODEC.names} for r in rows]))
    cases = {
        NUM.name: (frame.assign(**{NUM.name: NUM.minimum - 1}), "below"),
        NUM.name + "-inf": (frame.assign(**{NUM.name: np.inf}), "infinity"),
        NUM.name + "-null": (frame.assign(**{NUM.name: np.nan}), "missing values"),
        CAT.name: (frame.assign(**{CAT.name: pd.Categorical(["fax"] * len(frame))}), "values ['fax']"),
    }
    for name, (bad, words) in cases.items():
        problems = CODEC.frame_problems(bad)
        assert any(words in p for p in problems), (name, problems)


def test_a_refusal_quotes_the_value_short_and_shallow():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for feature, value in ((CAT, deep), (CAT, "x" * 10_000), (NUM, 10**4000), (NUM, -(10**4000))):
        (entry,) = CODEC.errors({**{f.name: None for f in FEATURES if f.nullable}, **_required(), feature.name: value},
                                ("f",))
        assert entry["loc"] == ["body", "f", feature.name] and len(entry["msg"]) < 300, entry["msg"][:300]


def _required() -> dict:
    """A valid value for every required feature (the schema's example)."""
    from features.schema import example_features

    return {k: v for k, v in example_features().items() if not next(f for f in FEATURES if f.name == k).nullable}


def test_echoed_input_is_json_safe_and_short():
    assert safe_input(10**400) == "<integer of 401 digits>"
    assert safe_input(float("nan")) == "nan"
    assert len(safe_input("x" * 10_000)) < 100
    assert safe_input([[[[1]]]]) == "<list>"
