"""The prediction log: every scored request with an entity (and a sample of those without), served
or shadow, written in batches off the request path to the `prediction_log` table.

The realized-quality job (monitoring/quality.py) joins it with labels once their window closes.
The writer is the A/B exposure writer's machinery (ab/exposures.py): record() is a deque
append, a thread writes batches, a dead database loses rows (counted in
model_prediction_log_lost_total), never requests. Retention is enforced by the writer itself:
at most once an hour it deletes rows older than PREDICTION_LOG_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ab import exposures
from ab.exposures import CounterLike, ExposureWriter
from features.spec import SPEC

log = logging.getLogger(__name__)

SERVED, SHADOW = "served", "shadow"
PRUNE_EVERY_S = 3600.0

metadata = sa.MetaData()
prediction_log = sa.Table(
    "prediction_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(), nullable=False),  # naive UTC, like the app tables
    sa.Column("entity_id", sa.String(128), nullable=True),  # the canonical key text; NULL: sampled, no entity
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("score", sa.Float(), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # served | shadow
    sa.Index("ix_prediction_log_ts", "ts"),  # the quality job and retention read by time; one index keeps writes cheap
)

# (unix time, kind, entity key as given or None, model_version, variant, score)
_Row = tuple[float, str, Any, str, str | None, float]


def create_table(engine: sa.Engine, attempts: int = 3) -> None:
    """Create prediction_log and its indexes if missing; safe when several workers race."""
    exposures.create_table(engine, attempts, table=prediction_log)


def prune(conn: sa.Connection, retention_days: float, now: datetime | None = None) -> int:
    """Delete log rows older than `retention_days`; the number deleted."""
    now = now or datetime.now(UTC)
    cutoff = now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=retention_days)
    return conn.execute(sa.delete(prediction_log).where(prediction_log.c.ts < cutoff)).rowcount or 0


_COLUMNS = ("ts", "entity_id", "model_version", "variant", "score", "kind")


def _insert_statement(engine: sa.Engine) -> str:
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":1"}.get(engine.dialect.paramstyle, "%s")
    return f"INSERT INTO prediction_log ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})"


def _naive_utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


class _SqliteTime:
    """Unix time -> the text SQLAlchemy stores for a DateTime in SQLite, formatting each second once."""

    def __init__(self) -> None:
        self._second, self._text = -1, ""

    def __call__(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second, self._text = second, _naive_utc(second).strftime("%Y-%m-%d %H:%M:%S")
        return f"{self._text}.{int((t - second) * 1e6):06d}"


class PredictionLogWriter(ExposureWriter):
    """Buffers scored predictions and writes them in batches; never blocks or fails a request."""

    what = "prediction log"
    lost_metric = "model_prediction_log_lost_total"
    thread_name = "prediction-log-writer"

    def __init__(self, database_url: str, *, sample_without_entity: float = 0.01, retention_days: float = 90,
                 recorded: CounterLike | None = None, lost: CounterLike | None = None, **kwargs: Any) -> None:
        # big batches: one commit (an fsync on SQLite) per few thousand rows at full load
        kwargs.setdefault("batch_size", 5000)
        super().__init__(database_url, recorded=recorded, lost=lost, **kwargs)
        self.sample_without_entity = sample_without_entity
        self.retention_days = retention_days
        self._pruned_at = 0.0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> PredictionLogWriter:
        """A writer for the settings' DATABASE_URL and PREDICTION_LOG_* knobs, counting into metrics."""
        from monitoring import metrics

        kwargs.setdefault("recorded", metrics.PREDICTION_LOG_RECORDED)
        kwargs.setdefault("lost", metrics.PREDICTION_LOG_LOST)
        writer = cls(settings.database_url, sample_without_entity=settings.prediction_log_sample,
                     retention_days=settings.prediction_log_retention_days, **kwargs)
        writer.create_database = False  # the app database: never create an empty one
        return writer

    def record(self, entity: Any, model_version: str, variant: str | None, score: float,  # type: ignore[override]
               kind: str = SERVED) -> None:
        """Queue one prediction: O(1), no I/O, never raises. Without an entity, only a sample is kept."""
        if entity is None and (self.sample_without_entity <= 0.0 or random.random() >= self.sample_without_entity):
            return
        try:
            row = (time.time(), kind, entity, model_version, variant, float(score))
        except (TypeError, ValueError):  # a score that is no number: not worth a failed prediction
            return
        self._enqueue(row, kind)

    def _write(self, batch: list[_Row]) -> None:  # type: ignore[override]
        engine = self._engine
        if engine is None:
            engine = self._engine = self._make_engine()
        if not self._table_ready:
            create_table(engine)
            self._table_ready = True
            self._insert = _insert_statement(engine)
            self._copy = f"COPY prediction_log ({', '.join(_COLUMNS)}) FROM STDIN"
        canonical = SPEC.entity.canonical
        stamp = _SqliteTime() if engine.dialect.name == "sqlite" else _naive_utc
        copy_in = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        # plain tuples, on the writer thread, which shares the GIL with the requests: on Postgres
        # through COPY (about 2 us of CPU a row against 8-10 for psycopg's executemany), else
        # through the driver's executemany (sqlite3's is C)
        rows = [(stamp(t), None if e is None else canonical(e), m, v, s, k) for t, k, e, m, v, s in batch]
        with engine.begin() as conn:
            if copy_in:
                with conn.connection.driver_connection.cursor() as cursor, cursor.copy(self._copy) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                conn.exec_driver_sql(self._insert, rows)
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_S or not self._pruned_at:
                self._pruned_at = time.monotonic()
                deleted = prune(conn, self.retention_days)
                if deleted:
                    log.info("prediction log: deleted %d rows older than %g days", deleted, self.retention_days)

    def _make_engine(self) -> sa.Engine:
        from features.db import make_engine

        return make_engine(self.database_url, pool_size=1, create=self.create_database)
