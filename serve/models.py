"""The models one worker serves, loaded and self-checked off the request path, swapped whole.

Requests read `ModelStore.state` once; a reload builds a new `ServingState` and replaces the
reference in one assignment, so a request sees either the old models or the new, never a mix.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from features.encode import RowEncoder
from features.schema import schema_fingerprint
from monitoring import metrics as prom
from train.artifact import Scorer
from train.registry import Registry, RegistryError

log = logging.getLogger("serve.models")
SELF_CHECK_TOLERANCE = 1e-6
# An artifact pickled by other versions of these may load but score differently (or crash).
PINNED_LIBRARIES = ("lightgbm", "scikit-learn", "numpy")


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message says why."""


@dataclass
class LoadedModel:
    """One model version ready to score."""

    version: str
    meta: dict[str, Any]
    scorer: Scorer
    metrics: prom.ModelMetrics
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ServingState:
    """Everything a request needs, replaced as a whole on reload."""

    current: LoadedModel | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)


def installed_versions() -> dict[str, str]:
    """Versions of the libraries in PINNED_LIBRARIES in this process."""
    from importlib.metadata import version

    return {name: version(name) for name in PINNED_LIBRARIES}


def load_model(registry: Registry, version: str, encoder: RowEncoder) -> LoadedModel:
    """Load `version`, refuse it if this server cannot serve it faithfully, self-check it."""
    try:
        artifact, meta = registry.load(version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None
    trained_with = meta.get("library_versions", {})
    here = installed_versions()
    mismatched = {k: (trained_with.get(k), v) for k, v in here.items() if trained_with.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k} trained {a} / serving {b}" for k, (a, b) in mismatched.items())
        raise ModelLoadError(f"model {version}: library versions differ ({detail}); retrain with this image")
    if meta.get("schema_fingerprint") != schema_fingerprint():
        raise ModelLoadError(f"model {version}: feature schema {meta.get('schema_fingerprint')} differs from "
                             f"this server's {schema_fingerprint()}; deploy the matching server code")
    try:
        scorer = Scorer(artifact)
        rows = meta.get("self_check") or []
        if not rows:
            raise ModelLoadError(f"model {version}: meta.json has no self_check rows")
        for i, row in enumerate(rows):
            got = scorer.one(encoder.row(row["features"]))
            if not math.isfinite(got) or abs(got - row["expected"]) > SELF_CHECK_TOLERANCE:
                raise ModelLoadError(f"model {version}: self-check row {i} scored {got}, expected {row['expected']}")
        model_metrics = prom.register_model(version, meta)
    except ModelLoadError:
        raise
    except Exception as exc:  # a broken artifact can fail in many ways; none may crash the worker
        raise ModelLoadError(f"model {version}: {type(exc).__name__}: {exc}") from None
    return LoadedModel(version, meta, scorer, model_metrics)


class ModelStore:
    """Follows `current` in the registry and keeps the served models loaded."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.encoder = RowEncoder()
        self.state = ServingState()
        self.failed: dict[str, str] = {}  # version -> why it was refused (not retried until forced)
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> bool:
        """Load the version `current` names if it changed; True when the served model changed."""
        with self._lock:
            wanted = self.registry.current()
            state = self.state
            if wanted is None or (state.current and state.current.version == wanted):
                return False
            if wanted in self.failed and not force:
                return False
            t0 = time.perf_counter()
            try:
                model = state.models.get(wanted) or load_model(self.registry, wanted, self.encoder)
            except ModelLoadError as exc:
                self.failed[wanted] = str(exc)
                prom.MODEL_RELOAD_FAILURES.inc()
                serving = state.current.version if state.current else "nothing"
                log.error("model reload refused; still serving %s: %s", serving, exc)
                return False
            self.failed.pop(wanted, None)
            old = state.current
            self.state = ServingState(current=model, models={wanted: model})
            if old is not None and old.version != wanted:
                old.metrics.retire()
            log.info("serving model %s (was %s), loaded and self-checked in %.2fs",
                     wanted, old.version if old else None, time.perf_counter() - t0)
            return True
