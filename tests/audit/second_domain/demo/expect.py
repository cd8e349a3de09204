"""What the tests may expect of the marketplace's demo data."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, insert, select

from features.demo import record_outcomes, tables

SAMPLE_KEY = 123
MISSING_KEY = 999_999
UNPARSABLE_KEY = "host-12"
MIN_ROC_AUC = 0.7
DEFAULT_SCALE_MINIMUMS = {"hosts": 2_000}


def write_label_events(engine: Engine, events: list[tuple[int, datetime]]) -> None:
    record_outcomes(engine, events)


def write_rows_from(engine: Engine, keys: list, as_of: datetime) -> None:
    """Sessions and bookings at and after `as_of`."""
    record_outcomes(engine, [(k, as_of + timedelta(seconds=s)) for k in keys for s in (0, 1, 86400)])
    with engine.begin() as conn:
        first = (conn.execute(select(func.max(tables.bookings.c.booking_id))).scalar() or 0) + 1
        conn.execute(insert(tables.bookings), [
            {"booking_id": first + i, "host_id": int(k), "ts": as_of, "price": 99.0} for i, k in enumerate(keys)])
