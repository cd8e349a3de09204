"""The experiment config: what an experiment is, and loading it from YAML with validation."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

BUCKETS = 10_000  # bucket space of ab.assign.bucket; a weight of 1 (%) is 100 buckets
CURRENT = "current"  # a variant's model: whatever version `current` names at request time

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
_EXPERIMENT_KEYS = {"name", "salt", "variants", "started_at"}
_VARIANT_KEYS = {"name", "weight", "model"}


class ConfigError(ValueError):
    """The experiment config is invalid; the message names the problem and the value."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an experiment: its name, traffic weight (percent) and model version."""

    name: str
    weight: float
    model: str  # a version like 20261128T191500Z-a1b2c3, or "current"


@dataclass(frozen=True, slots=True)
class Experiment:
    """A running experiment; `bucket_ends[i]` is the exclusive upper bucket of variant i."""

    name: str
    salt: str
    variants: tuple[Variant, ...]
    started_at: datetime | None = None  # naive UTC; the analysis ignores earlier exposures
    bucket_ends: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket_ends", _bucket_ends([v.weight for v in self.variants]))

    @property
    def control(self) -> Variant:
        """The first variant in config order: the one the others are compared with."""
        return self.variants[0]

    def bucket_ranges(self) -> dict[str, range]:
        """Each variant's buckets, e.g. {"control": range(0, 5000), "challenger": range(5000, 10000)}."""
        starts = (0, *self.bucket_ends[:-1])
        return {
            v.name: range(s, e)
            for v, s, e in zip(self.variants, starts, self.bucket_ends, strict=True)
        }


def _bucket_ends(weights: list[float]) -> tuple[int, ...]:
    """Cumulative weights (summing to 100) as exclusive bucket bounds; rounding never leaves gaps."""
    ends, total = [], 0.0
    for w in weights:
        total += w
        ends.append(round(total * BUCKETS / 100))
    if ends:
        ends[-1] = BUCKETS
    return tuple(ends)


def load_experiment(path: str | Path, available: Iterable[str] | None = None) -> Experiment | None:
    """Read and validate the config (AB_CONFIG); None when there is no experiment."""
    # with `available` (registry.open_registry(MODEL_DIR).versions()), every pinned model version must be in it
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment config: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        experiment = parse_config(doc)
        if experiment is not None and available is not None:
            check_models(experiment, available)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return experiment


def parse_config(doc: Any) -> Experiment | None:
    """Validate a parsed config document ({"experiment": {...} | None}); None means no experiment."""
    if doc is None:
        return None  # empty file, or everything commented out
    if not isinstance(doc, Mapping):
        raise ConfigError(f"the config must be a mapping with one key 'experiment', got {doc!r}")
    extra = set(doc) - {"experiment", "shadow"}
    if extra:
        raise ConfigError(
            f"unknown top-level key(s) {sorted(map(str, extra))}; only 'experiment' and 'shadow' "
            "are allowed"
        )
    parse_shadow(doc.get("shadow"))
    return parse_experiment(doc.get("experiment"))


def parse_shadow(raw: Any) -> str | None:
    """Validate the `shadow:` entry ({"model": <version>} or null): the version to shadow-score."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"model"}:
        raise ConfigError(f"'shadow' must be a mapping with one key 'model' (a version) or null, got {raw!r}")
    model = raw["model"]
    if not isinstance(model, str) or not _VERSION.match(model):
        raise ConfigError(f"shadow 'model' must be a version like 20261128T191500Z-a1b2c3, got {model!r}")
    return model


def load_shadow(path: str | Path) -> str | None:
    """The shadow model version the config names (None: no shadow, or no file)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the shadow entry: {exc}") from None
    if not isinstance(doc, Mapping):
        return None
    try:
        return parse_shadow(doc.get("shadow"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_experiment(raw: Any) -> Experiment | None:
    """Validate one `experiment:` mapping and build the Experiment; None stays None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"'experiment' must be a mapping (name, salt, variants) or null, got {raw!r}"
        )
    _no_unknown_keys(raw, _EXPERIMENT_KEYS, "experiment")
    name = _name(raw.get("name"), "experiment name")
    salt = raw.get("salt")
    if not isinstance(salt, str) or not salt.strip():
        raise ConfigError(f"experiment {name!r}: 'salt' must be a non-empty string, got {salt!r}")
    variants = _variants(raw.get("variants"), name)
    return Experiment(
        name=name, salt=salt, variants=variants, started_at=_started_at(raw.get("started_at"), name)
    )


def check_models(experiment: Experiment, available: Iterable[str]) -> None:
    """Raise ConfigError when a variant pins a model version that is not in `available`."""
    known = set(available)
    for v in experiment.variants:
        if v.model != CURRENT and v.model not in known:
            listing = ", ".join(sorted(known)[-5:]) or "none"
            raise ConfigError(
                f"experiment {experiment.name!r}, variant {v.name!r}: model version {v.model!r} "
                f"is not in the registry (newest available: {listing}); train it or use 'current'"
            )


def _no_unknown_keys(raw: Mapping[Any, Any], allowed: set[str], where: str) -> None:
    extra = set(raw) - allowed
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(map(str, extra))}; allowed: {sorted(allowed)}"
        )


def _name(value: Any, what: str) -> str:
    # names end up in file paths (var/ab/<name>/) and Prometheus labels: keep them plain
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"{what} must be 1-64 characters of letters, digits, '_', '-', '.', got {value!r}"
        )
    return value


def _variants(raw: Any, experiment: str) -> tuple[Variant, ...]:
    where = f"experiment {experiment!r}"
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError(f"{where}: 'variants' must be a list of at least 2 variants, got {raw!r}")
    variants: list[Variant] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{where}: variant #{i + 1} must be a mapping (name, weight, model), got {item!r}"
            )
        _no_unknown_keys(item, _VARIANT_KEYS, f"{where}, variant #{i + 1}")
        name = _name(item.get("name"), f"{where}: variant #{i + 1} name")
        if any(v.name == name for v in variants):
            raise ConfigError(
                f"{where}: duplicate variant name {name!r}; variant names must be unique"
            )
        weight = item.get("weight")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
        ):
            raise ConfigError(
                f"{where}, variant {name!r}: 'weight' must be a number (percent), got {weight!r}"
            )
        if weight * BUCKETS / 100 < 1:
            raise ConfigError(
                f"{where}, variant {name!r}: 'weight' must be at least 0.01 (percent), got {weight!r}"
            )
        model = item.get("model")
        if not isinstance(model, str) or not (model == CURRENT or _VERSION.match(model)):
            raise ConfigError(
                f"{where}, variant {name!r}: 'model' must be 'current' or a version like "
                f"20261128T191500Z-a1b2c3, got {model!r}"
            )
        variants.append(Variant(name=name, weight=float(weight), model=model))
    total = sum(v.weight for v in variants)
    if not math.isclose(total, 100, abs_tol=1e-6):
        weights = {v.name: v.weight for v in variants}
        raise ConfigError(
            f"{where}: variant weights must sum to 100 (percent), got {total:g} from {weights}"
        )
    return tuple(variants)


def _started_at(value: Any, experiment: str) -> datetime | None:
    if value is None:
        return None
    parsed: Any = value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    elif isinstance(value, date) and not isinstance(value, datetime):
        parsed = datetime(value.year, value.month, value.day)
    if not isinstance(parsed, datetime):
        raise ConfigError(
            f"experiment {experiment!r}: 'started_at' must be an ISO timestamp like "
            f"2026-11-28T19:15:00Z, got {value!r}"
        )
    value = parsed
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)  # the database holds naive UTC
    return value
