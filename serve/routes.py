"""The HTTP API: each route parses, calls the predictor or the store, and writes JSON.

/predict reads its predictor straight from `request.app.state` (no dependency resolution on
the hot path); the other routes use the dependencies of serve/deps.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from features.schema import example_features, schema_as_dicts
from features.spec import SPEC
from monitoring import metrics as prom
from serve import errors
from serve.deps import ModelDep, PredictorDep, SettingsDep, StoreDep
from serve.validation import (
    body_key_json_schema,
    check_path_key,
    feature_json_schema,
    key_json_schema,
    parse_json,
)

log = logging.getLogger("serve.routes")
JSON = "application/json"
# What GET /model shows of each model's meta.json
MODEL_FIELDS = {"version", "created_at", "model_type", "git_commit", "data_fingerprint", "metrics", "params",
                "library_versions", "rows", "as_of_dates", "notes", "schema_fingerprint"}


def json_response(content: Any, status_code: int = 200) -> Response:
    """orjson-encoded response (several times faster than the stdlib encoder)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def _body(schema: dict, example: dict) -> dict:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema, "example": example}}}}


def router(max_batch_rows: int) -> APIRouter:
    """Every route; the request schemas and examples come from the feature spec."""
    api = APIRouter()
    features, example = feature_json_schema(), example_features()
    predict_spec = _body(
        {"type": "object", "properties": {"features": features, "user_id": body_key_json_schema()},
         "required": ["features"], "additionalProperties": False},
        {"features": example, "user_id": SPEC.entity.example}) | errors.openapi_responses(400, 413, 422, 503)
    # rows of feature objects, or the same values as columns (a third of the parsing per row)
    columns = {"type": "object", "minProperties": 1, "additionalProperties": False,
               "required": features["required"], "description": "feature -> its values, one per row; every "
               "list the same length; a nullable feature left out is null in every row",
               "properties": {name: {"type": "array", "items": schema, "minItems": 1, "maxItems": max_batch_rows}
                              for name, schema in features["properties"].items()}}
    batch_spec = _body(
        {"oneOf": [
            {"type": "object", "properties": {"rows": {"type": "array", "items": features, "minItems": 1,
                                                       "maxItems": max_batch_rows}},
             "required": ["rows"], "additionalProperties": False},
            {"type": "object", "properties": {"columns": columns}, "required": ["columns"],
             "additionalProperties": False}]},
        {"rows": [example, example]}) | errors.openapi_responses(400, 413, 422, 503)
    user_spec = {"parameters": [{"name": "user_id", "in": "path", "required": True, "schema": key_json_schema(),
                                 "example": SPEC.entity.example}]} | errors.openapi_responses(404, 413, 422, 503)

    @api.post("/predict", openapi_extra=predict_spec, summary="Score one row of features")
    async def predict(request: Request) -> Response:
        return json_response(request.app.state.predictor.one(parse_json(await request.body())))

    @api.post("/predict/batch", openapi_extra=batch_spec, summary="Score up to MAX_BATCH_ROWS rows, "
              "sent as rows or as columns")
    async def predict_batch(request: Request, predictor: PredictorDep) -> Response:
        return json_response(predictor.batch(parse_json(await request.body())))

    @api.post("/predict/user/{user_id}", openapi_extra=user_spec,
              summary=f"Score a {SPEC.entity.name} with features computed now from the database")
    async def predict_user(request: Request, predictor: PredictorDep, _ready: ModelDep) -> Response:
        key = check_path_key(request.path_params["user_id"])  # not a signature parameter: one documented path id
        features = await predictor.entity_features(key)  # a 503 after REQUEST_LIMIT_SECONDS (serve/online.py)
        return json_response(predictor.score_entity(key, features))  # on the loop: score_one is not thread-safe

    @api.get("/health", summary="Liveness: the process answers")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @api.get("/ready", summary="Readiness: a model is loaded and self-checked", openapi_extra={"responses": {
        "503": {"description": "Not ready: no model is loaded; `reason` says why.", "content": {JSON: {"schema": {
            "type": "object", "required": ["status", "reason"],
            "properties": {"status": {"type": "string"}, "reason": {"type": "string"}}}}}}}})
    async def ready(store: StoreDep) -> Response:
        reason = store.readiness()
        if reason is not None:
            return json_response({"status": "not ready", "reason": reason}, 503)
        return json_response({"status": "ready", "model_version": store.state.current.version,
                              "fallback": store.fallback})

    @api.get("/model", summary="Metadata of the serving model(s), including the feature schema",
             openapi_extra=errors.openapi_responses(503))
    async def model_info(store: StoreDep, _ready: ModelDep) -> Response:
        state = store.state
        return json_response({
            "current": state.current.version,
            "models": {v: m.meta.model_dump(mode="json", include=MODEL_FIELDS) for v, m in state.models.items()},
            "experiment": None if state.experiment is None else {
                "name": state.experiment.name,
                "variants": [{"name": v.name, "weight": v.weight, "model": v.model} for v in state.experiment.variants],
            },
            "ab_config_error": store.config_error,
            "feature_schema": schema_as_dicts(),
            "refused": store.failed,
            "fallback": store.fallback,
        })

    @api.get("/metrics", summary="Prometheus metrics (all workers)")
    async def metrics(request: Request) -> Response:
        request.app.state.predictor.flush_metrics()
        body, content_type = prom.render_latest()
        return Response(body, media_type=content_type)

    @api.post("/admin/reload", summary="Reload `current` now, retrying refused versions (bearer ADMIN_TOKEN; "
              "disabled when unset)", description="The worker that receives it reloads at once; every other "
              "worker of the server reloads within MODEL_POLL_SECONDS (serve/reload.py).",
              openapi_extra=errors.openapi_responses(401, 404))
    async def admin_reload(request: Request, settings: SettingsDep, store: StoreDep) -> Response:
        if not settings.admin_token:
            raise errors.admin_disabled()
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.admin_token}".encode()):
            prom.ADMIN_AUTH_FAILURES.inc()
            client = request.client.host if request.client else "unknown"
            log.warning("POST /admin/reload refused: %s bearer token from %s",
                        "a wrong" if given else "no", client)
            raise errors.unauthorized()
        changed = await asyncio.to_thread(store.refresh, True)
        others = request.app.state.reloads.request()
        current = store.state.current
        return json_response({"changed": changed, "model_version": current.version if current else None,
                              "worker_pid": os.getpid(), "refused": store.failed,
                              "other_workers": f"reload within MODEL_POLL_SECONDS={settings.model_poll_seconds:g}s"
                              if others else "not reached (no shared PROMETHEUS_MULTIPROC_DIR)"})

    return api
