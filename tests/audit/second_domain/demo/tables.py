"""The marketplace's tables (SQLAlchemy Core): hosts, their sessions and their bookings."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, MetaData, String, Table

metadata = MetaData()

hosts = Table(
    "hosts", metadata,
    Column("host_id", BigInteger, primary_key=True, autoincrement=False),
    Column("joined_at", DateTime, nullable=False),
    Column("tier", String(8), nullable=False),
    Column("region", String(8), nullable=False),
)
sessions = Table(
    "sessions", metadata,
    Column("session_id", BigInteger, primary_key=True, autoincrement=False),
    Column("host_id", BigInteger, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("ended_at", DateTime, nullable=False),
    Index("ix_sessions_host_started", "host_id", "started_at"),
)
bookings = Table(
    "bookings", metadata,
    Column("booking_id", BigInteger, primary_key=True, autoincrement=False),
    Column("host_id", BigInteger, nullable=False),
    Column("ts", DateTime, nullable=False),
    Column("price", Float, nullable=False),
    Index("ix_bookings_host_ts", "host_id", "ts"),
)
APP_TABLES = (hosts, sessions, bookings)
