"""Shared fixtures: demo data in SQLite and real Postgres, a trained model, a running server.

Postgres: TEST_DATABASE_URL, else a server on 127.0.0.1:5432 if one answers, else a
testcontainers Postgres when a Docker engine runs, else the Postgres tests are skipped with the
reason. Every session gets its own throwaway database, dropped at the end.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from features.db import make_engine
from features.spec import SPEC

# The domain under test: its loader (spec.yml `loader`) and the facts the tests may pin about its
# demo data (`<loader>.expect`). No other test module names the demo.
demo = SPEC.load_loader()
EXPECT = importlib.import_module(f"{SPEC.loader}.expect")
KEY = SPEC.entity.key

ROOT = Path(__file__).resolve().parents[1]
DEMO_END = datetime(2026, 6, 1)  # fixed, so every run sees the same data
SMALL_SCALE = 0.1


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a Postgres server we may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    if _answers("127.0.0.1", 5432):
        yield "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        return
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16.4", driver="psycopg") as pg:
            yield pg.get_connection_url()
        return
    pytest.skip("no PostgreSQL: set TEST_DATABASE_URL, run one on 127.0.0.1:5432, or start Docker")


@contextmanager
def throwaway_database(server_url: str, prefix: str) -> Iterator[str]:
    """Create a uniquely named database on the server, yield its URL, drop it afterwards."""
    admin_url = sa.make_url(server_url)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A throwaway database on the test server, dropped after the session."""
    with throwaway_database(postgres_server, "bms_test") as url:
        yield url


@pytest.fixture(scope="session")
def small_demo():
    """A tenth of the default demo (2k entities), generated once."""
    return demo.generate(scale=SMALL_SCALE, seed=7, end=DEMO_END)


@pytest.fixture(scope="session")
def small_sqlite_url(tmp_path_factory, small_demo) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'app.db'}"
    demo.load(make_engine(url), small_demo)
    return url


@pytest.fixture(scope="session")
def small_postgres_url(postgres_url, small_demo) -> str:
    demo.load(make_engine(postgres_url), small_demo)
    return postgres_url


@pytest.fixture(scope="session")
def default_sqlite_url(tmp_path_factory) -> str:
    """The default demo scale in SQLite, loaded once."""
    url = f"sqlite:///{tmp_path_factory.mktemp('default') / 'app.db'}"
    demo.load(make_engine(url), demo.generate(scale=1.0, seed=42, end=DEMO_END))
    return url


@pytest.fixture(scope="session")
def default_frame(default_sqlite_url):
    """The training frame of the default demo data."""
    from features.build import build_training_frame, training_as_of_dates

    engine = make_engine(default_sqlite_url)
    return build_training_frame(engine, training_as_of_dates(engine, 8))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def small_models(tmp_path_factory, small_sqlite_url):
    """A registry with two trained versions on the small demo; the first is `current`."""
    from registry.store import Registry
    from train.pipeline import TrainConfig, run

    root = tmp_path_factory.mktemp("models")
    registry = Registry(root / "models")
    engine = make_engine(small_sqlite_url)
    quiet = lambda _msg: None  # noqa: E731
    first = run(engine, registry, root / "runs.csv", TrainConfig(as_of_count=4), progress=quiet)
    second = run(engine, registry, root / "runs.csv",
                 TrainConfig(as_of_count=4, params={"num_leaves": 7}, deploy=False), progress=quiet)
    return registry, first.version, second.version


def copy_registry(registry, dest: Path):
    """A private copy of a registry, for tests that change `current` or break files."""
    from registry.store import Registry

    shutil.copytree(registry.root, dest)
    return Registry(dest)


def some_keys(n: int) -> list:
    """`n` distinct keys of the spec's key type (A/B units; they need not exist in the database)."""
    if SPEC.entity.type == "integer":
        return list(range(1, n + 1))
    return [f"k{i:06d}" for i in range(n)]
