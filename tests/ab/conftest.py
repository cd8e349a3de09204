"""Fixtures for the A/B tests: the demo app tables in a temp SQLite file and a throwaway Postgres database."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

app_metadata = sa.MetaData()
sa.Table(
    "users",
    app_metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("signup_at", sa.DateTime),
    sa.Column("country", sa.Text),
    sa.Column("device", sa.Text),
    sa.Column("channel", sa.Text),
)
sa.Table(
    "events",
    app_metadata,
    sa.Column("event_id", sa.BigInteger),
    sa.Column("user_id", sa.Text),
    sa.Column("ts", sa.DateTime),
    sa.Column("kind", sa.Text),
)
sa.Table(
    "orders",
    app_metadata,
    sa.Column("order_id", sa.BigInteger),
    sa.Column("user_id", sa.Text),
    sa.Column("ts", sa.DateTime),
    sa.Column("amount", sa.Float),
)


@pytest.fixture(scope="session")
def ab_postgres_url() -> Iterator[str]:
    """A fresh database on TEST_DATABASE_URL's server (default 127.0.0.1:5432), dropped afterwards."""
    admin_url = sa.make_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG_URL)
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    admin = sa.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"ab_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0]
        pytest.skip(f"no PostgreSQL server at {admin_url.render_as_string()}: {reason}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def ab_sqlite_url(tmp_path) -> str:
    """A SQLite file in the test's temp folder."""
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ab_db_url(request) -> Iterator[str]:
    """The same test on SQLite and on real Postgres; tables of the test are dropped afterwards."""
    url = request.getfixturevalue(
        "ab_sqlite_url" if request.param == "sqlite" else "ab_postgres_url"
    )
    yield url
    if request.param == "postgres":
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for table in ("ab_exposures", "orders", "events", "users"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


@pytest.fixture
def make_app_tables() -> Callable[[sa.Engine], dict[str, sa.Table]]:
    """Create users/events/orders (the contract's columns) on an engine; returns the tables by name."""

    def create(engine: sa.Engine) -> dict[str, sa.Table]:
        app_metadata.create_all(engine)
        return dict(app_metadata.tables)

    return create
