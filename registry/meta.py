"""meta.json: the typed metadata of one model version, written and read by the same code.

Training builds a `ModelMeta` and the registry writes it; the server, monitoring, A/B and the
audit read it back through `Registry.meta()`, which validates it and names the field that is
wrong ("meta.json of 2026...: score_baseline.fractions: must sum to 1").
"""

from __future__ import annotations

import math
import platform
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The libraries a pickled model depends on: recorded at training, checked before serving.
PINNED_LIBRARIES = ("numpy", "scikit-learn", "lightgbm", "joblib")
SELF_CHECK_TOLERANCE = 1e-9  # the same model, libraries and encoding score bit-for-bit alike


class MetaError(ValueError):
    """meta.json is not what this code writes; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreBaseline(_Model):
    """Training scores in bins: the server counts live scores into the same bins (PSI)."""

    edges: list[float]
    fractions: list[float]

    @model_validator(mode="after")
    def _check(self) -> ScoreBaseline:
        if not self.fractions or len(self.edges) != len(self.fractions) + 1:
            raise ValueError(f"needs one more edge than fractions; got {len(self.edges)} edges and "
                             f"{len(self.fractions)} fractions")
        if not all(math.isfinite(e) for e in self.edges) or self.edges != sorted(self.edges):
            raise ValueError(f"edges must be finite and ascending; got {self.edges}")
        if not all(0.0 <= f <= 1.0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 0.01:
            raise ValueError(f"fractions must be in [0, 1] and sum to 1; got {self.fractions}")
        return self


MISSING_BIN = "missing"
"""The bin label of a missing (null) input, after a feature's value or range bins."""


class FeatureBaseline(_Model):
    """One feature's training inputs in bins: the server counts served inputs into the same bins.

    Numeric: `edges` are the inner quantile edges, bin i holds [edges[i-1], edges[i]) (the first
    bin is open below, the last open above). Categorical: one bin per value, in schema order.
    A nullable feature has a last bin for missing inputs. `fractions` has one entry per bin.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    edges: list[float] = Field(default_factory=list)
    values: list[str] = Field(default_factory=list)
    nullable: bool = False
    fractions: list[float]

    @model_validator(mode="after")
    def _check(self) -> FeatureBaseline:
        if not all(math.isfinite(e) for e in self.edges) or self.edges != sorted(set(self.edges)):
            raise ValueError(f"edges must be finite, distinct and ascending; got {self.edges}")
        if MISSING_BIN in self.values:
            raise ValueError(f"a categorical value may not be named {MISSING_BIN!r} (the missing bin)")
        if len(self.fractions) != len(self.bins()):
            raise ValueError(f"needs {len(self.bins())} fractions (one per bin), got {len(self.fractions)}")
        if not all(0.0 <= f <= 1.0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 0.01:
            raise ValueError(f"fractions must be in [0, 1] and sum to 1; got {self.fractions}")
        return self

    def bins(self) -> list[str]:
        """The bin labels the server exports: "0".."n" (numeric) or the values, then "missing"."""
        labels = list(self.values) if self.kind == "categorical" else [str(i) for i in range(len(self.edges) + 1)]
        return labels + [MISSING_BIN] if self.nullable else labels


class SelfCheckRow(_Model):
    """A request-shaped row and the score the model gave it when it was saved."""

    features: dict[str, str | float | int | None]
    expected: float


class Rows(_Model):
    train: int = Field(ge=0)
    holdout: int = Field(ge=0)


class ModelMeta(_Model):
    """Everything known about one model version besides its weights."""

    version: str
    created_at: datetime
    model_type: str
    git_commit: str
    git_dirty: bool = False
    data_fingerprint: str
    rows: Rows
    as_of_dates: list[str]
    library_versions: dict[str, str]
    feature_schema: list[dict[str, Any]]
    schema_fingerprint: str
    params: dict[str, Any]
    metrics: dict[str, float]
    score_baseline: ScoreBaseline
    # per-feature input bins, in schema order; empty in files written before drift was counted
    feature_baselines: list[FeatureBaseline] = Field(default_factory=list)
    self_check: list[SelfCheckRow] = Field(min_length=1)
    notes: str = ""
    # sha256 (hex) of model.joblib, set by the registry when it writes the version and checked before
    # every load; None in files written before checksums were recorded (they load unchecked)
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # meta.json times are UTC; a time without an offset is read as UTC, not local time
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def trained_at(self) -> str:
        return self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> ModelMeta:
        """Parse and validate; MetaError names `where` and every wrong field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise MetaError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None

    def library_mismatches(self, installed: dict[str, str] | None = None) -> dict[str, tuple[str | None, str]]:
        """{library: (trained with, installed)} for every pinned library that differs."""
        here = installed or installed_versions()
        return {k: (self.library_versions.get(k), v) for k, v in here.items() if self.library_versions.get(k) != v}


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(the whole file)"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def installed_versions() -> dict[str, str]:
    """Versions of PINNED_LIBRARIES in this process."""
    from importlib.metadata import version

    return {name: version(name) for name in PINNED_LIBRARIES}


def recorded_versions() -> dict[str, str]:
    """What training records: the pinned libraries, and Python for people to read."""
    return {"python": platform.python_version(), **installed_versions()}


def now_utc() -> datetime:
    return datetime.now(UTC)
