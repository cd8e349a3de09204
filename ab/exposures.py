"""The exposure log: record() on the request path, a background thread writes batches to ab_exposures."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from features.db import make_engine
from features.spec import SPEC

log = logging.getLogger(__name__)

metadata = sa.MetaData()
ab_exposures = sa.Table(
    "ab_exposures",
    metadata,
    # BIGINT on Postgres; SQLite only autoincrements a column declared INTEGER
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("ts", sa.DateTime(), nullable=False),  # naive UTC, like the app tables
    sa.Column("experiment", sa.String(64), nullable=False),
    sa.Column("unit_id", sa.String(128), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Index("ix_ab_exposures_experiment_unit_ts", "experiment", "unit_id", "ts"),
)

# (unix time, experiment, unit key as given, variant, model_version); the key becomes its canonical
# text (SPEC.entity.canonical) when the batch is written, off the request path
_Row = tuple[float, str, str | int, str, str]


def create_table(engine: sa.Engine, attempts: int = 3, table: sa.Table | None = None) -> None:
    """Create `table` (default ab_exposures) and its indexes if missing; safe when several workers
    race to do it."""
    table = ab_exposures if table is None else table
    for attempt in range(attempts):
        try:
            table.create(engine, checkfirst=True)
            return
        except sa.exc.SQLAlchemyError:
            # another process created it between our check and our CREATE: check again
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


class CounterLike(Protocol):
    """What the writer needs of a labelled prometheus Counter: .labels(experiment).inc(n)."""

    def labels(self, *labelvalues: str) -> Any: ...


class ExposureWriter:
    """Buffers exposures in memory and writes them in batches; never blocks or fails a request.

    A subclass writing another table (monitoring/predictions.py) overrides record() and _write(),
    keeps the row's second field as the label its counters count by, and names itself below.
    """

    what = "ab exposures"  # in log lines
    lost_metric = "ab_exposures_lost_total"
    thread_name = "ab-exposure-writer"
    create_database = True  # False (from_settings, the server): a missing SQLite file is an error, not a new empty one

    def __init__(
        self,
        database_url: str,
        *,
        recorded: CounterLike | None = None,
        lost: CounterLike | None = None,
        max_queue: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
    ) -> None:
        """Nothing connects or starts here; the flusher thread starts on the first record()."""
        self.database_url = database_url
        self.recorded_counter = recorded
        self.lost_counter = lost
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.recorded_total = 0  # rows written by this process; also in the Prometheus counters
        self.lost_total = 0  # rows dropped by this process (overflow, database errors, after close)
        self._count_lock = threading.Lock()
        self._init_process_state()
        # gunicorn may fork after this object exists: the child starts clean, with its own thread
        os.register_at_fork(after_in_child=_reset_in_child(weakref.ref(self)))

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ExposureWriter:
        """A writer for the settings' DATABASE_URL counting into the AB_EXPOSURES_* metrics."""
        from monitoring import metrics
        kwargs.setdefault("recorded", metrics.AB_EXPOSURES_RECORDED)
        kwargs.setdefault("lost", metrics.AB_EXPOSURES_LOST)
        writer = cls(settings.database_url, **kwargs)
        writer.create_database = False
        return writer

    def _after_fork(self) -> None:
        self._count_lock = threading.Lock()
        if self._engine is not None:
            self._engine.dispose(close=False)  # the parent's connections are not ours to close
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._queue: deque[_Row] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._overflowed = False  # set on the request path, logged by the flusher
        self._overflow_burst = False
        self._failing = False  # inside a burst of database failures
        self._burst_lost = 0
        self._engine: sa.Engine | None = None
        self._table_ready = False

    def record(self, experiment: str, unit_id: str | int, variant: str, model_version: str) -> None:
        """Queue one exposure: O(1), no I/O, never raises; unit_id is a key in its type (parsed)."""
        self._enqueue((time.time(), experiment, unit_id, variant, model_version), experiment)

    def _enqueue(self, row: tuple, label: str) -> None:
        """Queue a row (counted as lost under `label` when the queue is full or closed); never raises."""
        try:
            if self._thread is None:
                self._start()
            queue = self._queue
            if self._closed or len(queue) >= self.max_queue:
                self._overflowed = not self._closed
                self._count(self.lost_counter, {label: 1}, lost=True)
                return
            queue.append(row)
            if len(queue) == self.batch_size:
                self._wake.set()
        except Exception:  # a log row is never worth a failed prediction; counted, so it is not silent
            with contextlib.suppress(Exception):
                from monitoring import metrics

                metrics.LOG_RECORD_ERRORS.labels(self.what).inc()

    def flush(self) -> None:
        """Write everything queued now, on the calling thread (the flusher does this on its own)."""
        self._drain()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop accepting rows, flush what is queued within `timeout` seconds; True when nothing is left."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._drain()  # thread never started, or it finished: flush the rest here
        left = len(self._queue)
        if self._engine is not None and (thread is None or not thread.is_alive()):
            self._engine.dispose()
        return left == 0

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                thread.start()
                self._thread = thread
                atexit.register(self.close, 2.0)  # a worker exiting without close() still flushes

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Write the queue in batches; on a database error, count and drop what is queued."""
        if self._overflowed:
            self._overflowed = False
            if not self._overflow_burst:
                self._overflow_burst = True
                log.warning(
                    "%s: queue full (%d rows); dropping rows until it drains, see %s",
                    self.what,
                    self.max_queue,
                    self.lost_metric,
                )
        else:
            self._overflow_burst = False
        while batch := self._take(self.batch_size):
            try:
                self._write(batch)
            except Exception as exc:  # any database error: count, log once, go on
                # the rest of the queue would most likely fail too: drop it now rather than try a
                # dead server once per batch; the counter says how much was lost
                batch += self._take(len(self._queue))
                self._count(self.lost_counter, Counter(r[1] for r in batch), lost=True)
                self._burst_lost += len(batch)
                if not self._failing:
                    self._failing = True
                    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[
                        0
                    ]
                    log.warning(
                        "%s: cannot write to the database (%s: %s); dropping rows until it "
                        "recovers, see %s",
                        self.what,
                        type(exc).__name__,
                        reason,
                        self.lost_metric,
                    )
                return
            self._count(self.recorded_counter, Counter(r[1] for r in batch), lost=False)
            if self._failing:
                self._failing = False
                log.warning(
                    "%s: database writes recovered after %d lost rows", self.what, self._burst_lost
                )
                self._burst_lost = 0

    def _take(self, n: int) -> list[_Row]:
        queue, rows = self._queue, []
        try:
            for _ in range(n):
                rows.append(queue.popleft())
        except IndexError:  # empty (possibly emptied by another drainer)
            pass
        return rows

    def _write(self, batch: list[_Row]) -> None:
        engine = self._engine
        if engine is None:
            engine = self._engine = make_engine(self.database_url, pool_size=1, create=self.create_database)
        if not self._table_ready:
            create_table(engine)
            self._table_ready = True
        canonical = SPEC.entity.canonical
        rows = [
            {
                "ts": datetime.fromtimestamp(t, UTC).replace(tzinfo=None),
                "experiment": e,
                "unit_id": None if u is None else canonical(u),  # None: NOT NULL refuses it
                "variant": v,
                "model_version": m,
            }
            for t, e, u, v, m in batch
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(ab_exposures), rows)

    def _count(
        self, counter: CounterLike | None, by_experiment: dict[str, int], *, lost: bool
    ) -> None:
        for experiment, n in by_experiment.items():
            with self._count_lock:  # the request path and the flusher both count losses
                if lost:
                    self.lost_total += n
                else:
                    self.recorded_total += n
            if counter is not None:
                with contextlib.suppress(Exception):  # metrics must not break the writer either
                    counter.labels(experiment).inc(n)


def _reset_in_child(ref: weakref.ref[ExposureWriter]) -> Callable[[], None]:
    def reset() -> None:
        writer = ref()
        if writer is not None:
            writer._after_fork()

    return reset
