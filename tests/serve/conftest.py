"""Fixtures of the server tests."""

from __future__ import annotations

import pytest

from features.build import build_training_frame, training_as_of_dates
from features.db import make_engine


@pytest.fixture(scope="session")
def holdout(small_sqlite_url):
    """60 rows of the small demo's newest as_of date, as training builds them."""
    engine = make_engine(small_sqlite_url)
    return build_training_frame(engine, training_as_of_dates(engine, 1)).head(60)
