"""Connections to the app database named by DATABASE_URL (SQLite file or Postgres)."""

from __future__ import annotations

import math
import os
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError

from stack.settings import SUPPORTED_DATABASE_SCHEMES

# SQLAlchemy stores DateTime on SQLite as this text; bulk loads write the same format so that
# string comparisons against bound datetime parameters are exact (an event at as_of is not < as_of).
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says which and what to do."""


def first_line(exc: BaseException) -> str:
    """An exception's message in one line for a log or an answer: its first line, else its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 30.0,
    connect_timeout: int = 5,
    statement_timeout: float | None = None,
    autocommit: bool = False,
    pre_ping: bool = True,
    create: bool = True,
    generic_plans: bool = False,
) -> Engine:
    """An Engine for `url`; raises DatabaseError for unknown schemes or bad URLs.

    The defaults suit jobs (training, seeding): no statement timeout. A server passes bounds so
    that a hung database costs a request a bounded time: `pool_timeout` (seconds to wait for a
    pooled connection), `statement_timeout` (seconds; Postgres cancels the statement; on SQLite
    it bounds a checkout: the busy timeout and a progress handler that interrupts the work),
    `autocommit` (reads without BEGIN/ROLLBACK round trips) and `pre_ping=False` (no SELECT 1 per
    checkout; a dropped connection is noticed by the statement that meets it).

    `generic_plans` (Postgres; the server's one-entity statement): a prepared statement is planned
    once per connection, not at every execution. psycopg prepares a statement from its 5th run on a
    connection; Postgres then keeps re-planning it for each key, because a range on unknown keys
    looks costly to the generic plan, and that planning cost the database ~3x the execution
    (0.5 -> 0.17 ms of backend CPU per entity on the demo data). The plan is the same index plan
    (tests/features/test_online_sql.py reads it).

    SQLite files: `create=False` (the server, training, the log writers) never creates a missing
    file: a connection raises DatabaseError naming the path and `make seed` (only the seeder and
    tests create one). A pooled connection whose file was replaced (moved away, a new seed renamed
    over it) is dropped at its next checkout and reopened on the file now at the path.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            f"DATABASE_URL {url!r} is not a database URL; expected sqlite:///var/app.db "
            "or postgresql+psycopg://user:pass@host:5432/db"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in SUPPORTED_DATABASE_SCHEMES:
        raise DatabaseError(
            f"DATABASE_URL scheme {parsed.drivername!r} is not supported; use sqlite:/// or "
            "postgresql+psycopg://"
        )
    if statement_timeout is not None and statement_timeout <= 0:
        raise ValueError(f"statement_timeout must be a positive number of seconds, got {statement_timeout!r}")
    options: dict = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    try:
        if parsed.get_backend_name() == "sqlite":
            file = parsed.database if parsed.database and parsed.database != ":memory:" \
                and not parsed.database.startswith("file:") else None
            if file:
                if create:
                    Path(file).parent.mkdir(parents=True, exist_ok=True)
                options.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout)
            busy = 30.0 if statement_timeout is None else statement_timeout
            engine = create_engine(parsed, connect_args={"timeout": busy}, **options)
            if file:
                _sqlite_file_checks(engine, Path(file), create)
            event.listen(engine, "connect", _sqlite_pragmas)
            if statement_timeout is not None:
                _sqlite_time_limit(engine, statement_timeout)
            return engine
        connect_args = postgres_connect_args(connect_timeout, statement_timeout, generic_plans)
        return create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=pre_ping,
            connect_args=connect_args,
            **options,
        )
    except NoSuchModuleError:
        raise DatabaseError(f"no driver for DATABASE_URL scheme {parsed.drivername!r}") from None


def postgres_connect_args(connect_timeout: int, statement_timeout: float | None = None,
                          generic_plans: bool = False) -> dict:
    """psycopg connect() keywords for make_engine's bounds (see there); also the server's own
    connections on its event loop (serve/online.py)."""
    connect_args: dict = {"connect_timeout": connect_timeout}
    settings = []
    if statement_timeout is not None:
        settings.append(f"-c statement_timeout={max(1, round(statement_timeout * 1000))}")
    if generic_plans:
        settings.append("-c plan_cache_mode=force_generic_plan")
    if settings:
        connect_args["options"] = " ".join(settings)
    return connect_args


def missing_sqlite_message(path: Path) -> str:
    return (f"the SQLite database {path} does not exist; create it with `make seed` "
            "(or point DATABASE_URL at the right file)")


def _sqlite_file_checks(engine: Engine, path: Path, create: bool) -> None:
    """Refuse to create a missing file (create=False); reopen connections whose file was replaced."""

    def identity() -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    if not create:
        @event.listens_for(engine, "do_connect")
        def _must_exist(_dialect, _record, cargs, cparams):
            if identity() is None:
                raise DatabaseError(missing_sqlite_message(path))
            # mode=rw: a file removed between the check and the open is an error, not a new empty file
            cargs[:] = [f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rw"]
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _remember(_dbapi_conn, record) -> None:
        record.info["sqlite_file"] = identity()

    @event.listens_for(engine, "checkout")
    def _same_file(_dbapi_conn, record, _proxy) -> None:
        # one stat() per checkout (~1 us): a connection keeps reading the file it opened, so a
        # replaced database would otherwise be served stale until the worker restarts
        if record.info.get("sqlite_file") != identity():
            raise DisconnectionError(f"{path} was replaced or removed")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the server read while the trainer or seeder writes.
    dbapi_conn.create_function("date_part", 2, date_part, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Read pages through a memory map instead of a read() per page (online: tens of us a query).
    cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cur.close()


SQLITE_MMAP_BYTES = 1 << 30
_PROGRESS_EVERY = 1000  # SQLite VM steps between checks of the deadline (a few us each)


def _sqlite_time_limit(engine: Engine, seconds: float) -> None:
    """Interrupt SQLite work that runs past `seconds` after a connection is checked out."""

    @event.listens_for(engine, "connect")
    def _arm(dbapi_conn, record) -> None:
        deadline = record.info["deadline"] = [math.inf]
        # A true return makes SQLite stop the statement: sqlite3.OperationalError("interrupted").
        dbapi_conn.set_progress_handler(lambda: time.monotonic() > deadline[0], _PROGRESS_EVERY)

    @event.listens_for(engine, "checkout")
    def _start(_dbapi_conn, record, _proxy) -> None:
        record.info["deadline"][0] = time.monotonic() + seconds

    @event.listens_for(engine, "checkin")
    def _stop(_dbapi_conn, record) -> None:
        if "deadline" in record.info:
            record.info["deadline"][0] = math.inf


# -- portable time arithmetic ------------------------------------------------------------------
# Feature SQL runs unchanged on both databases, so it may not use dialect date functions. The one
# exception is Postgres' own date_part(field, timestamp), which every SQLite connection made here
# gets as a registered function with the same meaning: hours between two timestamps are
# (date_part('epoch', b) - date_part('epoch', a)) / 3600 on both. Timestamps are naive UTC.

_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
_FIELDS = {
    "year": lambda t: t.year, "month": lambda t: t.month, "day": lambda t: t.day,
    "hour": lambda t: t.hour, "minute": lambda t: t.minute,
    "second": lambda t: t.second + t.microsecond / 1e6,
    "dow": lambda t: t.isoweekday() % 7, "isodow": lambda t: t.isoweekday(),
    "doy": lambda t: t.timetuple().tm_yday,
}
DATE_PART_FIELDS = ("epoch", *_FIELDS)


def date_part(field: str | None, value: str | datetime | None) -> float | None:
    """Postgres' date_part for SQLite: 'epoch' (seconds since 1970, UTC) and the fields above."""
    if field is None or value is None:
        return None
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    name = field.lower()
    if name == "epoch":
        return ((ts - _EPOCH) // timedelta(microseconds=1)) / 1e6
    if name not in _FIELDS:
        raise ValueError(f"date_part: field {field!r} is not one of {list(DATE_PART_FIELDS)}")
    return float(_FIELDS[name](ts))


def check_connection(engine: Engine) -> None:
    """Raise DatabaseError naming the URL when the database does not answer (or is not one)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:  # OperationalError (down, refused), DatabaseError (a file that is not SQLite)
        reason = (str(exc.orig).strip().splitlines() or ["?"])[0] if exc.orig else str(exc)
        where = redact(engine.url.render_as_string(False))
        if is_sqlite(engine):
            raise DatabaseError(
                f"cannot use the SQLite database {engine.url.database}: {reason}. Is DATABASE_URL right? "
                "`make seed ARGS=--replace` rebuilds the demo database"
            ) from None
        raise DatabaseError(
            f"cannot reach the database at {where}: {reason}. Is it running, and is DATABASE_URL right?"
        ) from None


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite database."""
    return engine.dialect.name == "sqlite"


def to_sqlite_text(ts: datetime) -> str:
    """A naive UTC datetime in SQLAlchemy's SQLite storage format."""
    return ts.strftime(SQLITE_TS_FORMAT)
