"""Demo data: a small e-commerce app's users, events and orders, with real signal in them.

    python -m features.demo [--scale 1.0] [--seed 42] [--end 2026-11-28] [--replace]

Deterministic for a given seed and scale: the end date only shifts every timestamp. Each user
has a latent purchase intent (driven by channel, device and country, plus noise), an activity
level and a lifetime after which they mostly go quiet. Add-to-cart events raise the chance of an
order in the next days; activity has a weekly cycle and a ramp towards the end. Recency,
frequency and the static attributes therefore all carry signal about next week's orders.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from features.db import DatabaseError, check_connection, is_sqlite, make_engine, redact
from features.demo import tables
from features.schema import BY_NAME

ENTITIES_PER_SCALE = 20_000  # loader contract: entities per unit of --scale
COUNTRIES, DEVICES, CHANNELS = (BY_NAME[n].values for n in ("country", "device", "channel"))
DAYS = 150

_COUNTRY_P = (0.35, 0.12, 0.12, 0.10, 0.11, 0.12, 0.08)
_COUNTRY_EFFECT = (0.25, 0.15, 0.1, 0.0, -0.35, -0.45, -0.2)
_DEVICE_P = (0.35, 0.40, 0.25)
_DEVICE_EFFECT = (0.35, -0.25, 0.2)
_CHANNEL_P = (0.35, 0.25, 0.20, 0.12, 0.08)
_CHANNEL_EFFECT = (0.1, 0.25, -0.45, 0.5, 0.35)


@dataclass
class DemoData:
    """The three tables as DataFrames (naive UTC timestamps)."""

    users: pd.DataFrame
    events: pd.DataFrame
    orders: pd.DataFrame


def default_end() -> datetime:
    """Today at midnight UTC, naive: the demo data ends where 'now' begins."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def generate(scale: float = 1.0, seed: int = 42, end: datetime | None = None) -> DemoData:
    """Simulate the app: ~20k users and ~1M events per unit of scale over 150 days before `end`."""
    end = end or default_end()
    start = end - timedelta(days=DAYS)
    rng = np.random.default_rng(seed)
    n = max(int(ENTITIES_PER_SCALE * scale), 10)

    country = rng.choice(len(COUNTRIES), n, p=_COUNTRY_P)
    device = rng.choice(len(DEVICES), n, p=_DEVICE_P)
    channel = rng.choice(len(CHANNELS), n, p=_CHANNEL_P)
    intent = (
        np.take(_COUNTRY_EFFECT, country)
        + np.take(_DEVICE_EFFECT, device)
        + np.take(_CHANNEL_EFFECT, channel)
        + rng.normal(0, 0.7, n)
    )
    activity = np.exp(rng.normal(-0.38, 0.8, n) + 0.35 * intent)

    # 40% signed up before the window, the rest during it (day index may be negative).
    signup_day = np.where(
        rng.random(n) < 0.4, -rng.uniform(1, 365, n), rng.uniform(0, DAYS - 1, n)
    )
    lifetime = rng.exponential(120, n) * np.exp(0.3 * intent)
    churn_day = signup_day + lifetime

    day = np.arange(DAYS)
    cycle = 1 + 0.25 * np.sin(2 * np.pi * (DAYS - day) / 7)  # weekly rhythm, anchored at `end`
    ramp = 1 + 0.3 * np.clip((day - (DAYS - 28)) / 28, 0, 1)  # a seasonal push at the end
    alive = (day[None, :] >= signup_day[:, None]) & (day[None, :] < churn_day[:, None])
    signed_up = day[None, :] >= np.floor(signup_day)[:, None]
    lam = activity[:, None] * (cycle * ramp)[None, :] * np.where(alive, 1.0, 0.06) * signed_up
    counts = rng.poisson(lam).astype(np.int32)

    cart_p = 1 / (1 + np.exp(-(-2.4 + 0.6 * intent)))
    carts = rng.binomial(counts, cart_p[:, None])
    searches = rng.binomial(counts - carts, 0.25)
    views = counts - carts - searches

    # Orders: intent times (a trickle + recent carts), carts of the last 3 days count.
    recent_carts = carts.astype(float).copy()
    recent_carts[:, 1:] += 0.6 * carts[:, :-1]
    recent_carts[:, 2:] += 0.3 * carts[:, :-2]
    order_rate = np.exp(intent - 1.2)[:, None] * (0.003 * alive + 0.25 * recent_carts) * signed_up
    n_orders = np.minimum(rng.poisson(np.clip(order_rate, 0, 3)), 2)

    user_ids = np.array([f"u{i:06d}" for i in range(n)], dtype=object)
    signup_at = start + pd.to_timedelta(signup_day, unit="D")
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "signup_at": pd.Series(signup_at).dt.floor("s").astype("datetime64[us]"),
            "country": np.take(COUNTRIES, country),
            "device": np.take(DEVICES, device),
            "channel": np.take(CHANNELS, channel),
        }
    )

    def explode(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = matrix.ravel()
        cells = np.repeat(np.arange(flat.size), flat)
        return cells // DAYS, cells % DAYS

    def stamps(u_idx: np.ndarray, d_idx: np.ndarray) -> np.ndarray:
        # Uniform within the day, never before signup.
        lo = np.maximum(d_idx, signup_day[u_idx])
        offset = lo + rng.random(u_idx.size) * (d_idx + 1 - lo)
        secs = np.floor(offset * 86400).astype("int64")
        return np.datetime64(start, "s") + secs.astype("timedelta64[s]")

    parts = []
    for kind, matrix in (("view", views), ("search", searches), ("cart", carts)):
        u_idx, d_idx = explode(matrix)
        parts.append(pd.DataFrame({"u": u_idx, "ts": stamps(u_idx, d_idx), "kind": kind}))
    ev = pd.concat(parts, ignore_index=True).sort_values(["ts", "u"], kind="stable")
    events = pd.DataFrame(
        {
            "event_id": np.arange(1, len(ev) + 1, dtype="int64"),
            "user_id": user_ids[ev["u"].to_numpy()],
            "ts": ev["ts"].to_numpy().astype("datetime64[us]"),
            "kind": ev["kind"].to_numpy(),
        }
    )

    u_idx, d_idx = explode(n_orders)
    ts = stamps(u_idx, d_idx)
    order = np.lexsort((u_idx, ts))
    u_idx, ts = u_idx[order], ts[order]
    amount = np.round(np.exp(rng.normal(3.6 + 0.1 * intent[u_idx], 0.6)), 2)
    orders = pd.DataFrame(
        {
            "order_id": np.arange(1, len(u_idx) + 1, dtype="int64"),
            "user_id": user_ids[u_idx],
            "ts": ts.astype("datetime64[us]"),
            "amount": amount,
        }
    )
    return DemoData(users, events, orders)


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per app table; tables that do not exist count as 0."""
    counts = {}
    with engine.connect() as conn:
        for table in tables.APP_TABLES:
            if engine.dialect.has_table(conn, table.name):
                counts[table.name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
            else:
                counts[table.name] = 0
    return counts


def load(engine: Engine, data: DemoData) -> None:
    """Replace the app tables with `data` in one transaction (COPY on Postgres)."""
    frames = {"users": data.users, "events": data.events, "orders": data.orders}
    with engine.begin() as conn:
        tables.metadata.drop_all(conn, tables=list(tables.APP_TABLES))
        # Create without indexes, bulk-load, then index: several times faster.
        for table in tables.APP_TABLES:
            indexes = set(table.indexes)
            table.indexes.clear()
            try:
                table.create(conn)
            finally:
                table.indexes.update(indexes)
        raw = conn.connection.driver_connection
        for table in tables.APP_TABLES:
            frame = frames[table.name][[c.name for c in table.columns]]
            if is_sqlite(engine):
                _load_sqlite(raw, table.name, frame)
            else:
                _load_postgres(raw, table.name, frame)
        for table in tables.APP_TABLES:
            for index in table.indexes:
                index.create(conn)
    # Fresh statistics (and, on Postgres, a visibility map, without which the covering index of
    # the one-user feature query cannot be read index-only: ~0.96 ms -> ~0.31 ms per user).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables.APP_TABLES:
            conn.exec_driver_sql(f"ANALYZE {table.name}" if is_sqlite(engine) else f"VACUUM ANALYZE {table.name}")


def _ts_text(series: pd.Series) -> np.ndarray:
    text = np.datetime_as_string(series.to_numpy().astype("datetime64[us]"), unit="us")
    return np.char.replace(text.astype(str), "T", " ")


def _load_sqlite(raw, name: str, frame: pd.DataFrame) -> None:
    columns = [
        _ts_text(frame[c]).tolist() if pd.api.types.is_datetime64_any_dtype(frame[c]) else frame[c].tolist()
        for c in frame.columns
    ]
    marks = ", ".join("?" * len(frame.columns))
    raw.executemany(f"INSERT INTO {name} ({', '.join(frame.columns)}) VALUES ({marks})", zip(*columns, strict=True))


def _load_postgres(raw, name: str, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f")
    with raw.cursor() as cur, cur.copy(f"COPY {name} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
        copy.write(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 20k users, ~1M events")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end", type=datetime.fromisoformat, default=None,
                        help="end of the data (UTC date); default: today at 00:00 UTC")
    parser.add_argument("--replace", action="store_true", help="reseed even if the database has data")
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")

    from stack.settings import get_settings

    url = args.database_url or get_settings().database_url
    try:
        engine = make_engine(url)
        check_connection(engine)
        existing = row_counts(engine)
        if existing["users"] and not args.replace:
            print(f"seed: {redact(url)} already has {existing['users']:,} users and "
                  f"{existing['events']:,} events; nothing to do (--replace to reseed)")
            return 0
        t0 = time.perf_counter()
        data = generate(args.scale, args.seed, args.end)
        t1 = time.perf_counter()
        print(f"seed: generated {len(data.users):,} users, {len(data.events):,} events, "
              f"{len(data.orders):,} orders in {t1 - t0:.1f}s", flush=True)
        load(engine, data)
        t2 = time.perf_counter()
    except DatabaseError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    print(f"seed: loaded into {redact(url)} in {t2 - t1:.1f}s (total {t2 - t0:.1f}s)")
    return 0


def record_outcomes(engine: Engine, outcomes: list[tuple[str, datetime]]) -> int:
    """Write simulated outcomes (spec.yml `outcome`: an order per (user, time)); how many.

    Loader contract: `make ab-demo` and the A/B tests plant outcomes through this, so they work
    for whatever domain the spec describes.
    """
    if not outcomes:
        return 0
    orders = tables.orders
    with engine.begin() as conn:
        next_id = (conn.execute(select(func.max(orders.c.order_id))).scalar() or 0) + 1
        amounts = np.round(np.random.default_rng(len(outcomes)).lognormal(3.5, 0.6, len(outcomes)), 2)
        conn.execute(orders.insert(), [
            {"order_id": next_id + i, "user_id": key, "ts": ts, "amount": float(amount)}
            for i, ((key, ts), amount) in enumerate(zip(outcomes, amounts, strict=True))])
    return len(outcomes)


def create_tables(engine: Engine) -> None:
    """The app's tables, empty (loader contract: tests that write their own rows)."""
    tables.metadata.create_all(engine)


def describe(data: DemoData) -> str:
    """One line about generated data (loader contract), e.g. for make ab-demo's progress."""
    return (f"{len(data.users):,} users, {len(data.events):,} events, {len(data.orders):,} orders "
            f"(until {data.events['ts'].max():%Y-%m-%d})")
