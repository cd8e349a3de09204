"""The exposure writer: fast and harmless when the database is down, complete when it is up."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter

from ab.exposures import ExposureWriter, ab_exposures

DEAD_URL = "postgresql+psycopg://postgres@127.0.0.1:1/x"  # nothing listens on port 1


@pytest.fixture
def counters():
    """Fresh recorded/lost counters in a private registry, and a reader for their values."""
    registry = CollectorRegistry()
    recorded = Counter("ab_exposures_recorded", "test", ["experiment"], registry=registry)
    lost = Counter("ab_exposures_lost", "test", ["experiment"], registry=registry)

    def value(name: str, experiment: str) -> float:
        return (
            registry.get_sample_value(f"ab_exposures_{name}_total", {"experiment": experiment})
            or 0.0
        )

    return recorded, lost, value


def rows_in(url: str) -> list[sa.Row]:
    """All exposure rows, oldest first."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(ab_exposures).order_by(ab_exposures.c.id)).all()
    finally:
        engine.dispose()


def test_a_hung_database_never_blocks_record(counters):
    """record() only queues: with a database that accepts connections and never answers, 10k
    calls still return (the writer thread is the one that waits). How fast: make bench."""
    recorded, lost, _ = counters
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # accepts (the kernel's backlog), never speaks Postgres
        url = f"postgresql+psycopg://postgres@127.0.0.1:{hung.getsockname()[1]}/x"
        writer = ExposureWriter(url, recorded=recorded, lost=lost, flush_interval=0.05)
        done = threading.Event()

        def calls() -> None:
            for i in range(10_000):
                writer.record("exp", f"u{i:06d}", "control", "20261128T191500Z-a1b2c3")
            done.set()

        threading.Thread(target=calls, daemon=True).start()
        assert done.wait(60), "record() waited on the database"
    # the listener is closed now: the connection the writer thread waits on is reset, so its thread
    # gives up at once instead of after the connect timeout, before the next test
    writer.close(timeout=30)
    assert writer.lost_total == 10_000 and writer.recorded_total == 0  # none written, every row counted


def test_dead_database_counts_losses(counters, caplog):
    recorded, lost, value = counters
    caplog.set_level(logging.WARNING, logger="ab.exposures")
    writer = ExposureWriter(DEAD_URL, recorded=recorded, lost=lost, flush_interval=0.05)
    for i in range(10_000):
        writer.record("exp", f"u{i:06d}", "control", "20261128T191500Z-a1b2c3")
    writer.close(timeout=15)
    assert writer.lost_total == 10_000 and writer.recorded_total == 0
    assert value("lost", "exp") == 10_000 and value("recorded", "exp") == 0
    failures = [r for r in caplog.records if "cannot write to the database" in r.getMessage()]
    assert len(failures) == 1  # once per failure burst, not once per batch


def test_all_rows_arrive_after_close(ab_db_url, counters):
    recorded, lost, value = counters
    writer = ExposureWriter(
        ab_db_url, recorded=recorded, lost=lost, batch_size=100, flush_interval=0.05
    )
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    for i in range(1234):
        writer.record(
            "exp-a" if i % 3 else "exp-b",
            f"u{i:06d}",
            "control" if i % 2 else "treatment",
            "20261128T191500Z-a1b2c3",
        )
    assert writer.close(timeout=15)
    rows = rows_in(ab_db_url)
    assert len(rows) == 1234 and writer.recorded_total == 1234 and writer.lost_total == 0
    assert value("recorded", "exp-b") == 412 and value("recorded", "exp-a") == 822
    assert {r.unit_id for r in rows} == {f"u{i:06d}" for i in range(1234)}
    assert all(r.ts.tzinfo is None and r.ts >= before for r in rows)  # naive UTC
    assert rows[0].model_version == "20261128T191500Z-a1b2c3"


def test_overflow_drops_and_counts(ab_sqlite_url, counters):
    recorded, lost, value = counters
    # the flusher waits a minute, so the queue can only fill
    writer = ExposureWriter(
        ab_sqlite_url,
        recorded=recorded,
        lost=lost,
        max_queue=100,
        batch_size=10_000,
        flush_interval=60,
    )
    for i in range(150):
        writer.record("exp", f"u{i:06d}", "control", "current")
    assert value("lost", "exp") == 50
    assert writer.close(timeout=15)
    assert len(rows_in(ab_sqlite_url)) == 100 and value("recorded", "exp") == 100


def test_record_never_raises(ab_sqlite_url, counters):
    recorded, lost, value = counters
    writer = ExposureWriter(ab_sqlite_url, recorded=recorded, lost=lost, flush_interval=0.05)
    writer.record("exp", None, "control", "current")  # type: ignore[arg-type]  # NOT NULL fails later
    writer.close(timeout=15)
    assert writer.lost_total == 1
    writer.record("exp", "u000001", "control", "current")  # after close: counted, not raised
    assert writer.lost_total == 2


def test_nothing_starts_until_the_first_record(ab_sqlite_url):
    writer = ExposureWriter(ab_sqlite_url)
    assert writer._thread is None and writer._engine is None
    writer.record("exp", "u000001", "control", "current")
    assert writer._thread is not None and writer._thread.daemon
    writer.close()


def _record_in_child(writer: ExposureWriter) -> None:
    for i in range(7):
        writer.record("exp", f"child{i}", "treatment", "current")
    writer.close(timeout=15)


def test_safe_across_fork(ab_sqlite_url):
    # gunicorn forks workers after the app (and this writer) may exist: each process writes its own
    writer = ExposureWriter(ab_sqlite_url, flush_interval=0.05)
    for i in range(5):
        writer.record("exp", f"parent{i}", "control", "current")
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(writer,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    writer.close(timeout=15)
    units = sorted(r.unit_id for r in rows_in(ab_sqlite_url))
    assert units == sorted([f"parent{i}" for i in range(5)] + [f"child{i}" for i in range(7)])


def test_from_settings_uses_database_url(tmp_path):
    from stack.settings import Settings

    writer = ExposureWriter.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))
    assert writer.database_url == f"sqlite:///{tmp_path / 'x.db'}"
