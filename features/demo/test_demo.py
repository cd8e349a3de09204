"""The demo generator: deterministic, the promised size, consistent (tests of this loader only).

pytest collects this folder too (pyproject.toml testpaths): a fork's loader brings its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from features import demo
from features.build import build_training_frame, training_as_of_dates
from features.db import make_engine

END = datetime(2026, 6, 1)


def test_demo_is_deterministic_for_a_seed():
    a = demo.generate(scale=0.02, seed=3, end=END)
    b = demo.generate(scale=0.02, seed=3, end=END)
    c = demo.generate(scale=0.02, seed=4, end=END)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.orders, b.orders)
    assert not a.events["ts"].equals(c.events["ts"])


def test_demo_end_only_shifts_time():
    a = demo.generate(scale=0.02, seed=3, end=END)
    b = demo.generate(scale=0.02, seed=3, end=END + timedelta(days=10))
    assert ((b.events["ts"] - a.events["ts"]) == pd.Timedelta(days=10)).all()
    pd.testing.assert_series_equal(a.events["user_id"], b.events["user_id"])


def test_default_scale_has_20k_users_and_1m_events():
    data = demo.generate(scale=1.0, seed=42, end=END)
    assert len(data.users) >= 20_000
    assert len(data.events) >= 1_000_000
    assert set(data.events["kind"]) == {"view", "search", "cart"}
    signup = data.users.set_index("user_id")["signup_at"]
    assert (data.events["ts"].to_numpy() >= signup.loc[data.events["user_id"]].to_numpy()).all()


def test_users_signed_up_after_as_of_are_left_out(tmp_path):
    data = demo.generate(scale=0.05, seed=7, end=END)
    engine = make_engine(f"sqlite:///{tmp_path / 'app.db'}")
    demo.load(engine, data)
    as_of = training_as_of_dates(engine, 1)[0]
    frame = build_training_frame(engine, [as_of])
    signup = data.users.set_index("user_id")["signup_at"]
    assert set(frame["user_id"]) == set(signup[signup < np.datetime64(as_of)].index)


def test_recorded_outcomes_are_orders_of_those_users(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'app.db'}")
    demo.load(engine, demo.generate(scale=0.01, seed=1, end=END))
    before = demo.row_counts(engine)["orders"]
    assert demo.record_outcomes(engine, [("u000001", END), ("u000002", END)]) == 2
    assert demo.row_counts(engine)["orders"] == before + 2
