"""Fixtures for the A/B tests: the demo app tables in a temp SQLite file and a throwaway Postgres database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from features import tables
from tests.conftest import throwaway_database


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
    """Create the app's users/events/orders (features/tables.py) on an engine; the tables by name."""

    def create(engine: sa.Engine) -> dict[str, sa.Table]:
        tables.metadata.create_all(engine)
        return {t.name: t for t in tables.APP_TABLES}

    return create
