"""The demo app's tables (SQLAlchemy Core), the same on SQLite and Postgres."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", String(16), primary_key=True),
    Column("signup_at", DateTime, nullable=False),
    Column("country", String(16), nullable=False),
    Column("device", String(16), nullable=False),
    Column("channel", String(16), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", String(16), nullable=False),
    Column("ts", DateTime, nullable=False),
    Column("kind", String(16), nullable=False),
    Index("ix_events_user_ts_kind", "user_id", "ts", "kind"),  # covering: features scan it only
    Index("ix_events_ts", "ts"),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", String(16), nullable=False),
    Column("ts", DateTime, nullable=False),
    Column("amount", Float, nullable=False),
    Index("ix_orders_user_ts", "user_id", "ts"),
    Index("ix_orders_ts", "ts"),
)

APP_TABLES = (users, events, orders)
# What the rest of the stack needs to know about these tables (change these with the tables):
ENTITY_ID = users.c.user_id  # the prediction unit; features/sql returns it as user_id
EVENT_TIMES = (events.c.ts, orders.c.ts)  # the observed data ends at the newest of these
OUTCOME_UNIT, OUTCOME_TIME = orders.c.user_id, orders.c.ts  # an A/B conversion: a row here
