"""Features computed now from the app database, for POST /predict/user/{id}.

One pool per worker, bounded: a hung or dead database costs a request at most about the pool wait
plus the statement timeout, then a 503; /predict with features in the body never waits on it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from features.build import FeatureSQLError, build_online
from features.db import DatabaseError, make_engine
from serve import errors

log = logging.getLogger("serve.online")


class OnlineFeatures:
    """An entity's features as of now; the engine is made on first use (most servers never need it)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        # Per worker: 4 pooled connections (WEB_CONCURRENCY x 4 in all), no overflow; a request
        # waits at most 1 s for one, the database gets 2 s, then the request is a 503.
        # Autocommit, no pre-ping: one round trip per request (features/db.py make_engine).
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(
                    self.database_url, pool_size=4, max_overflow=0, pool_timeout=1.0, connect_timeout=2,
                    statement_timeout=2.0, autocommit=True, pre_ping=False, create=False)
            return self._engine

    def features(self, key: Any) -> dict | None:
        """The features of `key` now, None when no such entity; RequestError 503 when the database fails."""
        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            with self.engine().connect() as conn:
                return build_online(conn, key, now)
        except (SQLAlchemyError, DatabaseError, FeatureSQLError, OSError) as exc:
            log.error("by-entity features failed: %s", str(exc).splitlines()[0])
            raise errors.database_unavailable(key) from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
