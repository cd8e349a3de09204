"""A shadow model: scores what the serving model scored, after the answer, and never answers.

The A/B config names it beside the experiment (`shadow: {model: <version>}`, ab/config.py). The
request path only appends the encoded row to a queue (offer); a thread of its own loads the
version, self-checks it, scores the queue in batches, counts the scores into
model_shadow_prediction_score and sends them to the prediction log as `shadow`. Nothing here
can fail, slow or change a response: a shadow that fails to load or to score is counted
(model_shadow_errors_total) and logged, and serving goes on without it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ab.config import ConfigError, load_shadow
from features.codec import CODEC, Codec
from features.schema import schema_fingerprint
from monitoring import metrics as prom
from monitoring.client_internals import bulk_observe
from monitoring.predictions import SHADOW, PredictionLogWriter
from registry.meta import SELF_CHECK_TOLERANCE
from registry.models import Model, self_check_problem
from registry.store import Registry

log = logging.getLogger("serve.shadow")


class Shadow:
    """Follows the shadow version named in the A/B config and scores offered rows off the request path."""

    def __init__(self, registry: Registry, config: Path | None, predictions: PredictionLogWriter | None,
                 codec: Codec = CODEC, max_queue: int = 20_000, interval: float = 0.5) -> None:
        self.registry, self.config, self.predictions, self.codec = registry, config, predictions, codec
        self.max_queue, self.interval = max_queue, interval
        self.version: str | None = None  # the shadow being scored; None: none
        self.error: str | None = None  # why the named shadow is not scored (for people and tests)
        self._model: Model | None = None
        self._wanted: str | None = None
        self._queue: deque[tuple[Any, list[float], Any]] = deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.scored_total = 0

    # -- the request path ---------------------------------------------------------------------

    def offer(self, row: list[float], key: Any) -> None:
        """Queue one scored request for the shadow: O(1), never raises, nothing when there is none."""
        if self._model is None:
            return
        queue = self._queue
        if len(queue) >= self.max_queue:
            with contextlib.suppress(Exception):
                prom.MODEL_SHADOW_ERRORS.labels("queue_full").inc()
            return
        queue.append((time.time(), row, key))

    # -- the shadow's own thread --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.config is not None:
            self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_refresh:
                    self.refresh()
                    next_refresh = time.monotonic() + 5.0
                self.score_queued()
            except Exception:  # the shadow thread must outlive anything the shadow does
                log.exception("shadow scorer")
            self._stop.wait(self.interval)

    def refresh(self) -> None:
        """Load the version the config names if it changed; on any failure, no shadow (counted)."""
        try:
            wanted = load_shadow(self.config) if self.config is not None else None
        except ConfigError as exc:
            wanted, self.error = None, str(exc)
        if wanted == self._wanted:
            return
        self._wanted, self._model, self.version = wanted, None, None
        self._queue.clear()
        if wanted is None:
            return
        try:
            self._model = self._load(wanted)
            self.version, self.error = wanted, None
            log.info("shadow model %s loaded; it scores every request after the answer", wanted)
        except Exception as exc:  # a broken shadow never reaches serving
            self.error = f"shadow model {wanted}: {type(exc).__name__}: {exc}"
            prom.MODEL_SHADOW_ERRORS.labels("load").inc()
            log.error("%s; serving goes on without a shadow", self.error)

    def _load(self, version: str) -> Model:
        model, meta = self.registry.load(version)
        mismatched = meta.library_mismatches()
        if mismatched:
            raise ValueError(f"library versions differ: {mismatched}")
        if meta.schema_fingerprint != schema_fingerprint():
            raise ValueError(f"feature schema {meta.schema_fingerprint} differs from this server's")
        encoded = self.codec.matrix([r.features for r in meta.self_check])
        if encoded is None:
            raise ValueError("self-check rows break the feature schema")
        problem = self_check_problem(model, encoded, [r.expected for r in meta.self_check], SELF_CHECK_TOLERANCE)
        if problem:
            raise ValueError(problem)
        return model

    def score_queued(self) -> int:
        """Score what is queued, in one batch; the number scored."""
        model, version, queue = self._model, self.version, self._queue
        batch = []
        while queue and len(batch) < 5000:
            batch.append(queue.popleft())
        if not batch or model is None or version is None:
            return 0
        import numpy as np

        try:
            scores = model.score(np.asarray([row for _, row, _ in batch], dtype=np.float64))
            bulk_observe(prom.MODEL_SHADOW_SCORE.labels(version), scores)
        except Exception as exc:
            prom.MODEL_SHADOW_ERRORS.labels("score").inc()
            log.warning("shadow model %s failed to score %d rows: %s", version, len(batch), exc)
            return 0
        if self.predictions is not None:
            record = self.predictions.record
            for (_, _, key), score in zip(batch, scores.tolist(), strict=True):
                record(key, version, None, score, SHADOW)
        self.scored_total += len(batch)
        return len(batch)
