"""Feature builders: the training frame (many as_of dates) and one user's row (now).

Both run the same SQL files and the same pandas transforms, so a feature has one definition.
Timestamps are naive UTC datetimes; windows are computed here and bound as parameters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection, DateTime, Engine, TextClause, bindparam, func, select, text

from features import tables
from features.schema import BY_NAME, CATEGORICAL, FEATURE_NAMES, LABEL, LABEL_HORIZON_DAYS

SQL_DIR = Path(__file__).parent / "sql"
FEATURE_SQL = ("profile", "activity", "orders")
_DATETIME_PARAMS = {"as_of", "since_7d", "since_30d", "since_90d", "label_end"}
_DAY = np.timedelta64(1, "D")


class EmptyDataError(RuntimeError):
    """There is nothing to build features from."""


@cache
def sql(name: str) -> TextClause:
    """The statement in features/sql/<name>.sql, with datetime parameters typed."""
    # Comments are for people; drop them so a ":name" in prose is not taken for a parameter.
    body = re.sub(r"--[^\n]*", "", (SQL_DIR / f"{name}.sql").read_text()).strip()
    names = set(re.findall(r"(?<!:):(\w+)", body))
    return text(body).bindparams(
        *(bindparam(p, type_=DateTime()) for p in sorted(names & _DATETIME_PARAMS))
    )


def window_params(as_of: datetime) -> dict[str, datetime]:
    """Window starts for `as_of`, computed in Python so the SQL needs no date functions."""
    return {
        "as_of": as_of,
        "since_7d": as_of - timedelta(days=7),
        "since_30d": as_of - timedelta(days=30),
        "since_90d": as_of - timedelta(days=90),
        "label_end": as_of + timedelta(days=LABEL_HORIZON_DAYS),
    }


def _query(conn: Connection, name: str, params: dict) -> pd.DataFrame:
    statement = sql(name)
    wanted = {k: v for k, v in params.items() if k in statement._bindparams}
    result = conn.execute(statement, wanted)
    return pd.DataFrame.from_records(result.fetchall(), columns=list(result.keys()))


def _to_datetime(values: pd.Series) -> pd.Series:
    # SQLite hands back text, Postgres datetimes: one dtype either way.
    return pd.to_datetime(values, format="ISO8601").astype("datetime64[us]")


def _rows_at(conn: Connection, as_of: datetime, first_user: str, last_user: str) -> pd.DataFrame:
    """Raw SQL results for users in [first_user, last_user] as of `as_of`, joined on user_id."""
    params = {**window_params(as_of), "first_user": first_user, "last_user": last_user}
    frame = _query(conn, "profile", params)
    for name in FEATURE_SQL[1:]:
        frame = frame.merge(_query(conn, name, params), on="user_id", how="left")
    return frame


def transform(raw: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """SQL results -> model features in schema order: the pandas half of every definition.

    Values only; `apply_dtypes` adds the schema's dtypes for the training frame (the online
    path hands plain values to the server's encoder and skips that cost). Columns are built as
    arrays and framed once: per-column assignment costs milliseconds for a one-user frame.
    """
    as_of64 = np.datetime64(as_of, "us")

    def days_since(column: str) -> np.ndarray:
        return (as_of64 - _to_datetime(raw[column]).to_numpy()) / _DAY

    def count(column: str) -> np.ndarray:
        return pd.to_numeric(raw[column]).fillna(0).to_numpy(dtype="float64")

    columns = {
        "country": raw["country"].to_numpy(),
        "device": raw["device"].to_numpy(),
        "channel": raw["channel"].to_numpy(),
        "account_age_days": days_since("signup_at"),
        **{c: count(c) for c in ("events_7d", "events_30d", "views_7d", "searches_7d", "carts_7d",
                                 "carts_30d", "orders_30d", "orders_90d")},
        "amount_90d": np.round(count("amount_90d"), 2),
        "days_since_last_event": days_since("last_event_at"),
        "days_since_last_order": days_since("last_order_at"),
    }
    index = pd.Index(raw["user_id"].astype(str).to_numpy(), name="user_id")
    return pd.DataFrame({name: columns[name] for name in FEATURE_NAMES}, index=index)


def apply_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric features as float64, categoricals as pandas categories in schema order."""
    frame = frame.copy()
    for name in FEATURE_NAMES:
        feature = BY_NAME[name]
        if feature.kind == "categorical":
            frame[name] = pd.Categorical(frame[name].astype(object), categories=list(feature.values))
        else:
            frame[name] = frame[name].astype("float64")
    return frame


def user_bounds(conn: Connection) -> tuple[str, str]:
    """Smallest and largest user id (so BETWEEN covers everyone under any collation)."""
    lo, hi = conn.execute(select(func.min(tables.ENTITY_ID), func.max(tables.ENTITY_ID))).one()
    if lo is None:
        raise EmptyDataError("the users table is empty: run `make seed` (python -m features.demo) first")
    return lo, hi


def require_app_tables(conn: Connection) -> None:
    """EmptyDataError unless the demo app's tables exist."""
    missing = [t.name for t in tables.APP_TABLES if not conn.dialect.has_table(conn, t.name)]
    if missing:
        raise EmptyDataError(f"the database has no {', '.join(missing)} table(s): run `make seed` "
                             "(python -m features.demo) or point DATABASE_URL at the app database")


def data_end(engine: Engine) -> datetime:
    """Midnight after the newest event or order: the end of the observed data."""
    with engine.connect() as conn:
        require_app_tables(conn)
        newest = [conn.execute(select(func.max(c))).scalar() for c in tables.EVENT_TIMES]
    newest = [pd.Timestamp(v).to_pydatetime() for v in newest if v is not None]
    if not newest:
        raise EmptyDataError("there are no events or orders: run `make seed` first")
    last = max(newest)
    return last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def training_as_of_dates(engine: Engine, count: int = 8, step_days: int = 7) -> list[datetime]:
    """Weekly as_of dates, newest first, whose label windows are complete."""
    newest = data_end(engine) - timedelta(days=LABEL_HORIZON_DAYS)
    return [newest - timedelta(days=step_days * k) for k in range(count)]


def build_training_frame(
    engine: Engine, as_of_dates: Iterable[datetime], progress=None
) -> pd.DataFrame:
    """Features and label for every user signed up before each as_of, stacked oldest first.

    Columns: as_of, user_id, the schema's features, and the label `will_order_7d` (0/1).
    """
    parts = []
    with engine.connect() as conn:
        first, last = user_bounds(conn)
        for as_of in sorted(as_of_dates):
            t0 = time.perf_counter()
            raw = _rows_at(conn, as_of, first, last)
            features = apply_dtypes(transform(raw, as_of))
            params = {**window_params(as_of), "first_user": first, "last_user": last}
            labels = _query(conn, "label", params).set_index("user_id").iloc[:, 0]  # the count, whatever its name
            frame = features.reset_index()
            frame.insert(0, "as_of", np.datetime64(as_of, "us"))
            frame[LABEL] = (
                frame["user_id"].map(pd.to_numeric(labels)).fillna(0).gt(0).astype("int64")
            )
            parts.append(frame)
            if progress:
                progress(f"as_of {as_of:%Y-%m-%d}: {len(frame):,} users, "
                         f"{frame[LABEL].mean():.1%} positive, {time.perf_counter() - t0:.1f}s")
    if not parts or sum(len(p) for p in parts) == 0:
        raise EmptyDataError("no users had signed up before the requested as_of dates")
    frame = pd.concat(parts, ignore_index=True)
    frame["user_id"] = frame["user_id"].astype(object)
    for name in CATEGORICAL:  # concat keeps categories equal, but be explicit
        frame[name] = pd.Categorical(frame[name], categories=list(BY_NAME[name].values))
    return frame


def build_online(conn: Connection, user_id: str, as_of: datetime) -> dict | None:
    """One user's features as of `as_of` (typically now), or None if no such user then."""
    raw = _rows_at(conn, as_of, user_id, user_id)
    if raw.empty:
        return None
    row = transform(raw, as_of).iloc[0]
    return {name: _plain(row[name]) for name in FEATURE_NAMES}


def _plain(value):
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    return None if pd.isna(value) else str(value)


def feature_rows(frame: pd.DataFrame, columns: Sequence[str] = FEATURE_NAMES) -> list[dict]:
    """Frame rows as request-shaped dicts (None for missing), e.g. for self-check rows."""
    return [{c: _plain(v) for c, v in zip(columns, row, strict=True)}
            for row in frame[list(columns)].itertuples(index=False)]
