"""Feature definitions: same frame on SQLite and Postgres, point in time, online == batch."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from features import demo, tables
from features.build import (
    build_online,
    build_training_frame,
    training_as_of_dates,
)
from features.db import make_engine
from features.schema import FEATURE_NAMES, FEATURES, LABEL
from tests.conftest import DEMO_END, SMALL_SCALE


def frame_of(url: str, dates: list[datetime]) -> pd.DataFrame:
    return build_training_frame(make_engine(url), dates)


def test_demo_is_deterministic_for_a_seed():
    a = demo.generate(scale=0.02, seed=3, end=DEMO_END)
    b = demo.generate(scale=0.02, seed=3, end=DEMO_END)
    c = demo.generate(scale=0.02, seed=4, end=DEMO_END)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.orders, b.orders)
    assert not a.events["ts"].equals(c.events["ts"])


def test_demo_end_only_shifts_time():
    a = demo.generate(scale=0.02, seed=3, end=DEMO_END)
    b = demo.generate(scale=0.02, seed=3, end=DEMO_END + timedelta(days=10))
    assert ((b.events["ts"] - a.events["ts"]) == pd.Timedelta(days=10)).all()
    pd.testing.assert_series_equal(a.events["user_id"], b.events["user_id"])


def test_default_scale_has_20k_users_and_1m_events():
    data = demo.generate(scale=1.0, seed=42, end=DEMO_END)
    assert len(data.users) >= 20_000
    assert len(data.events) >= 1_000_000
    assert set(data.events["kind"]) == {"view", "search", "cart"}
    signup = data.users.set_index("user_id")["signup_at"]
    assert (data.events["ts"].to_numpy() >= signup.loc[data.events["user_id"]].to_numpy()).all()


@pytest.mark.postgres
def test_frame_identical_on_sqlite_and_postgres(small_sqlite_url, small_postgres_url):
    dates = training_as_of_dates(make_engine(small_sqlite_url), 3)
    assert dates == training_as_of_dates(make_engine(small_postgres_url), 3)
    lite, pg = frame_of(small_sqlite_url, dates), frame_of(small_postgres_url, dates)
    assert len(lite) > 0.5 * SMALL_SCALE * demo.USERS_PER_SCALE * 3
    pd.testing.assert_frame_equal(lite, pg, check_exact=True)
    assert list(lite.columns) == ["as_of", "user_id", *FEATURE_NAMES, LABEL]
    for f in FEATURES:
        expected = "category" if f.kind == "categorical" else "float64"
        assert str(lite[f.name].dtype) == expected, f.name


@pytest.fixture
def fresh_sqlite(tmp_path, small_demo) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    demo.load(make_engine(url), small_demo)
    return url


def test_rows_at_or_after_as_of_change_no_feature(fresh_sqlite):
    engine = make_engine(fresh_sqlite)
    as_of = training_as_of_dates(engine, 1)[0]
    before = build_training_frame(engine, [as_of])
    users = before["user_id"].iloc[:50].tolist()
    with engine.begin() as conn:
        conn.execute(insert(tables.events), [
            {"event_id": 10_000_000 + i, "user_id": u, "ts": as_of + timedelta(seconds=s), "kind": "cart"}
            for i, (u, s) in enumerate((u, s) for u in users for s in (0, 1, 3600 * 24 * 3))
        ])
        conn.execute(insert(tables.orders), [
            {"order_id": 10_000_000 + i, "user_id": u, "ts": as_of, "amount": 10.0}
            for i, u in enumerate(users)
        ])
    after = build_training_frame(engine, [as_of])
    pd.testing.assert_frame_equal(before[list(FEATURE_NAMES)], after[list(FEATURE_NAMES)])
    # ...but the label sees the orders placed at as_of.
    assert after.set_index("user_id").loc[users, LABEL].eq(1).all()


def test_label_counts_exactly_the_next_7_days(fresh_sqlite):
    engine = make_engine(fresh_sqlite)
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of])
    quiet = frame[frame[LABEL] == 0]["user_id"].iloc[:3].tolist()
    just_before, at_end, inside = quiet
    with engine.begin() as conn:
        conn.execute(insert(tables.orders), [
            {"order_id": 20_000_001, "user_id": just_before, "ts": as_of - timedelta(microseconds=1), "amount": 5.0},
            {"order_id": 20_000_002, "user_id": at_end, "ts": as_of + timedelta(days=7), "amount": 5.0},
            {"order_id": 20_000_003, "user_id": inside, "ts": as_of + timedelta(days=7, microseconds=-1), "amount": 5.0},
        ])
    labels = build_training_frame(engine, [as_of]).set_index("user_id")[LABEL]
    assert labels[just_before] == 0 and labels[at_end] == 0 and labels[inside] == 1
    # the order just before as_of is a feature now
    again = build_training_frame(engine, [as_of]).set_index("user_id")
    assert again.loc[just_before, "orders_30d"] == frame.set_index("user_id").loc[just_before, "orders_30d"] + 1


def _online_matches_batch(url: str) -> None:
    engine = make_engine(url)
    as_of = training_as_of_dates(engine, 1)[0]
    batch = build_training_frame(engine, [as_of]).set_index("user_id")
    sample = batch.sample(40, random_state=1).index.tolist()
    with engine.connect() as conn:
        for user_id in sample:
            online = build_online(conn, user_id, as_of)
            row = batch.loc[user_id]
            for name in FEATURE_NAMES:
                a, b = online[name], row[name]
                if pd.isna(b):
                    assert a is None, (user_id, name)
                elif isinstance(a, str):
                    assert a == b, (user_id, name)
                else:
                    assert a == pytest.approx(float(b), abs=0), (user_id, name)
        assert build_online(conn, "u999999", as_of) is None


def test_online_equals_batch_sqlite(small_sqlite_url):
    _online_matches_batch(small_sqlite_url)


@pytest.mark.postgres
def test_online_equals_batch_postgres(small_postgres_url):
    _online_matches_batch(small_postgres_url)


def test_users_signed_up_after_as_of_are_left_out(small_sqlite_url, small_demo):
    engine = make_engine(small_sqlite_url)
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of])
    signup = small_demo.users.set_index("user_id")["signup_at"]
    expected = set(signup[signup < np.datetime64(as_of)].index)
    assert set(frame["user_id"]) == expected
