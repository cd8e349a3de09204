"""Scoring without HTTP: check -> route -> score -> observe. The routes are thin wrappers.

Tests, the benchmark and a notebook can call a `Predictor` directly with parsed JSON bodies.
`one()` and `score_entity()` run the model's single-row fast path, which is not thread-safe:
call them from the event loop (or one thread), never from a thread pool.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ab.exposures import ExposureWriter
from features.codec import CODEC, Codec
from features.spec import SPEC
from monitoring import metrics as prom
from monitoring.predictions import PredictionLogWriter
from serve import errors
from serve.models import LoadedModel, ModelStore
from serve.online import OnlineFeatures
from serve.shadow import Shadow
from serve.validation import check_key, check_keys

log = logging.getLogger("serve.predictor")
PREDICT_KEYS, BATCH_KEYS = {"features", "user_id"}, {"rows", "columns"}


class Predictor:
    """The scoring half of the server, given its collaborators."""

    def __init__(self, store: ModelStore, exposures: ExposureWriter, online: OnlineFeatures,
                 max_batch_rows: int, codec: Codec = CODEC, predictions: PredictionLogWriter | None = None,
                 shadow: Shadow | None = None) -> None:
        self.store, self.exposures, self.online = store, exposures, online
        self.max_batch_rows, self.codec = max_batch_rows, codec
        self.predictions = predictions  # the prediction log (None: off)
        self.shadow = shadow  # scores the same rows after the answer, off the request path

    def serving(self) -> LoadedModel:
        """The current model, or the 503 that says why there is none."""
        model = self.store.state.current
        if model is None:
            raise errors.not_ready(self.store.readiness() or "loading")
        return model

    def _routed(self, key: Any) -> tuple[LoadedModel, str | None]:
        """The model (and A/B variant) for a request; records the exposure off the request path."""
        unit = None if key is None else SPEC.entity.canonical(key)
        state = self.store.state
        model, variant = state.route(unit)
        if model is None:
            raise errors.not_ready(self.store.readiness() or "loading")
        if variant is not None:
            self.exposures.record(state.experiment.name, unit, variant, model.version)
        return model, variant

    def _score_row(self, row: list[float], key: Any) -> dict[str, Any]:
        model, variant = self._routed(key)
        started = time.perf_counter()
        score = model.model.score_one(row)
        metrics = model.metrics
        metrics.observe_one(score, time.perf_counter() - started, variant)
        if metrics.inputs is not None:
            metrics.inputs.add(row)
        if self.predictions is not None:
            self.predictions.record(key, model.version, variant, score)
        if self.shadow is not None:
            self.shadow.offer(row, key)
        return {"score": score, "model_version": model.version, "variant": variant}

    def one(self, body: Any) -> dict[str, Any]:
        """POST /predict: {"features": {...}, "user_id": optional} -> score, version, variant."""
        body = check_keys(body, PREDICT_KEYS, {"features"})
        row = self.codec.row(body["features"])
        if row is None:
            raise errors.RequestError(422, self.codec.errors(body["features"], ("features",)))
        return self._score_row(row, check_key(body.get("user_id")))

    def batch(self, body: Any) -> dict[str, Any]:
        """POST /predict/batch: {"rows": [...]} or {"columns": {...}} -> scores in order, version."""
        model = self.serving()
        body = check_keys(body, BATCH_KEYS, set())
        if len(body) != 1:
            raise errors.batch_format(sorted(body))
        if "columns" in body:
            X = self._columns(body["columns"])
        else:
            rows = body["rows"]
            if not isinstance(rows, list) or not rows:
                raise errors.empty_batch()
            if len(rows) > self.max_batch_rows:
                raise errors.batch_too_long(len(rows), self.max_batch_rows)
            X = self.codec.matrix(rows)
            if X is None:
                problems = [e for i, r in enumerate(rows) for e in self.codec.errors(r, ("rows", i))]
                raise errors.RequestError(422, problems[:50])
        started = time.perf_counter()
        scores = model.model.score(X)
        model.metrics.observe_many(scores, time.perf_counter() - started)
        if model.metrics.inputs is not None:
            model.metrics.inputs.add_matrix(X)
        if self.predictions is not None and self.predictions.sample_without_entity > 0:
            record = self.predictions.record
            for score in scores.tolist():  # rows without an entity: the writer keeps a sample
                record(None, model.version, None, score)
        return {"scores": scores.tolist(), "model_version": model.version}

    def _columns(self, columns: Any) -> Any:
        """The matrix of a columnar batch: 413 past MAX_BATCH_ROWS, else 422 naming each problem."""
        if isinstance(columns, dict) and columns and all(isinstance(c, list) for c in columns.values()):
            lengths = set(map(len, columns.values()))
            if len(lengths) == 1 and (n := lengths.pop()) > self.max_batch_rows:  # else 422: lengths differ
                raise errors.batch_too_long(n, self.max_batch_rows, "columns")
        X = self.codec.columns(columns)
        if X is None:
            raise errors.RequestError(422, self.codec.column_errors(columns, ("columns",))[:50])
        return X

    def flush_metrics(self) -> None:
        """Count what every loaded model has buffered now: its /predict scores (ModelMetrics.observe_one)
        and its served inputs (the drift bins)."""
        for model in self.store.state.models.values():
            model.metrics.flush_pending()
            if model.metrics.inputs is not None:
                model.metrics.inputs.flush()

    async def entity_features(self, key: Any) -> dict[str, Any]:
        """The entity's features from the database, read from the event loop within the request
        limit (serve/online.py); 404 when it has no such entity, 503 when the database fails."""
        features = await self.online.read(key)
        if features is None:
            raise errors.entity_not_found(key)
        return features

    def score_entity(self, key: Any, features: dict[str, Any]) -> dict[str, Any]:
        """Score database features: refused (422, counted, logged) when they break the schema."""
        row = self.codec.row(features)
        if row is None:  # the database holds what training and /predict refuse
            problems = self.codec.errors(features, ("features",))
            for problem in problems:
                prom.ONLINE_FEATURE_VIOLATIONS.labels(problem["loc"][-1]).inc()
            log.warning("%s %r: features from the database break the schema: %s", SPEC.entity.name, key,
                        "; ".join(p["msg"] for p in problems))
            raise errors.features_out_of_schema(key, problems)
        return self._score_row(row, key)
