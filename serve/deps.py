"""The app's collaborators as FastAPI dependencies, read from `app.state` (set by create_app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve.models import LoadedModel, ModelStore
from serve.predictor import Predictor
from stack.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _predictor(request: Request) -> Predictor:
    return request.app.state.predictor


def _model(request: Request) -> LoadedModel:
    return request.app.state.predictor.serving()  # the 503 when no model is loaded


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ModelStore, Depends(_store)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
ModelDep = Annotated[LoadedModel, Depends(_model)]
