"""The FastAPI app: create_app() builds it from its collaborators; gunicorn's workers each run one.

Hot path (/predict): bytes -> orjson -> schema check -> encode -> one C call -> orjson.
No pandas, no pydantic model, no thread-pool hop. The by-user path talks to the database
in the thread pool, so a slow database never blocks /predict. The parts: serve/routes.py (HTTP),
serve/predictor.py (scoring without HTTP), serve/models.py (the models a worker serves),
serve/online.py (features from the database), serve/errors.py (every error body),
serve/middleware.py (request ids, body limit, HTTP metrics), serve/deps.py (dependencies).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ab.exposures import ExposureWriter
from features.spec import SPEC
from monitoring.predictions import PredictionLogWriter
from monitoring.realized import RealizedExport
from registry import open_registry
from serve.errors import RequestError
from serve.middleware import Observability
from serve.models import ModelStore
from serve.online import OnlineFeatures
from serve.predictor import Predictor
from serve.reload import ReloadRequests
from serve.routes import json_response, router
from serve.shadow import Shadow
from stack.settings import Settings

log = logging.getLogger("serve.app")


def create_app(settings: Settings, *, store: ModelStore | None = None, exposures: ExposureWriter | None = None,
               online: OnlineFeatures | None = None, predictions: PredictionLogWriter | None = None) -> FastAPI:
    """The app; collaborators default to the ones `settings` describes (tests pass their own)."""
    store = store or ModelStore(open_registry(settings.model_dir, settings.model_cache_dir), settings.ab_config)
    reloads = ReloadRequests(settings.prometheus_multiproc_dir)
    exposures = exposures or ExposureWriter.from_settings(settings)
    online = online or OnlineFeatures(settings.database_url)
    if predictions is None and settings.prediction_log:
        predictions = PredictionLogWriter.from_settings(settings)
    shadow = Shadow(store.registry, settings.ab_config, predictions)  # `shadow:` in the A/B config
    predictor = Predictor(store, exposures, online, settings.max_batch_rows, predictions=predictions,
                          shadow=shadow)
    realized = RealizedExport.of(store.registry)  # model_realized_* from the quality job

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(store.refresh)
        except Exception:  # a worker that cannot load yet still starts, answers 503 and keeps polling
            log.exception("first model load failed")
        if store.state.current is None:
            log.warning("no model is being served yet: %s; /ready answers 503 until one loads", store.readiness())
        await asyncio.to_thread(realized.refresh)
        shadow.start()
        poller = asyncio.create_task(_poll(store, settings.model_poll_seconds, reloads, predictor, realized))
        yield
        poller.cancel()
        predictor.flush_metrics()  # the last scores and inputs of this worker, before it exits
        await asyncio.to_thread(shadow.close, 2.0)
        await asyncio.to_thread(exposures.close, 5.0)
        if predictions is not None:
            await asyncio.to_thread(predictions.close, 5.0)
        online.close()

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
    app.state.settings, app.state.store, app.state.predictor = settings, store, predictor
    app.state.reloads = reloads
    app.add_exception_handler(RequestError, _request_error)
    app.include_router(router(settings.max_batch_rows))
    return app


async def _request_error(_request: Request, exc: RequestError) -> Response:
    return json_response(exc.body(), exc.status)


def worker_app() -> FastAPI:
    """What gunicorn runs (`serve.app:worker_app()`): the app of this process's settings."""
    from stack.settings import get_settings

    settings = get_settings()
    store = ModelStore(open_registry(settings.model_dir, settings.model_cache_dir), settings.ab_config)
    try:  # load before the worker listens (serve/worker.py opens its socket after this returns)
        store.refresh()
    except Exception:
        log.exception("first model load failed")
    return create_app(settings, store=store)


async def _poll(store: ModelStore, every: float, reloads: ReloadRequests, predictor: Predictor, realized: RealizedExport) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            predictor.flush_metrics()  # on the loop, like the requests that fill the buffers
            await asyncio.to_thread(realized.refresh)
            await asyncio.to_thread(store.refresh, reloads.pending())  # another worker's /admin/reload: force
        except Exception:  # the poller must outlive any one bad reload
            log.exception("model poll failed")
