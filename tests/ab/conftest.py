"""Fixtures for the A/B tests: the demo app tables in a temp SQLite file and a throwaway Postgres database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import throwaway_database

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
def ab_postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of the A/B tests' own (they create and drop their tables), dropped afterwards."""
    with throwaway_database(postgres_server, "ab_test") as url:
        yield url


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
