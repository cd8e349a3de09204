"""The prediction log: batched off the request path, sampled without an entity, retained, lossy when dead."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from features.db import make_engine
from monitoring.predictions import SHADOW, PredictionLogWriter, create_table, prediction_log
from tests.conftest import some_keys, throwaway_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_url(request, tmp_path) -> Iterator[str]:
    """An empty database of each kind: the writer's SQLite path (executemany) and its Postgres one (COPY)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
    else:
        with throwaway_database(request.getfixturevalue("postgres_server"), "bms_log") as url:
            yield url


def rows(url: str) -> list[dict]:
    with make_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(prediction_log).order_by(prediction_log.c.id))]


def test_every_prediction_with_an_entity_and_a_sample_of_the_rest(log_url):
    url = log_url
    writer = PredictionLogWriter(url, sample_without_entity=0.0)
    keys = some_keys(3)
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    for i, key in enumerate(keys):
        writer.record(key, "v1", "control" if i else None, 0.25 * i)
    for _ in range(50):
        writer.record(None, "v1", None, 0.5)  # sample 0: none kept
    writer.record(keys[0], "v2", "tab\there \\N", 0.9, kind=SHADOW)  # COPY's delimiter and null mark
    assert writer.close(5)
    logged = rows(url)
    assert [(r["entity_id"], r["model_version"], r["variant"], r["score"], r["kind"]) for r in logged] == [
        (str(keys[0]), "v1", None, 0.0, "served"), (str(keys[1]), "v1", "control", 0.25, "served"),
        (str(keys[2]), "v1", "control", 0.5, "served"), (str(keys[0]), "v2", "tab\there \\N", 0.9, "shadow")]
    after = datetime.now(UTC).replace(tzinfo=None)
    assert all(before <= r["ts"] <= after for r in logged), [r["ts"] for r in logged]  # naive UTC, both ways
    assert writer.recorded_total == 4 and writer.lost_total == 0

    every = PredictionLogWriter(url, sample_without_entity=1.0)
    for _ in range(5):
        every.record(None, "v1", None, 0.5)
    assert every.close(5) and sum(r["entity_id"] is None for r in rows(url)) == 5


def test_rows_older_than_the_retention_are_deleted(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = make_engine(url)
    create_table(engine)
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=40)
    with engine.begin() as conn:
        conn.execute(sa.insert(prediction_log), [{"ts": old, "entity_id": "x", "model_version": "v0",
                                                   "variant": None, "score": 0.1, "kind": "served"}])
    writer = PredictionLogWriter(url, retention_days=30)
    writer.record(some_keys(1)[0], "v1", None, 0.3)
    assert writer.close(5)
    assert [r["model_version"] for r in rows(url)] == ["v1"]


def test_a_dead_database_loses_rows_counted_and_never_raises():
    writer = PredictionLogWriter("postgresql+psycopg://postgres@127.0.0.1:1/nope")
    for key in some_keys(5):
        writer.record(key, "v1", None, 0.5)
    writer.flush()
    writer.close(5)
    assert writer.lost_total == 5 and writer.recorded_total == 0
