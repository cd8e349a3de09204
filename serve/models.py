"""The models one worker serves, loaded and self-checked off the request path, swapped whole.

Requests read `ModelStore.state` once; a reload builds a new `ServingState` and replaces the
reference in one assignment, so a request sees either the old models or the new, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ab.assign import assign
from ab.config import CURRENT, ConfigError, Experiment, load_experiment
from features.codec import CODEC, Codec
from features.schema import schema_fingerprint
from monitoring import metrics as prom
from registry.meta import SELF_CHECK_TOLERANCE, ModelMeta
from registry.models import Model, self_check_problem
from registry.store import Registry, RegistryError

log = logging.getLogger("serve.models")


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message says why."""


@dataclass
class LoadedModel:
    """One model version ready to score."""

    version: str
    meta: ModelMeta
    model: Model
    metrics: prom.ModelMetrics
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ServingState:
    """Everything a request needs, replaced as a whole on reload."""

    current: LoadedModel | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)
    experiment: Experiment | None = None

    def route(self, user_id: str | None) -> tuple[LoadedModel | None, str | None]:
        """The model for this request and its A/B variant (None outside an experiment)."""
        if self.experiment is None or user_id is None:
            return self.current, None
        variant = assign(self.experiment, user_id)
        if variant.model == CURRENT:
            return self.current, variant.name
        return self.models[variant.model], variant.name


def load_model(registry: Registry, version: str, codec: Codec) -> LoadedModel:
    """Load `version`, refuse it if this server cannot serve it faithfully, self-check it."""
    try:
        model, meta = registry.load(version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None
    mismatched = meta.library_mismatches()
    if mismatched:
        detail = ", ".join(f"{k} trained {a} / serving {b}" for k, (a, b) in mismatched.items())
        raise ModelLoadError(f"model {version}: library versions differ ({detail}); retrain with this image")
    if meta.schema_fingerprint != schema_fingerprint():
        raise ModelLoadError(f"model {version}: feature schema {meta.schema_fingerprint} differs from "
                             f"this server's {schema_fingerprint()}; deploy the matching server code")
    try:
        encoded = codec.matrix([r.features for r in meta.self_check])
        if encoded is None:
            problems = "; ".join(e["msg"] for r in meta.self_check for e in codec.errors(r.features, ("features",)))
            raise ModelLoadError(f"model {version}: self-check rows break the feature schema: {problems}")
        problem = self_check_problem(model, encoded, [r.expected for r in meta.self_check], SELF_CHECK_TOLERANCE)
        if problem:
            raise ModelLoadError(f"model {version}: {problem}")
        model_metrics = prom.register_model(version, meta.model_type, meta.created_at, meta.score_baseline)
    except ModelLoadError:
        raise
    except Exception as exc:  # a broken artifact can fail in many ways; none may crash the worker
        raise ModelLoadError(f"model {version}: {type(exc).__name__}: {exc}") from None
    return LoadedModel(version, meta, model, model_metrics)


def _servable(experiment: Experiment | None, models: dict[str, LoadedModel]) -> bool:
    """True when every model the experiment pins is loaded (or there is no experiment)."""
    return experiment is None or all(v.model == CURRENT or v.model in models for v in experiment.variants)


class ModelStore:
    """Follows `current` and the A/B config, and keeps every model they name loaded."""

    def __init__(self, registry: Registry, ab_config: Path | None = None) -> None:
        self.registry = registry
        self.ab_config = ab_config
        self.codec = CODEC
        self.state = ServingState()
        self.failed: dict[str, str] = {}  # version -> why it was refused (not retried until forced)
        self.config_error: str | None = None
        self._config_stamp: tuple[float, int] | None = None
        self._experiment: Experiment | None = None
        self._lock = threading.Lock()

    def _read_experiment(self, force: bool) -> Experiment | None:
        """The A/B experiment; on a bad config, the last good one (the error is kept for /model)."""
        path = self.ab_config
        if path is None:
            return None
        try:
            st = path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._config_stamp and not force:
            return self._experiment
        try:
            experiment = load_experiment(path, available=self.registry.versions())
        except ConfigError as exc:
            if self.config_error != str(exc):
                log.error("A/B config %s refused, keeping the last good one: %s", path, exc)
            self.config_error = str(exc)
            return self._experiment
        self._config_stamp, self._experiment, self.config_error = stamp, experiment, None
        return experiment

    def readiness(self) -> str | None:
        """Why this worker cannot score now (None: it can). The one readiness rule: /ready, the
        503 of every scoring route and the startup log all use it."""
        if self.state.current is not None:
            return None
        wanted = self.registry.current()
        if wanted is None:
            return "no model deployed (run `make train`)"
        return "the current model was refused: " + self.failed.get(wanted, "loading")

    def refresh(self, force: bool = False) -> bool:
        """Load what `current` and the A/B config name if it changed; True when anything changed."""
        with self._lock:
            state = self.state
            wanted = self.registry.current()
            experiment = self._read_experiment(force)
            pinned = sorted({v.model for v in experiment.variants if v.model != CURRENT}) if experiment else []
            names = ([wanted] if wanted else []) + [v for v in pinned if v != wanted]
            unchanged = (state.current.version if state.current else None) == wanted and \
                experiment is state.experiment and set(state.models) == set(names)
            if unchanged and not force:
                return False
            t0 = time.perf_counter()
            models: dict[str, LoadedModel] = {}
            for name in names:
                if name in state.models:
                    models[name] = state.models[name]
                    continue
                if name in self.failed and not force:
                    continue
                try:
                    models[name] = load_model(self.registry, name, self.codec)
                    self.failed.pop(name, None)
                except ModelLoadError as exc:
                    self.failed[name] = str(exc)
                    prom.MODEL_RELOAD_FAILURES.inc()
                    log.error("model %s refused; still serving %s: %s", name,
                              state.current.version if state.current else "nothing", exc)
            current = models.get(wanted) if wanted else None
            if current is None and state.current is not None:
                current = state.current  # a refused `current` leaves the old model serving
                models.setdefault(current.version, current)
            if not _servable(experiment, models):
                log.error("A/B experiment %s names a model that cannot be served; keeping the previous "
                          "routing", experiment.name)
                experiment = state.experiment if _servable(state.experiment, models) else None
            new = ServingState(current=current, models=models, experiment=experiment)
            if (new.current is state.current and new.experiment is state.experiment
                    and set(new.models) == set(state.models)):
                return False
            self.state = new
            for version, old in state.models.items():
                if version not in models:
                    old.metrics.retire()
            log.info("serving %s%s (was %s), ready in %.2fs",
                     current.version if current else "nothing",
                     f", A/B experiment {experiment.name}" if experiment else "",
                     state.current.version if state.current else None, time.perf_counter() - t0)
            return True
