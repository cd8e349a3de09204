"""What the tests may expect of this domain's demo data: the one place they pin the demo.

Every test reads the domain from features/spec.yml and the loader's contract; the facts that only
hold for this demo (a real entity id, the quality bar a model reaches on its data, the sizes of the
default scale) and the rows only this domain knows how to write live here. A fork replaces this
file with its loader (tests/audit/second_domain/ has one).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, insert, select

from features.demo import tables

SAMPLE_KEY = "u000123"  # exists at every scale the tests use
MISSING_KEY = "u999999"  # never exists at those scales
UNPARSABLE_KEY = None  # string keys: every 1-64 character text parses (none is unparsable)
MIN_ROC_AUC = 0.75  # LightGBM defaults, small demo (2k users), 4 as_of dates: ~0.85 measured
DEFAULT_SCALE_MINIMUMS = {"users": 20_000, "events": 1_000_000}


def write_label_events(engine: Engine, events: list[tuple[str, datetime]]) -> None:
    """Events of the kind label.sql counts (orders), at the given times."""
    from features.demo import record_outcomes

    record_outcomes(engine, events)


def write_rows_from(engine: Engine, keys: list, as_of: datetime) -> None:
    """Rows at and after `as_of` in every table a feature or the label reads (point-in-time test)."""
    with engine.begin() as conn:
        start = (conn.execute(select(func.max(tables.events.c.event_id))).scalar() or 0) + 1
        conn.execute(insert(tables.events), [
            {"event_id": start + i, "user_id": key, "ts": as_of + timedelta(seconds=s), "kind": "cart"}
            for i, (key, s) in enumerate((k, s) for k in keys for s in (0, 1, 3600 * 24 * 3))])
        start = (conn.execute(select(func.max(tables.orders.c.order_id))).scalar() or 0) + 1
        conn.execute(insert(tables.orders), [
            {"order_id": start + i, "user_id": key, "ts": as_of, "amount": 10.0}
            for i, key in enumerate(keys)])
