"""Features computed now from the app database, for POST /predict/user/{id}.

One pool per worker, bounded: a hung or dead database costs a request at most about the pool wait
plus the connect or statement timeout, then a 503; /predict with features in the body never waits
on it. After a failed connect (a database that is down, or a host that accepts and never answers)
the next RETRY_AFTER_SECONDS of requests get their 503 at once instead of each waiting for a
connect timeout of its own (tested: 60 concurrent requests against a hung Postgres answer 503 in
about 2 s). And whatever the database does, a by-entity request ends within REQUEST_LIMIT_SECONDS
(`within_limit`): a database that froze in the middle of a statement it had received (the
statement timeout is its own, so it cannot fire) costs the request that long, then a 503.

On SQLite the statement is first run on the event loop itself (`within_limit(..., inline_first)`):
it is a local file read of ~0.1 ms, less than the thread hop it saves, and the hop's wake-ups and
GIL hand-offs were most of a by-entity request's latency under load. That attempt gets its own
connection and INLINE_LIMIT_SECONDS for both the busy wait and the statement, so it can hold up
the worker's other requests at most that long; a lock held by a writer, or an entity whose rows
take longer, falls through to the thread with the full bounds. (So the SQLite file must be local:
on a network filesystem a read can block in the kernel, where no time limit reaches.)

At most POOL_SIZE threads per worker run a by-entity read at once (`ReadSlots`); the other
requests wait their turn on the event loop, first come first served, for at most the pool wait.
Without that bound, 16 requests of wrk's 32 on a worker were 16 threads contending for 4
connections and the GIL: +18% by-id req/s on Postgres in an A/B (serve/README.md). The hop is
asyncio's own (a semaphore, `run_in_executor` on the slots' thread pool, `asyncio.timeout`):
anyio's `to_thread` with a CapacityLimiter and two cancel scopes cost about 40 us more CPU per
request, 6% of a by-id request on Postgres.

On Postgres there is no thread at all (`features_on_loop`): the worker's event loop holds up to
POOL_SIZE psycopg AsyncConnections of its own and awaits the one statement on one of them, with the
same bounds as the thread path (the slots' pool wait, a 2 s connect, Postgres's 2 s statement
timeout, REQUEST_LIMIT_SECONDS in all, the pause after a failed connect). It saves the hop's
wake-ups and GIL hand-offs: in an A/B of the two paths, same run, +25% by-id req/s and ~0.1 ms
less worker CPU per request (serve/README.md). A read cut at the request limit is abandoned to a
background task that closes its connection (`_abandoned_when_cut`). The thread path stays for
SQLite's fallback; `OnlineFeatures.read` picks the path, and both run the same compiled statement
and the same transform (features/build.py, features/derive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from features.build import ONLINE_SQL_NAME, FeatureSQLError, build_online, online_statement
from features.db import DatabaseError, first_line, make_engine, postgres_connect_args
from features.derive import TRANSFORM
from serve import errors

log = logging.getLogger("serve.online")

POOL_SIZE, POOL_WAIT_SECONDS = 4, 1.0  # per worker; see OnlineFeatures.engine
# The pool wait (1 s), a connect (2 s) and a statement (2 s) below, and a margin: past this a
# by-entity request is answered 503 however the database behaves.
REQUEST_LIMIT_SECONDS = 6.0
# SQLite, on the event loop: the most a by-entity attempt there may hold up the worker's other requests
INLINE_LIMIT_SECONDS = 0.005
_last_overrun_log = _last_pool_full_log = 0.0


class OnThread(Exception):
    """The attempt on the event loop gave up (busy or over INLINE_LIMIT_SECONDS): run it on a thread."""


def log_pool_full() -> None:
    """Every connection (or thread slot) busy for the pool wait: one line per burst, not per request."""
    global _last_pool_full_log
    now = time.monotonic()
    if now - _last_pool_full_log > 10.0:
        _last_pool_full_log = now
        log.error("by-entity features: all %d database connections busy for %gs (a slow or frozen "
                  "database?); /predict/user answers 503 meanwhile", POOL_SIZE, POOL_WAIT_SECONDS)


class ReadSlots:
    """POOL_SIZE slots for by-entity reads on threads, and the threads (within_limit). Made in the
    worker, used from its event loop (the semaphore binds to the loop that first waits on it)."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.semaphore = asyncio.Semaphore(size)  # first come first served
        # More threads than slots: a read abandoned past REQUEST_LIMIT_SECONDS keeps its thread
        # (and its connection) but gives back its slot, and the next read needs a thread of its own.
        # Idle threads are reused, so under load there are about `size` of them.
        self.executor = ThreadPoolExecutor(max_workers=size * 8, thread_name_prefix="by-entity")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def within_limit(features: Callable[..., dict[str, Any]], key: Any, inline_first: bool,
                       slots: ReadSlots) -> dict[str, Any]:
    """features(key) on one of the slots' threads once a slot is free (`bounded`). A thread past
    REQUEST_LIMIT_SECONDS is abandoned, not killed: it holds its pooled connection until the
    database answers or drops it, so a frozen database costs at most the pool's 4 connections, and
    later requests a 1 s pool wait.

    inline_first (SQLite): features(key, inline=True) on the loop first; the thread only when it
    raises OnThread."""
    if inline_first:
        try:
            return features(key, inline=True)
        except OnThread:
            pass
    # in the request's context, so that the thread's log lines carry its request id
    run = contextvars.copy_context().run
    return await bounded(lambda: asyncio.get_running_loop().run_in_executor(slots.executor, run, features, key),
                         key, slots)


async def bounded(read: Callable[[], Awaitable[Any]], key: Any, slots: ReadSlots) -> Any:
    """await read() once a slot is free, waited for on the loop for at most POOL_WAIT_SECONDS
    (then a 503); a 503 after REQUEST_LIMIT_SECONDS however the database behaves."""
    global _last_overrun_log
    semaphore = slots.semaphore
    if semaphore.locked():
        try:
            async with asyncio.timeout(POOL_WAIT_SECONDS):
                await semaphore.acquire()
        except TimeoutError:
            log_pool_full()
            raise errors.database_unavailable(key) from None
    else:
        await semaphore.acquire()  # free: returns at once
    try:
        async with asyncio.timeout(REQUEST_LIMIT_SECONDS) as limit:
            return await read()
    except TimeoutError:
        if not limit.expired():  # the read's own (a socket timeout, say): not the request limit
            raise
    finally:
        semaphore.release()  # an abandoned thread keeps its connection, not its slot
    now = time.monotonic()
    if now - _last_overrun_log > 10.0:  # once per burst, not once per request
        _last_overrun_log = now
        log.error("by-entity features: no answer from the database within %gs (frozen mid-statement?); "
                  "answered 503 (a thread keeps its connection until the database answers; a read on the "
                  "event loop closes it)", REQUEST_LIMIT_SECONDS)
    raise errors.database_unavailable(key)


async def _abandoned_when_cut(read: Awaitable[Any]) -> Any:
    """await read, run as a task of its own, so that the request limit abandons it instead of
    cutting it where it waits: psycopg answers a cancelled await by asking the database to cancel
    the statement and waiting for that, up to 5 + 5 s, inside the cancelled await, and a frozen
    database answers neither. The abandoned read is cancelled in the background and closes its
    connection when psycopg gives up (_read_on_loop), so a freeze costs a worker at most about
    POOL_SIZE connections per REQUEST_LIMIT_SECONDS, each for those 10 s."""
    task = asyncio.ensure_future(read)  # a copy of the request's context: its log lines carry its id
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_forget)
        raise


def _forget(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned read's error was the request's, answered 503


RETRY_AFTER_SECONDS = 2.0


class OnlineFeatures:
    """An entity's features as of now; the engine is made on first use (most servers never need it)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._engine: Engine | None = None
        self._inline_engine: Engine | None = None
        try:
            backend = make_url(database_url).get_backend_name()
        except Exception:  # a bad URL: the engine's DatabaseError says so on first use
            backend = ""
        self.inline = backend == "sqlite"  # tried on the event loop, then on a thread (within_limit)
        self.on_loop = backend == "postgresql"  # psycopg's async connections on the loop (features_on_loop)
        self._idle: deque = deque()  # on_loop: connections not in use, the most recent last
        self._statement = None  # on_loop: features/build.py's compiled statement, on first read
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._down_until = 0.0  # monotonic time before which a failed connect is not retried
        self._down_reason = ""
        self._slots: ReadSlots | None = None

    def engine(self) -> Engine:
        # Per worker: 4 pooled connections (WEB_CONCURRENCY x 4 in all), no overflow; a request
        # waits at most 1 s for one, a connect gets 2 s (psycopg's minimum), the database 2 s per
        # statement, then the request is a 503. Autocommit, no pre-ping: one round trip per request;
        # Postgres plans the statement once per connection (features/db.py make_engine). A missing
        # SQLite file is an error, never a new empty database.
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(
                    self.database_url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_WAIT_SECONDS,
                    connect_timeout=2,
                    statement_timeout=2.0, autocommit=True, pre_ping=False, create=False, generic_plans=True)
                if self._engine.dialect.name != "sqlite":
                    event.listen(self._engine, "do_connect", self._connect)
            return self._engine

    def slots(self) -> ReadSlots:
        """POOL_SIZE thread slots for by-entity reads (within_limit): made on first use, in the worker."""
        if self._slots is None:
            self._slots = ReadSlots(POOL_SIZE)
        return self._slots

    def inline_engine(self) -> Engine:
        # SQLite only: one connection, used by the event loop between two awaits, so never contended
        # (the pool wait is 0). Busy timeout and time limit are INLINE_LIMIT_SECONDS.
        with self._lock:
            if self._inline_engine is None:
                self._inline_engine = make_engine(
                    self.database_url, pool_size=1, max_overflow=0, pool_timeout=0,
                    statement_timeout=INLINE_LIMIT_SECONDS, autocommit=True, pre_ping=False, create=False)
            return self._inline_engine

    def _connect(self, dialect, _record, cargs, cparams):
        # Every new connection goes through here, including one made by a request that waited for
        # a pool slot: while the database is known down it fails at once, and a failed connect marks
        # it down before the pool hands the slot to the next waiter.
        self._check_down()
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            self._connect_failed(exc)
            raise

    def _down(self) -> bool:
        """A connect failed within the last RETRY_AFTER_SECONDS: do not try another yet."""
        return time.monotonic() < self._down_until

    def _check_down(self) -> None:
        if self._down():
            raise DatabaseError(f"the database did not answer a connect in the last {RETRY_AFTER_SECONDS:g}s "
                                f"({self._down_reason}); trying again after that")

    def _connect_failed(self, exc: BaseException) -> None:
        reason = first_line(exc)
        with self._state_lock:  # the pool's connects fail together: one line, not one per slot
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            new, self._down_reason = reason != self._down_reason, reason
        if new:
            log.error("by-entity features: cannot connect (%s); /predict/user answers 503 for the next %gs, "
                      "then tries again", reason, RETRY_AFTER_SECONDS)

    def _connected(self) -> None:
        if self._down_reason:
            with self._state_lock:
                recovered, self._down_reason, self._down_until = bool(self._down_reason), "", 0.0
            if recovered:
                log.warning("by-entity features: the database answers again")

    async def features_on_loop(self, key: Any) -> dict | None:
        """features(key) for Postgres, on the event loop: psycopg's AsyncConnection, POOL_SIZE per
        worker, with the thread path's bounds (the slots' pool wait, a 2 s connect, a 2 s statement,
        REQUEST_LIMIT_SECONDS in all, a 2 s pause after a failed connect) and no thread hop: ~25%
        more by-id req/s than a thread per read in an A/B (serve/README.md)."""
        if self._down():  # before taking a slot: while down, a 503 at once
            raise errors.database_unavailable(key)
        return await bounded(lambda: _abandoned_when_cut(self._read_on_loop(key)), key, self.slots())

    async def read(self, key: Any) -> dict | None:
        """The features of `key` now, from the event loop: None when no such entity, RequestError
        503 when the database fails or takes past REQUEST_LIMIT_SECONDS. Postgres reads on the loop
        (features_on_loop); SQLite on the loop first, then on a thread (within_limit)."""
        if self.on_loop:
            return await self.features_on_loop(key)
        return await within_limit(self.features, key, self.inline, self.slots())

    async def _read_on_loop(self, key: Any) -> dict | None:
        import psycopg  # Postgres servers only

        statement = self._statement
        if statement is None:  # compiled once per process; kept here to spare each read the engine's lock
            statement = self._statement = online_statement(self.engine().dialect)
        now = datetime.now(UTC).replace(tzinfo=None)
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else await self._connect_on_loop(key)
            try:
                raw = await statement.row_async(conn, key, now)
            except psycopg.Error as exc:
                reason = first_line(exc)
                if not conn.broken and not conn.closed:  # a failed statement (or Postgres's 2 s limit)
                    self._idle.append(conn)
                    log.error("by-entity features failed: %s failed on postgresql: %s", ONLINE_SQL_NAME, reason)
                    raise errors.database_unavailable(key) from None
                # The database restarted or dropped us: its other connections are gone too, and this
                # request tries once more on a fresh one.
                self._close_on_loop(conn, *self._idle)
                self._idle.clear()
                if attempt == 2:
                    log.error("by-entity features failed: %s: lost the connection to postgresql twice: %s",
                              ONLINE_SQL_NAME, reason)
                    raise errors.database_unavailable(key) from None
                continue
            except BaseException:  # the request limit (or a shutdown) cut the statement: state unknown
                self._close_on_loop(conn)
                raise
            self._idle.append(conn)
            return None if raw is None else TRANSFORM.row(raw, now)
        raise AssertionError("unreachable")

    async def _connect_on_loop(self, key: Any):
        import psycopg

        if self._down():
            raise errors.database_unavailable(key)
        engine = self.engine()
        _, params = engine.dialect.create_connect_args(engine.url)
        try:
            # the URL's keywords, then the bounds (as make_engine's connect_args override the URL's)
            conn = await psycopg.AsyncConnection.connect(
                **{**params, **postgres_connect_args(2, 2.0, generic_plans=True)}, autocommit=True)
        except psycopg.Error as exc:
            self._connect_failed(exc)
            raise errors.database_unavailable(key) from None
        self._connected()
        return conn

    def _close_on_loop(self, *conns) -> None:
        # Closing does not wait on the database (a frozen one would not answer): libpq's socket close.
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    def features(self, key: Any, inline: bool = False) -> dict | None:
        """The features of `key` now, None when no such entity; RequestError 503 when the database fails.

        inline=True (SQLite, on the event loop): within INLINE_LIMIT_SECONDS or OnThread; any other
        failure is OnThread too, so that the thread's attempt reports it."""
        if self._down():  # before taking a slot: while down, a 503 at once
            raise errors.database_unavailable(key)
        now = datetime.now(UTC).replace(tzinfo=None)
        if inline:
            try:
                with self.inline_engine().connect() as conn:
                    return build_online(conn, key, now)
            except (SQLAlchemyError, DatabaseError, FeatureSQLError, OSError):
                raise OnThread from None
        engine = self.engine()
        try:
            conn = engine.connect()
        except (SQLAlchemyError, DatabaseError, OSError) as exc:
            if isinstance(exc, PoolTimeout):  # every connection busy: one line per burst, not per request
                log_pool_full()
            elif self._down_until == 0.0:  # else _connect logged it once
                log.error("by-entity features failed: %s", str(exc).splitlines()[0])
            raise errors.database_unavailable(key) from None
        self._connected()
        try:
            with conn:
                return build_online(conn, key, now)
        except (SQLAlchemyError, DatabaseError, FeatureSQLError, OSError) as exc:
            log.error("by-entity features failed: %s", str(exc).splitlines()[0])
            raise errors.database_unavailable(key) from None

    def close(self) -> None:
        self._close_on_loop(*self._idle)
        self._idle.clear()
        if self._slots is not None:
            self._slots.close()
        for engine in (self._engine, self._inline_engine):
            if engine is not None:
                engine.dispose()
