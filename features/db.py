"""Connections to the app database named by DATABASE_URL (SQLite file or Postgres)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from stack.settings import SUPPORTED_DATABASE_SCHEMES

# SQLAlchemy stores DateTime on SQLite as this text; bulk loads write the same format so that
# string comparisons against bound datetime parameters are exact (an event at as_of is not < as_of).
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says which and what to do."""


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str, *, pool_size: int = 5, connect_timeout: int = 5) -> Engine:
    """An Engine for `url`; raises DatabaseError for unknown schemes or bad URLs."""
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
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(
            parsed,
            pool_size=pool_size,
            pool_pre_ping=True,
            connect_args={"connect_timeout": connect_timeout},
        )
    except NoSuchModuleError:
        raise DatabaseError(f"no driver for DATABASE_URL scheme {parsed.drivername!r}") from None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the server read while the trainer or seeder writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def check_connection(engine: Engine) -> None:
    """Raise DatabaseError naming the URL when the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"cannot reach the database at {redact(engine.url.render_as_string(False))}: {reason}. "
            "Is it running, and is DATABASE_URL right?"
        ) from None


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite database."""
    return engine.dialect.name == "sqlite"


def to_sqlite_text(ts: datetime) -> str:
    """A naive UTC datetime in SQLAlchemy's SQLite storage format."""
    return ts.strftime(SQLITE_TS_FORMAT)
