"""The FastAPI app: create_app() builds it; gunicorn's workers each run one.

Hot path (/predict): bytes -> orjson -> schema check -> encode -> one C call -> orjson.
No pandas, no pydantic model, no thread-pool hop. The by-user path talks to the database
in the thread pool, so a slow database never blocks /predict.
"""


import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ab.exposures import ExposureWriter
from features.codec import CODEC
from features.schema import example_features, schema_as_dicts
from features.spec import SPEC
from monitoring import metrics as prom
from registry.store import Registry
from serve.logs import request_id
from serve.models import LoadedModel, ModelStore
from serve.validation import (
    RequestError,
    check_key,
    check_keys,
    check_path_key,
    feature_json_schema,
    key_json_schema,
    parse_json,
)
from stack.settings import Settings, get_settings

log = logging.getLogger("serve.app")
JSON = "application/json"


def json_response(content: Any, status_code: int = 200) -> Response:
    """orjson-encoded response (several times faster than the stdlib encoder)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


class Observability:
    """Pure ASGI middleware: request id, body size limit, HTTP metrics, no 500 without a log."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
            elif name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return await self._too_large(scope, send, t0)
        rid = rid or uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            status = 413
            await self._too_large(scope, send)
        finally:
            route = scope.get("route")
            prom.observe_http(getattr(route, "path", "unmatched"), scope["method"], status,
                              time.perf_counter() - t0)
            request_id.reset(token)

    async def _too_large(self, scope, send, t0: float | None = None) -> None:
        """Answer 413; counted here only when the middleware's own accounting did not run."""
        body = orjson.dumps({"detail": [{"loc": ["body"], "type": "body_too_large",
                                         "msg": f"request body is larger than {self.max_body} bytes"}]})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if t0 is not None:
            prom.observe_http("unmatched", scope["method"], 413, time.perf_counter() - t0)


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app with its model store; gunicorn calls this once per worker."""
    settings = settings or get_settings()
    store = ModelStore(Registry(settings.model_dir), settings.ab_config)
    exposures = ExposureWriter.from_settings(settings)
    codec = CODEC
    engine_box: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(store.refresh)
        # Everything loaded so far lives as long as the worker: keep it out of GC passes, and make
        # young-generation passes rarer (fewer pauses in the latency tail). Measured in make bench.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        if store.state.current is None:
            log.warning("no model is being served yet: %s; /ready answers 503 until one loads",
                        "run `make train`" if store.registry.current() is None else "the current model was refused")
        poller = asyncio.create_task(_poll(store, settings.model_poll_seconds))
        yield
        poller.cancel()
        await asyncio.to_thread(exposures.close, 5.0)
        if "engine" in engine_box:
            engine_box["engine"].dispose()

    app = FastAPI(
        title="Boring ML Stack: model server",
        version="1",
        description=f"{SPEC.task} Scores are probabilities of `{SPEC.label.name}` "
                    f"(one {SPEC.entity.name} per request, keyed by `{SPEC.entity.key}`). "
                    "Request fields come from the feature schema (GET /model; features/spec.yml).",
        lifespan=lifespan,
        default_response_class=Response,
    )
    app.add_middleware(Observability, max_body_bytes=settings.max_body_bytes)
    app.state.store = store

    @app.exception_handler(RequestError)
    async def _bad_request(_request: Request, exc: RequestError) -> Response:
        return json_response(exc.body(), exc.status)

    def serving_model() -> LoadedModel:
        model = store.state.current
        if model is None:
            raise RequestError(503, [{"loc": [], "type": "not_ready",
                                      "msg": "no model is loaded yet; see GET /ready"}])
        return model

    ModelDep = Annotated[LoadedModel, Depends(serving_model)]

    def routed(key: str | int | None) -> tuple[LoadedModel, str | None]:
        """The model (and A/B variant) for a request; records the exposure off the request path."""
        user_id = None if key is None else SPEC.entity.canonical(key)
        state = store.state
        model, variant = state.route(user_id)
        if model is None:
            raise RequestError(503, [{"loc": [], "type": "not_ready",
                                      "msg": "no model is loaded yet; see GET /ready"}])
        if variant is not None:
            exposures.record(state.experiment.name, user_id, variant, model.version)
        return model, variant
    features_schema = feature_json_schema()
    example = example_features()

    def body_spec(schema: dict, example_body: dict) -> dict:
        return {"requestBody": {"required": True, "content": {JSON: {"schema": schema, "example": example_body}}}}

    predict_spec = body_spec(
        {"type": "object", "properties": {"features": features_schema, "user_id": key_json_schema()},
         "required": ["features"], "additionalProperties": False},
        {"features": example, "user_id": SPEC.entity.example},
    )
    batch_spec = body_spec(
        {"type": "object", "properties": {"rows": {"type": "array", "items": features_schema,
                                                    "maxItems": settings.max_batch_rows}},
         "required": ["rows"], "additionalProperties": False},
        {"rows": [example, example]},
    )

    def score_one(row: list[float], key: str | int | None) -> Response:
        model, variant = routed(key)
        started = time.perf_counter()
        score = model.model.score_one(row)
        model.metrics.observe(score, time.perf_counter() - started, variant)
        return json_response({"score": score, "model_version": model.version, "variant": variant})

    @app.post("/predict", openapi_extra=predict_spec, summary="Score one row of features")
    async def predict(request: Request) -> Response:
        body = check_keys(parse_json(await request.body()), {"features", "user_id"}, {"features"})
        row = codec.row(body["features"])
        if row is None:
            raise RequestError(422, codec.errors(body["features"], ("features",)))  # names every problem
        return score_one(row, check_key(body.get("user_id")))

    @app.post("/predict/batch", openapi_extra=batch_spec, summary="Score up to MAX_BATCH_ROWS rows")
    async def predict_batch(request: Request, model: ModelDep) -> Response:
        body = check_keys(parse_json(await request.body()), {"rows"}, {"rows"})
        rows = body["rows"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(422, [{"loc": ["body", "rows"], "type": "list_type", "input": None,
                                      "msg": "rows: must be a non-empty list of feature objects"}])
        if len(rows) > settings.max_batch_rows:
            raise RequestError(413, [{"loc": ["body", "rows"], "type": "too_long", "input": len(rows),
                                      "msg": f"rows: {len(rows)} rows is more than MAX_BATCH_ROWS={settings.max_batch_rows}"}])
        X = codec.matrix(rows)
        if X is None:
            errors = [e for i, r in enumerate(rows) for e in codec.errors(r, ("rows", i))]
            raise RequestError(422, errors[:50])
        started = time.perf_counter()
        scores = model.model.score(X)
        model.metrics.observe_many(scores, time.perf_counter() - started)
        scores = scores.tolist()
        return json_response({"scores": scores, "model_version": model.version})

    def engine():
        # Per worker: 4 pooled connections (WEB_CONCURRENCY x 4 in all), no overflow; a request
        # waits at most 1 s for one, the database gets 2 s, then the request is a 503.
        # Autocommit, no pre-ping: one round trip per request (features/db.py make_engine).
        if "engine" not in engine_box:
            from features.db import make_engine

            engine_box["engine"] = make_engine(
                settings.database_url, pool_size=4, max_overflow=0, pool_timeout=1.0, connect_timeout=2,
                statement_timeout=2.0, autocommit=True, pre_ping=False)
        return engine_box["engine"]

    def online_features(key: str | int) -> dict | None:
        from sqlalchemy.exc import SQLAlchemyError

        from features.build import FeatureSQLError, build_online
        from features.db import DatabaseError

        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            with engine().connect() as conn:
                return build_online(conn, key, now)
        except (SQLAlchemyError, DatabaseError, FeatureSQLError, OSError) as exc:
            log.error("by-user features failed: %s", str(exc).splitlines()[0])
            raise RequestError(503, [{"loc": ["path", "user_id"], "type": "database_unavailable", "input": key,
                                      "msg": "the feature database is unavailable; POST /predict with "
                                             "features still works"}]) from None

    @app.post("/predict/user/{user_id}", summary=f"Score a {SPEC.entity.name} with features computed now "
              "from the database", openapi_extra={"parameters": [{
                  "name": "user_id", "in": "path", "required": True, "schema": key_json_schema(),
                  "example": SPEC.entity.example}]})
    async def predict_user(user_id: str, _ready: ModelDep) -> Response:
        key = check_path_key(user_id)
        features = await run_in_threadpool(online_features, key)
        if features is None:
            raise RequestError(404, [{"loc": ["path", "user_id"], "type": "not_found", "input": key,
                                      "msg": f"{SPEC.entity.name} {key!r} not found"}])
        row = codec.row(features)
        if row is None:  # the database holds what training and /predict refuse: refuse, count, log
            problems = codec.errors(features, ("features",))
            for problem in problems:
                prom.ONLINE_FEATURE_VIOLATIONS.labels(problem["loc"][-1]).inc()
            log.warning("%s %r: features from the database break the schema: %s", SPEC.entity.name, key,
                        "; ".join(p["msg"] for p in problems))
            raise RequestError(422, [{**p, "loc": ["database", *p["loc"][1:]], "type": "feature_out_of_schema",
                                      "msg": f"{SPEC.entity.name} {key!r}: the database's {p['msg']}"}
                                     for p in problems])
        return score_one(row, key)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready", summary="Readiness: a model is loaded and self-checked")
    async def ready() -> Response:
        model = store.state.current
        if model is None:
            reason = "no model deployed (run `make train`)" if store.registry.current() is None else \
                "the current model was refused: " + store.failed.get(store.registry.current() or "", "loading")
            return json_response({"status": "not ready", "reason": reason}, 503)
        return json_response({"status": "ready", "model_version": model.version})

    @app.get("/model", summary="Metadata of the serving model(s), including the feature schema")
    async def model_info() -> Response:
        state = store.state
        if state.current is None:
            raise RequestError(503, [{"loc": [], "type": "not_ready", "msg": "no model is loaded yet"}])
        keep = ("version", "created_at", "model_type", "git_commit", "data_fingerprint", "metrics",
                "params", "library_versions", "rows", "as_of_dates", "notes", "schema_fingerprint")
        return json_response({
            "current": state.current.version,
            "models": {v: m.meta.model_dump(mode="json", include=set(keep)) for v, m in state.models.items()},
            "experiment": None if state.experiment is None else {
                "name": state.experiment.name,
                "variants": [{"name": v.name, "weight": v.weight, "model": v.model} for v in state.experiment.variants],
            },
            "ab_config_error": store.config_error,
            "feature_schema": schema_as_dicts(),
            "refused": store.failed,
        })

    @app.get("/metrics", summary="Prometheus metrics (all workers)")
    async def metrics() -> Response:
        body, content_type = prom.render_latest()
        return Response(body, media_type=content_type)

    @app.post("/admin/reload", summary="Reload `current` now (bearer ADMIN_TOKEN; disabled when unset)")
    async def admin_reload(request: Request) -> Response:
        if not settings.admin_token:
            raise RequestError(404, [{"loc": [], "type": "disabled", "msg": "admin endpoints are disabled: set ADMIN_TOKEN"}])
        import secrets

        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.admin_token}".encode()):
            raise RequestError(401, [{"loc": ["header", "authorization"], "type": "unauthorized",
                                      "msg": "missing or wrong bearer token"}])
        changed = await asyncio.to_thread(store.refresh, True)
        current = store.state.current
        return json_response({"changed": changed, "model_version": current.version if current else None,
                              "worker_pid": __import__("os").getpid(), "refused": store.failed})

    return app


async def _poll(store: ModelStore, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(store.refresh)
        except Exception:  # the poller must outlive any one bad reload
            log.exception("model poll failed")
