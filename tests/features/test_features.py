"""Feature definitions: same frame on SQLite and Postgres, point in time, online == batch.

Domain-free: the spec says what the features are, the loader writes the data and
`<loader>.expect` (features/demo/expect.py) holds what only the demo's data can promise.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import DateTime, bindparam, text

from features.build import build_online, build_training_frame, training_as_of_dates
from features.db import date_part, make_engine
from features.schema import FEATURE_NAMES, FEATURES, LABEL
from features.spec import SPEC
from tests.conftest import EXPECT, KEY, SMALL_SCALE, demo

# what the label is when the outcome it counts did happen in the window
HAPPENED = 1 if SPEC.label.positive == "count > 0" else 0


def frame_of(url: str, dates: list[datetime]) -> pd.DataFrame:
    return build_training_frame(make_engine(url), dates)


@pytest.mark.postgres
def test_frame_identical_on_sqlite_and_postgres(small_sqlite_url, small_postgres_url):
    dates = training_as_of_dates(make_engine(small_sqlite_url), 3)
    assert dates == training_as_of_dates(make_engine(small_postgres_url), 3)
    lite, pg = frame_of(small_sqlite_url, dates), frame_of(small_postgres_url, dates)
    assert len(lite) > 0.3 * SMALL_SCALE * demo.ENTITIES_PER_SCALE * 3
    pd.testing.assert_frame_equal(lite, pg, check_exact=True)
    assert list(lite.columns) == ["as_of", KEY, *FEATURE_NAMES, LABEL]
    assert str(lite[KEY].dtype) == ("int64" if SPEC.entity.type == "integer" else "object")
    for f in FEATURES:
        expected = "category" if f.kind == "categorical" else "float64"
        assert str(lite[f.name].dtype) == expected, f.name
    assert lite[LABEL].isin([0, 1]).all() and 0 < lite[LABEL].mean() < 1


@pytest.fixture
def fresh_sqlite(tmp_path, small_demo) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    demo.load(make_engine(url), small_demo)
    return url


def test_rows_at_or_after_as_of_change_no_feature(fresh_sqlite):
    engine = make_engine(fresh_sqlite)
    as_of = training_as_of_dates(engine, 1)[0]
    before = build_training_frame(engine, [as_of])
    keys = before[KEY].iloc[:50].tolist()
    EXPECT.write_rows_from(engine, keys, as_of)
    after = build_training_frame(engine, [as_of])
    pd.testing.assert_frame_equal(before[list(FEATURE_NAMES)], after[list(FEATURE_NAMES)])
    # ...but the label sees what happened at as_of.
    assert after.set_index(KEY).loc[keys, LABEL].eq(HAPPENED).all()


def test_label_counts_exactly_the_horizon(fresh_sqlite):
    engine = make_engine(fresh_sqlite)
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of]).set_index(KEY)
    quiet = frame[frame[LABEL] == 1 - HAPPENED].index[:3].tolist()
    just_before, at_end, inside = quiet
    horizon = SPEC.label.horizon
    EXPECT.write_label_events(engine, [(just_before, as_of - timedelta(microseconds=1)),
                                       (at_end, as_of + horizon),
                                       (inside, as_of + horizon - timedelta(microseconds=1))])
    again = build_training_frame(engine, [as_of]).set_index(KEY)
    labels = again[LABEL]
    assert labels[just_before] == 1 - HAPPENED and labels[at_end] == 1 - HAPPENED
    assert labels[inside] == HAPPENED
    # the event just before as_of is history now: some feature of that entity moved
    assert not again.loc[just_before, list(FEATURE_NAMES)].equals(frame.loc[just_before, list(FEATURE_NAMES)])


def _online_matches_batch(url: str) -> None:
    engine = make_engine(url)
    as_of = training_as_of_dates(engine, 1)[0]
    batch = build_training_frame(engine, [as_of]).set_index(KEY)
    sample = batch.sample(40, random_state=1).index.tolist()
    with engine.connect() as conn:
        for key in sample:
            online = build_online(conn, key, as_of)
            row = batch.loc[key]
            for name in FEATURE_NAMES:
                a, b = online[name], row[name]
                if pd.isna(b):
                    assert a is None, (key, name)
                elif isinstance(a, str):
                    assert a == b, (key, name)
                else:
                    assert a == float(b), (key, name)  # bit-identical, not approximately
        assert build_online(conn, SPEC.entity.parse(EXPECT.MISSING_KEY), as_of) is None


def test_online_equals_batch_sqlite(small_sqlite_url):
    _online_matches_batch(small_sqlite_url)


@pytest.mark.postgres
def test_online_equals_batch_postgres(small_postgres_url):
    _online_matches_batch(small_postgres_url)


def test_every_entity_of_the_spine_gets_a_row_with_the_key_type(small_sqlite_url):
    engine = make_engine(small_sqlite_url)
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of])
    assert frame[KEY].is_unique
    expected = int if SPEC.entity.type == "integer" else str
    assert all(type(k) is expected for k in frame[KEY].head(100))


# -- the portable time arithmetic: date_part on both databases ----------------------------------

TIMES = [datetime(2026, 3, 1, 12, 30, 15, 250_000), datetime(1999, 12, 31, 23, 59, 59, 999_999),
         datetime(2024, 2, 29)]
FIELDS = ("epoch", "year", "month", "day", "hour", "minute", "second", "dow", "isodow", "doy")


def _date_parts(url: str) -> list[list[float]]:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS date_part_probe"))
        conn.execute(text("CREATE TABLE date_part_probe (ts TIMESTAMP)"))
        insert = text("INSERT INTO date_part_probe (ts) VALUES (:ts)").bindparams(bindparam("ts", type_=DateTime()))
        conn.execute(insert, [{"ts": t} for t in TIMES])
        select_list = ", ".join(f"date_part('{f}', ts)" for f in FIELDS)
        rows = conn.execute(text(f"SELECT {select_list} FROM date_part_probe ORDER BY ts")).all()
        conn.execute(text("DROP TABLE date_part_probe"))
    return [[float(v) for v in row] for row in rows]


def test_date_part_on_sqlite_means_what_postgres_means(tmp_path):
    got = _date_parts(f"sqlite:///{tmp_path / 'probe.db'}")
    first = sorted(TIMES)[0]
    assert got[0][0] == (first - datetime(1970, 1, 1)).total_seconds()
    assert got[0][1:4] == [1999, 12, 31]


@pytest.mark.postgres
def test_date_part_gives_the_same_numbers_on_both_databases(tmp_path, postgres_url):
    assert _date_parts(f"sqlite:///{tmp_path / 'probe.db'}") == _date_parts(postgres_url)


def test_hours_between_two_timestamps_is_one_expression(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    with engine.connect() as conn:
        hours = conn.execute(text("SELECT (date_part('epoch', :b) - date_part('epoch', :a)) / 3600.0"),
                             {"a": "2026-01-01 00:00:00", "b": "2026-01-02 06:30:00"}).scalar()
    assert hours == 30.5


def test_date_part_refuses_an_unknown_field():
    with pytest.raises(ValueError, match="field 'fortnight'"):
        date_part("fortnight", datetime(2026, 1, 1))
