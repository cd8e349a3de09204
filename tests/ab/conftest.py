"""Fixtures for the A/B tests: the spec's app tables (through its loader) in a temp SQLite file
and in a throwaway Postgres database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import sqlalchemy as sa

from features.spec import SPEC
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
    """The same test on SQLite and on real Postgres; every table a test made is dropped afterwards."""
    url = request.getfixturevalue(
        "ab_sqlite_url" if request.param == "sqlite" else "ab_postgres_url"
    )
    yield url
    if request.param == "postgres":
        engine = sa.create_engine(url)
        existing = sa.MetaData()
        existing.reflect(engine)
        existing.drop_all(engine)
        engine.dispose()


@pytest.fixture
def loader() -> ModuleType:
    """The spec's loader module (features/spec.yml `loader`): creates tables, records outcomes."""
    return SPEC.load_loader()


@pytest.fixture
def make_app_tables(loader) -> Callable[[sa.Engine], None]:
    """Create the app's tables, empty, on an engine (loader contract: create_tables)."""
    return loader.create_tables
