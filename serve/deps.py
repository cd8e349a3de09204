"""The app's collaborators as FastAPI dependencies, read from `app.state` (set by create_app).

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread
hop per dependency per request (on /predict/user that was two hops, ~10% of a worker's time).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve.models import LoadedModel, ModelStore
from serve.predictor import Predictor
from stack.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> ModelStore:
    return request.app.state.store


async def _predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def _model(request: Request) -> LoadedModel:
    return request.app.state.predictor.serving()  # the 503 when no model is loaded


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ModelStore, Depends(_store)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
ModelDep = Annotated[LoadedModel, Depends(_model)]
