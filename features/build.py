"""Feature builders: the training frame (many as_of dates) and one entity's row (now).

Both run the SQL files spec.yml lists and the derivations it declares (features/derive.py),
so a feature has one definition. Timestamps are naive UTC datetimes; the windows are computed
here from the spec and bound as parameters.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cache

import numpy as np
import pandas as pd
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    TextClause,
    bindparam,
    column,
    func,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError

from features.codec import CODEC
from features.db import first_line
from features.derive import TRANSFORM, to_naive_utc
from features.schema import FEATURE_NAMES, KEY, LABEL
from features.spec import SPEC, SQL_DIR


class EmptyDataError(RuntimeError):
    """There is nothing to build features from."""


class FeatureSQLError(RuntimeError):
    """A feature SQL file failed; the message names the file and the database's reason."""


def _body(name: str) -> str:
    # Comments are for people; drop them so a ":name" in prose is not taken for a parameter.
    return re.sub(r"--[^\n]*", "", (SQL_DIR / f"{name}.sql").read_text()).strip().rstrip(";").strip()


def _typed(body: str) -> TextClause:
    names = set(re.findall(r"(?<!:):(\w+)", body))
    return text(body).bindparams(
        *(bindparam(p, type_=DateTime()) for p in sorted(names & SPEC.datetime_params))
    )


@cache
def sql(name: str) -> TextClause:
    """The statement in features/sql/<name>.sql, with datetime parameters typed."""
    return _typed(_body(name))


ONLINE_SQL_NAME = "the online statement (features/sql/" + " LEFT JOIN ".join(f"{n}.sql" for n in SPEC.sql) + ")"


@cache
def online_sql() -> TextClause:
    """spec.yml's feature SQL files as one statement: the spine LEFT JOIN each other file USING (key).

    One round trip (and one snapshot) per online request. USING makes both databases return the
    key once; each file keeps its own `BETWEEN :first_key AND :last_key`, so each part is planned on
    its (key, ts) index as it is alone (tests/features/test_online_sql.py reads the plans).
    """
    spine, *others = SPEC.sql
    # positional aliases: a file's name need not be an SQL identifier
    joins = "".join(f"\nLEFT JOIN (\n{_body(name)}\n) AS part{i} USING ({KEY})"
                    for i, name in enumerate(others, 1))
    return _typed(f"SELECT * FROM (\n{_body(spine)}\n) AS part0{joins}")


@cache
def parameter_names(statement: TextClause) -> frozenset[str]:
    """The bound parameters a statement takes (SQLAlchemy's public compile(), once per statement)."""
    return frozenset(statement.compile().params)


def window_params(as_of: datetime) -> dict[str, datetime]:
    """Window starts for `as_of` (spec.yml `windows`), computed in Python: no date math in SQL."""
    return SPEC.window_params(as_of)


def _execute(conn: Connection, name: str, params: dict, *, statement: TextClause | None = None):
    """Run features/sql/<name>.sql with `params`; or `statement`, which `name` then describes."""
    what = f"features/sql/{name}.sql" if statement is None else name
    statement = sql(name) if statement is None else statement
    names = parameter_names(statement)
    unknown = names - set(params)
    if unknown:
        raise FeatureSQLError(
            f"{what} uses parameter(s) {sorted(':' + p for p in unknown)} that do not "
            f"exist; available: {sorted(':' + p for p in params)} (windows come from spec.yml `windows`)")
    try:
        return conn.execute(statement, {k: v for k, v in params.items() if k in names})
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        hint = (" Time arithmetic: use date_part('epoch', ts), which works on both databases "
                "(features/README.md)." if "function" in reason.lower() else "")
        raise FeatureSQLError(f"{what} failed on {conn.dialect.name}: {reason}.{hint}") from None


def _query(conn: Connection, name: str, params: dict) -> pd.DataFrame:
    result = _execute(conn, name, params)
    # plain tuples: pandas probes each SQLAlchemy Row for attributes it lacks, 10x the cost
    frame = pd.DataFrame.from_records(list(map(tuple, result.fetchall())), columns=list(result.keys()))
    if KEY not in frame.columns:
        raise FeatureSQLError(f"features/sql/{name}.sql returns no {KEY!r} column (spec.yml entity.key); "
                              f"alias the key: SELECT t.my_id AS {KEY}, ...")
    return frame


def _rows_at(conn: Connection, as_of: datetime, first_key, last_key) -> pd.DataFrame:
    """Raw SQL results for keys in [first_key, last_key] as of `as_of`, joined on the key."""
    params = {**window_params(as_of), "first_key": first_key, "last_key": last_key}
    frame = _query(conn, SPEC.sql[0], params)
    for name in SPEC.sql[1:]:
        frame = frame.merge(_query(conn, name, params), on=KEY, how="left")
    return frame


def transform(raw: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """SQL results -> model features in schema order, indexed by the key (values, not dtypes)."""
    columns = TRANSFORM.frame(raw, as_of)
    index = pd.Index(raw[KEY].to_numpy(), name=KEY)
    return pd.DataFrame({name: columns[name] for name in FEATURE_NAMES}, index=index)


def apply_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric features as float64, categoricals as pandas categories in schema order."""
    return CODEC.with_dtypes(frame)


def key_bounds(conn: Connection) -> tuple:
    """Smallest and largest key (so BETWEEN covers every entity under any collation)."""
    key = column(SPEC.entity.key)
    lo, hi = conn.execute(select(func.min(key), func.max(key)).select_from(table(SPEC.entity.table))).one()
    if lo is None:
        raise EmptyDataError(f"the {SPEC.entity.table} table is empty: run `make seed` "
                             f"(python -m {SPEC.loader}) first")
    return lo, hi


def require_app_tables(conn: Connection) -> None:
    """EmptyDataError unless the tables spec.yml reads from exist."""
    names = [SPEC.entity.table, *(t for t, _ in SPEC.data_end_columns())]
    missing = [t for t in dict.fromkeys(names) if not conn.dialect.has_table(conn, t)]
    if missing:
        raise EmptyDataError(f"the database has no {', '.join(missing)} table(s): run `make seed` "
                             f"(python -m {SPEC.loader}) or point DATABASE_URL at the app database")


def data_end(engine: Engine) -> datetime:
    """Midnight after the newest timestamp of spec.yml's `data_end` columns."""
    with engine.connect() as conn:
        require_app_tables(conn)
        newest = [conn.execute(select(func.max(column(c))).select_from(table(t))).scalar()
                  for t, c in SPEC.data_end_columns()]
    newest = [to_naive_utc(v) for v in newest if v is not None]
    if not newest:
        raise EmptyDataError(f"{', '.join(SPEC.data_end)} hold no rows: run `make seed` first")
    last = max(newest)
    return last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def training_as_of_dates(engine: Engine, count: int | None = None, step_days: int | None = None) -> list[datetime]:
    """as_of dates every step_days (spec.yml `training`), newest first, whose label windows are complete."""
    count = count or SPEC.training.as_of_count
    step = step_days or SPEC.training.step_days
    newest = data_end(engine) - SPEC.label.horizon
    return [newest - timedelta(days=step * k) for k in range(count)]


def labels_at(conn: Connection, as_of: datetime, keys: pd.Series, first_key, last_key) -> np.ndarray:
    """The label (0/1) of each key as of `as_of`: label.sql's count through spec.yml's rule."""
    params = {**window_params(as_of), "first_key": first_key, "last_key": last_key}
    counts = _query(conn, SPEC.label.sql, params)
    if counts.shape[1] != 2:
        raise FeatureSQLError(f"features/sql/{SPEC.label.sql}.sql must return {KEY!r} and one count, "
                              f"got columns {list(counts.columns)}")
    by_key = pd.to_numeric(counts.set_index(KEY).iloc[:, 0])
    return SPEC.label.from_counts(keys.map(by_key)).to_numpy()


def build_training_frame(
    engine: Engine, as_of_dates: Iterable[datetime], progress=None
) -> pd.DataFrame:
    """Features and label for every entity the spine returns at each as_of, stacked oldest first.

    Columns: as_of, the key (in its type), the schema's features, and the label (0/1).
    """
    parts = []
    with engine.connect() as conn:
        first, last = key_bounds(conn)
        for as_of in sorted(as_of_dates):
            t0 = time.perf_counter()
            raw = _rows_at(conn, as_of, first, last)
            features = apply_dtypes(transform(raw, as_of))
            frame = features.reset_index()
            frame.insert(0, "as_of", np.datetime64(as_of, "us"))
            frame[LABEL] = labels_at(conn, as_of, frame[KEY], first, last)
            parts.append(frame)
            if progress:
                progress(f"as_of {as_of:%Y-%m-%d}: {len(frame):,} {SPEC.entity.name}s, "
                         f"{frame[LABEL].mean() if len(frame) else 0:.1%} positive, {time.perf_counter() - t0:.1f}s")
    if not parts or sum(len(p) for p in parts) == 0:
        raise EmptyDataError(f"no {SPEC.entity.name} existed before the requested as_of dates")
    frame = pd.concat(parts, ignore_index=True)
    if SPEC.entity.type == "integer":
        frame[KEY] = frame[KEY].astype("int64")
    else:
        frame[KEY] = frame[KEY].astype(object)
    return CODEC.with_dtypes(frame)


class _OnlineStatement:
    """online_sql() compiled once for one dialect and run on the driver's cursor.

    For one entity's indexed rows, SQLAlchemy's per-execute work (cache lookup, a bind processor
    per occurrence of each datetime, result metadata rebuilt from the cursor) costs as much as the
    SQL itself. The statement never changes, so it is compiled once; each call converts the few
    values and reads one row. `make bench` measures it (in-process online features).
    """

    def __init__(self, dialect) -> None:
        compiled = online_sql().compile(dialect=dialect)
        self.string = compiled.string
        self.order = compiled.positiontup  # positional paramstyles (SQLite's qmark); None for named
        self.names = frozenset(compiled.binds)
        available = {*window_params(datetime(2000, 1, 1)), "first_key", "last_key"}
        if self.names - available:
            raise FeatureSQLError(
                f"{ONLINE_SQL_NAME} uses parameter(s) {sorted(':' + p for p in self.names - available)} that "
                f"do not exist; available: {sorted(':' + p for p in available)} (windows come from spec.yml `windows`)")
        # None where the driver adapts datetimes itself (psycopg); SQLite stores them as text.
        self.to_db = DateTime().dialect_impl(dialect).bind_processor(dialect)
        # The result's column names, read once: psycopg builds a Column object per column each time
        # `description` is read, a third of the statement's CPU in the worker. The statement's text
        # never changes, so neither do its names.
        self.columns: tuple[str, ...] = ()

    def args(self, key, as_of: datetime) -> dict | list:
        """The statement's parameters for `key` as of `as_of`, in the driver's paramstyle."""
        params = {name: value for name, value in window_params(as_of).items() if name in self.names}
        if self.to_db is not None:
            params = {name: self.to_db(value) for name, value in params.items()}
        params["first_key"] = params["last_key"] = key
        return params if self.order is None else [params[name] for name in self.order]

    def named(self, cursor, values) -> dict | None:
        """The fetched row as {column: value}; None for no row."""
        if values is None:
            return None
        names = self.columns
        if len(names) != len(values):  # first call (or the tables' columns changed under it)
            names = self.columns = tuple(d[0] for d in cursor.description)
        return dict(zip(names, values, strict=True))

    async def row_async(self, conn, key, as_of: datetime) -> dict | None:
        """row() on a psycopg AsyncConnection (the server's Postgres reads on its event loop); the
        driver's errors are the caller's to sort (a dropped connection is retried there)."""
        async with conn.cursor() as cursor:
            await cursor.execute(self.string, self.args(key, as_of))
            return self.named(cursor, await cursor.fetchone())

    def row(self, conn: Connection, key, as_of: datetime) -> dict | None:
        args = self.args(key, as_of)
        for attempt in (1, 2):
            dbapi_conn = conn.connection.dbapi_connection
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(self.string, args)
                return self.named(cursor, cursor.fetchone())
            except conn.dialect.dbapi.Error as exc:
                reason = first_line(exc)
                if not conn.dialect.is_disconnect(exc, dbapi_conn, cursor):
                    raise FeatureSQLError(f"{ONLINE_SQL_NAME} failed on {conn.dialect.name}: {reason}") from None
                # The database restarted or dropped us: its other pooled connections are gone too
                # (replace the pool), and this request tries once more on a fresh connection.
                conn.invalidate()
                conn.engine.dispose(close=False)
                if attempt == 2:
                    raise FeatureSQLError(f"{ONLINE_SQL_NAME}: lost the connection to "
                                          f"{conn.dialect.name} twice: {reason}") from None
            finally:
                cursor.close()
        raise AssertionError("unreachable")


_online_statements: dict[tuple[str, str], _OnlineStatement] = {}


def online_statement(dialect) -> _OnlineStatement:
    """online_sql() compiled for `dialect`, once per process."""
    statement = _online_statements.get((dialect.name, dialect.driver))
    if statement is None:
        statement = _online_statements[(dialect.name, dialect.driver)] = _OnlineStatement(dialect)
    return statement


def online_row(conn: Connection, key, as_of: datetime) -> dict | None:
    """The joined SQL row of one entity as of `as_of`, or None if the spine has no such entity.

    One statement, one round trip: the files training runs, joined in SQL (online_sql()).
    """
    return online_statement(conn.dialect).row(conn, key, as_of)


def build_online(conn: Connection, key, as_of: datetime) -> dict | None:
    """One entity's features as of `as_of` (typically now), or None if no such entity then."""
    raw = online_row(conn, key, as_of)
    return None if raw is None else TRANSFORM.row(raw, as_of)


def _plain(value):
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    return None if pd.isna(value) else str(value)


def feature_rows(frame: pd.DataFrame, columns: Sequence[str] = FEATURE_NAMES) -> list[dict]:
    """Frame rows as request-shaped dicts (None for missing), e.g. for self-check rows."""
    return [{c: _plain(v) for c, v in zip(columns, row, strict=True)}
            for row in frame[list(columns)].itertuples(index=False)]


def same_value(a, b) -> bool:
    """Batch and online agree on one value (floats to 1e-9: SQL may sum in another order)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def parity(engine: Engine, as_of: datetime, sample: int = 200, seed: int = 0) -> tuple[int, list[str]]:
    """Sample entities and compare `build_online` with `build_training_frame` at `as_of`.

    Returns (entities compared, one line per entity whose features differ). The audit and the
    tests use this one check; an empty list means online == batch.
    """
    frame = build_training_frame(engine, [as_of])
    picked = frame.sample(n=min(sample, len(frame)), random_state=seed)
    mismatches = []
    with engine.connect() as conn:
        for key, offline in zip(picked[KEY].tolist(), feature_rows(picked), strict=True):
            online = build_online(conn, key, as_of) or {}
            differ = [name for name in offline if not same_value(offline[name], online.get(name))]
            if differ:
                name = differ[0]
                mismatches.append(f"{key}.{name}: batch {offline[name]!r}, online {online.get(name)!r}")
    return len(picked), mismatches
