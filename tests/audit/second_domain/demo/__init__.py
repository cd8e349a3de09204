"""Demo data for a rental marketplace: hosts, their sessions and their bookings.

    python -m features.demo [--scale 1.0] [--seed 42] [--end YYYY-MM-DD] [--replace]

Each host has an engagement level and a day on which they drift away; sessions come at a rate set
by engagement and fade after that day, bookings follow sessions. Whether a host goes quiet in the
next 14 days is therefore readable from recent sessions, hours online and tenure.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from features.db import DatabaseError, check_connection, make_engine, redact
from features.demo import tables

ENTITIES_PER_SCALE = 2_000
DAYS = 120
TIERS = ("basic", "plus", "pro")
REGIONS = ("north", "south", "east", "west")


@dataclass
class DemoData:
    hosts: pd.DataFrame
    sessions: pd.DataFrame
    bookings: pd.DataFrame


def generate(scale: float = 1.0, seed: int = 42, end: datetime | None = None) -> DemoData:
    end = end or datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    rng = np.random.default_rng(seed)
    n = max(int(ENTITIES_PER_SCALE * scale), 20)
    tier = rng.choice(3, n, p=(0.5, 0.3, 0.2))
    region = rng.choice(4, n)
    engagement = np.exp(rng.normal(-0.3 + 0.4 * tier, 0.7, n))
    joined = rng.uniform(-200, DAYS - 20, n)
    drift = joined + rng.exponential(60 * (1 + tier), n)
    day = np.arange(DAYS)
    alive = (day[None, :] >= joined[:, None]) & (day[None, :] < drift[:, None])
    rate = engagement[:, None] * np.where(alive, 1.0, 0.02) * (day[None, :] >= joined[:, None])
    counts = rng.poisson(rate)
    cells = np.repeat(np.arange(counts.size), counts.ravel())
    host_idx, day_idx = cells // DAYS, cells % DAYS
    minutes = rng.integers(0, 24 * 60, host_idx.size)
    started = np.datetime64(start, "m") + (day_idx * 24 * 60 + minutes).astype("timedelta64[m]")
    length = rng.integers(5, 240, host_idx.size).astype("timedelta64[m]")  # whole minutes
    order = np.lexsort((host_idx, started))
    host_idx, started, length = host_idx[order], started[order], length[order]
    sessions = pd.DataFrame({
        "session_id": np.arange(1, host_idx.size + 1, dtype="int64"),
        "host_id": host_idx + 1,
        "started_at": started.astype("datetime64[us]"),
        "ended_at": (started + length).astype("datetime64[us]"),
    })
    booked = rng.random(host_idx.size) < 0.15 + 0.1 * tier[host_idx]
    bookings = pd.DataFrame({
        "booking_id": np.arange(1, int(booked.sum()) + 1, dtype="int64"),
        "host_id": host_idx[booked] + 1,
        "ts": (started[booked] + length[booked]).astype("datetime64[us]"),
        "price": np.round(rng.lognormal(4 + 0.3 * tier[host_idx[booked]], 0.4)).astype(float),  # whole
    })
    bookings = bookings[bookings["ts"] < np.datetime64(end)]
    sessions = sessions[sessions["started_at"] < np.datetime64(end)]
    hosts = pd.DataFrame({
        "host_id": np.arange(1, n + 1, dtype="int64"),
        "joined_at": (np.datetime64(start, "m") + np.round(joined * 24 * 60).astype("timedelta64[m]")).astype("datetime64[us]"),
        "tier": np.take(TIERS, tier),
        "region": np.take(REGIONS, region),
    })
    return DemoData(hosts, sessions.reset_index(drop=True), bookings.reset_index(drop=True))


def load(engine: Engine, data: DemoData) -> None:
    with engine.begin() as conn:
        tables.metadata.drop_all(conn)
        tables.metadata.create_all(conn)
        for table in tables.APP_TABLES:
            frame = getattr(data, table.name)
            rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
            for row in rows:
                for k, v in row.items():
                    if isinstance(v, pd.Timestamp):
                        row[k] = v.to_pydatetime()
            if rows:
                conn.execute(table.insert(), rows)


def describe(data: DemoData) -> str:
    return f"{len(data.hosts):,} hosts, {len(data.sessions):,} sessions, {len(data.bookings):,} bookings"


def create_tables(engine: Engine) -> None:
    tables.metadata.create_all(engine)


def record_outcomes(engine: Engine, outcomes: list[tuple[int, datetime]]) -> int:
    """A 30-minute session per (host, start time)."""
    if not outcomes:
        return 0
    s = tables.sessions
    with engine.begin() as conn:
        first = (conn.execute(select(func.max(s.c.session_id))).scalar() or 0) + 1
        conn.execute(s.insert(), [{"session_id": first + i, "host_id": int(key), "started_at": ts,
                                   "ended_at": ts + timedelta(minutes=30)}
                                  for i, (key, ts) in enumerate(outcomes)])
    return len(outcomes)


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: (conn.execute(select(func.count()).select_from(t)).scalar_one()
                         if conn.dialect.has_table(conn, t.name) else 0) for t in tables.APP_TABLES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m features.demo", description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--end", type=datetime.fromisoformat, default=None)
    p.add_argument("--replace", action="store_true")
    p.add_argument("--database-url", default=None)
    args = p.parse_args(argv)
    from stack.settings import get_settings

    url = args.database_url or get_settings().database_url
    try:
        engine = make_engine(url)
        check_connection(engine)
        if row_counts(engine)["hosts"] and not args.replace:
            print(f"seed: {redact(url)} already has hosts; nothing to do (--replace to reseed)")
            return 0
        data = generate(args.scale, args.seed, args.end)
        load(engine, data)
    except DatabaseError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    print(f"seed: {describe(data)} into {redact(url)}")
    return 0
