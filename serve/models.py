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
from registry.store import Registry, RegistryError, RegistryUnavailable

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
    except RegistryUnavailable:
        raise  # the store did not answer: nothing is wrong with the version, try again next poll
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
        model_metrics = prom.register_model(version, meta.model_type, meta.created_at, meta.score_baseline,
                                            meta.feature_baselines, meta.metrics)
    except ModelLoadError:
        raise
    except Exception as exc:  # a broken artifact can fail in many ways; none may crash the worker
        raise ModelLoadError(f"model {version}: {type(exc).__name__}: {exc}") from None
    return LoadedModel(version, meta, model, model_metrics)


def _servable(experiment: Experiment | None, models: dict[str, LoadedModel]) -> bool:
    """True when every model the experiment pins is loaded (or there is no experiment)."""
    return experiment is None or all(v.model == CURRENT or v.model in models for v in experiment.variants)


CURRENT_FILE = "current"  # the key under which an unreadable `current` file is listed in `failed`


class ModelStore:
    """Follows `current` and the A/B config, and keeps every model they name loaded.

    When `current` cannot be served (refused, unreadable) the store keeps the model it had; a
    worker that has none falls back to the newest version history.csv says was deployed that
    loads and self-checks. /ready and /model say so (`fallback`), and model_serving_fallback is 1.
    """

    def __init__(self, registry: Registry, ab_config: Path | None = None) -> None:
        self.registry = registry
        self.ab_config = ab_config
        self.codec = CODEC
        self.state = ServingState()
        self.failed: dict[str, str] = {}  # version (or "current") -> why it was refused (not retried until forced)
        self.config_error: str | None = None
        self.fallback: str | None = None  # why the version served is not the one `current` names
        self._fallback_gauge = None
        self._config_stamp: tuple[float, int] | None | str = "unread"
        self._config_ever_loaded = False  # a refused config at a fresh start serves nothing (readiness says why)
        self._experiment: Experiment | None = None
        self.unreachable: str | None = None  # why the registry's store did not answer on the last poll
        self._lock = threading.Lock()

    def _unreachable(self, exc: RegistryUnavailable) -> None:
        """The store did not answer: count it, log the first of an outage, keep serving what we have."""
        prom.MODEL_REGISTRY_ERRORS.inc()
        if self.unreachable is None:
            serving = self.state.current.version if self.state.current else "nothing"
            log.error("model registry unreachable; still serving %s, retrying every poll: %s", serving, exc)
        self.unreachable = str(exc)

    def _reachable(self) -> None:
        if self.unreachable is not None:
            log.warning("model registry reachable again (was: %s)", self.unreachable)
            self.unreachable = None

    def _refuse(self, name: str, reason: str) -> None:
        """Record a refusal: counted and logged once per distinct reason, listed under `refused`."""
        if self.failed.get(name) == reason:
            return
        self.failed[name] = reason
        prom.MODEL_RELOAD_FAILURES.inc()
        serving = self.state.current.version if self.state.current else "nothing"
        log.error("%s refused; still serving %s: %s", "`current`" if name == CURRENT_FILE else f"model {name}",
                  serving, reason)

    def _read_experiment(self, force: bool) -> Experiment | None:
        """The A/B experiment; on a bad config, the last good one (the error is kept for /model)."""
        path = self.ab_config
        if path is None:
            return None
        try:
            st = path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._config_stamp and not force:
            return self._experiment
        try:
            available = self.registry.versions()
        except RegistryUnavailable as exc:  # read the config again on the next poll
            self._unreachable(exc)
            return self._experiment
        try:
            experiment = load_experiment(path, available=available)
        except Exception as exc:  # ConfigError, or anything a malformed file raises: never stop the poll
            reason = str(exc) if isinstance(exc, ConfigError) else f"{path}: {type(exc).__name__}: {exc}"
            if self.config_error != reason:
                log.error("A/B config %s refused, keeping the last good one: %s", path, reason)
                prom.MODEL_RELOAD_FAILURES.inc()
            self.config_error = reason
            self._config_stamp = stamp  # re-read when the file changes, not every poll
            return self._experiment
        if self._experiment is not None and experiment is None:
            log.warning("A/B config %s %s: experiment %s ended, every request now gets `current`", path,
                        "is gone" if stamp is None else "names no experiment", self._experiment.name)
        self._config_stamp, self._experiment, self.config_error = stamp, experiment, None
        self._config_ever_loaded = True
        return experiment

    def readiness(self) -> str | None:
        """Why this worker cannot score now (None: it can). The one readiness rule: /ready, the
        503 of every scoring route and the startup log all use it."""
        if self.state.current is not None:
            return None
        if self.config_error and not self._config_ever_loaded:
            return f"the A/B config was refused: {self.config_error}"
        if CURRENT_FILE in self.failed:
            return f"`current` is unreadable and no earlier version loads: {self.failed[CURRENT_FILE]}"
        try:
            wanted = self.registry.current()
        except RegistryError as exc:
            return str(exc)
        if wanted is None:
            return "no model deployed (run `make train`)"
        return "the current model was refused: " + self.failed.get(wanted, "loading")

    def _wanted(self) -> str | None:
        """The version `current` names; on an unreadable file, the one being served (or None)."""
        try:
            wanted = self.registry.current()
        except RegistryUnavailable as exc:  # not a refusal: nothing is known to be wrong with `current`
            self._unreachable(exc)
            return self.state.current.version if self.state.current else None
        except RegistryError as exc:
            self._refuse(CURRENT_FILE, str(exc))
            return self.state.current.version if self.state.current else None
        self._reachable()
        self.failed.pop(CURRENT_FILE, None)
        return wanted

    def _load(self, name: str, force: bool) -> LoadedModel | None:
        if name in self.failed and not force:
            return None
        try:
            loaded = load_model(self.registry, name, self.codec)
        except RegistryUnavailable as exc:  # not recorded in `failed`: the next poll tries it again
            self._unreachable(exc)
            return None
        except ModelLoadError as exc:
            self._refuse(name, str(exc))
            return None
        self.failed.pop(name, None)
        return loaded

    def _fall_back(self, wanted: str | None, force: bool) -> LoadedModel | None:
        """The newest version history.csv says was deployed that loads and self-checks."""
        for version in self.registry.deployed():
            if version != wanted:
                loaded = self._load(version, force)
                if loaded is not None:
                    return loaded
        return None

    def refresh(self, force: bool = False) -> bool:
        """Load what `current` and the A/B config name if it changed; True when anything changed."""
        with self._lock:
            state = self.state
            wanted = self._wanted()
            experiment = self._read_experiment(force)
            if self.config_error and not self._config_ever_loaded:
                experiment = None  # a fresh start on a refused config: nothing is served (readiness says why)
            pinned = sorted({v.model for v in experiment.variants if v.model != CURRENT}) if experiment else []
            names = ([wanted] if wanted else []) + [v for v in pinned if v != wanted]
            unchanged = (state.current.version if state.current else None) == wanted and \
                experiment is state.experiment and set(state.models) == set(names)
            if unchanged and not force:
                self._note_fallback(wanted)
                return False
            t0 = time.perf_counter()
            models: dict[str, LoadedModel] = {}
            for name in names:
                if name in state.models:
                    models[name] = state.models[name]
                    continue
                loaded = self._load(name, force)
                if loaded is not None:
                    models[name] = loaded
            current = models.get(wanted) if wanted else None
            if current is None and state.current is not None:
                current = state.current  # a refused `current` leaves the old model serving
                models.setdefault(current.version, current)
            if current is None and (wanted is not None or CURRENT_FILE in self.failed):
                current = self._fall_back(wanted, force)
                if current is not None:
                    models[current.version] = current
            if self.config_error and not self._config_ever_loaded:
                current, models = None, {}
            if not _servable(experiment, models):
                log.error("A/B experiment %s names a model that cannot be served; keeping the previous "
                          "routing", experiment.name)
                experiment = state.experiment if _servable(state.experiment, models) else None
            new = ServingState(current=current, models=models, experiment=experiment)
            if (new.current is state.current and new.experiment is state.experiment
                    and set(new.models) == set(state.models)):
                self._note_fallback(wanted)
                return False
            self.state = new
            for version, old in state.models.items():
                if version not in models:
                    old.metrics.retire()
            self._note_fallback(wanted)
            log.info("serving %s%s (was %s), ready in %.2fs",
                     current.version if current else "nothing",
                     f", A/B experiment {experiment.name}" if experiment else "",
                     state.current.version if state.current else None, time.perf_counter() - t0)
            return True

    def _note_fallback(self, wanted: str | None) -> None:
        """Set `fallback` (and its gauge) when the version served is not the one `current` names."""
        serving = self.state.current.version if self.state.current else None
        reason = None
        if serving is not None and CURRENT_FILE in self.failed:
            reason = f"`current` is unreadable ({self.failed[CURRENT_FILE]}); serving {serving}"
        elif serving is not None and wanted is not None and serving != wanted:
            reason = (f"`current` names {wanted}, which was refused ({self.failed.get(wanted, 'loading')}); "
                      f"serving {serving}, the last version that loaded and self-checked")
        if reason != self.fallback:
            if reason:
                log.warning("fallback: %s", reason)
            self.fallback = reason
            if self._fallback_gauge is not None:
                self._fallback_gauge.set(0)
            self._fallback_gauge = prom.MODEL_SERVING_FALLBACK.labels(serving) if reason else None
            if self._fallback_gauge is not None:
                self._fallback_gauge.set(1)
