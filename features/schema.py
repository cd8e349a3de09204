"""The feature schema, as the rest of the stack sees it: derived from features/spec.yml.

Training checks its frame against it, the server builds its request model from it, the load
test samples payloads by it and the docs print it. To add a feature, add its SQL column and one
entry under `features:` in spec.yml; nothing here changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from features.spec import SPEC


@dataclass(frozen=True)
class Feature:
    """One model input: its name, kind, allowed values or range, and meaning."""

    name: str
    kind: Literal["numeric", "categorical"]
    description: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    values: tuple[str, ...] = field(default_factory=tuple)


LABEL = SPEC.label.name
LABEL_HORIZON_DAYS = SPEC.label.horizon_days
KEY = SPEC.entity.key  # the key column of the training frame and of every SQL file

FEATURES: tuple[Feature, ...] = tuple(
    Feature(f.name, f.kind, f.description, f.nullable,
            None if f.range is None else f.range[0], None if f.range is None else f.range[1], f.values)
    for f in SPEC.features
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
CATEGORICAL: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind == "categorical")
NUMERIC: tuple[str, ...] = tuple(f.name for f in FEATURES if f.kind == "numeric")


def schema_as_dicts(features: tuple[Feature, ...] = FEATURES) -> list[dict]:
    """The schema as plain JSON-ready dicts (stored in meta.json, served by GET /model)."""
    return [{**asdict(f), "values": list(f.values)} for f in features]


def schema_from_dicts(rows: list[dict]) -> tuple[Feature, ...]:
    """Inverse of `schema_as_dicts`, for a schema read back from meta.json."""
    return tuple(Feature(**{**row, "values": tuple(row.get("values") or ())}) for row in rows)


def schema_fingerprint(features: tuple[Feature, ...] = FEATURES) -> str:
    """A short hash of the schema; two models with equal fingerprints take the same input."""
    blob = json.dumps(schema_as_dicts(features), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def incompatibilities(served: tuple[Feature, ...], candidate: tuple[Feature, ...]) -> list[str]:
    """Why `candidate` cannot take requests shaped by `served` (empty list: compatible)."""
    problems = []
    old, new = {f.name: f for f in served}, {f.name: f for f in candidate}
    for name in old.keys() - new.keys():
        problems.append(f"feature {name!r} was removed")
    for name in new.keys() - old.keys():
        if not new[name].nullable:
            problems.append(f"feature {name!r} is new and required")
    for name in old.keys() & new.keys():
        a, b = old[name], new[name]
        if a.kind != b.kind:
            problems.append(f"feature {name!r} changed kind {a.kind} -> {b.kind}")
        elif a.kind == "categorical" and set(a.values) - set(b.values):
            problems.append(f"feature {name!r} lost values {sorted(set(a.values) - set(b.values))}")
        if a.nullable and not b.nullable:
            problems.append(f"feature {name!r} no longer accepts null")
    return sorted(problems)


def markdown_table(features: tuple[Feature, ...] = FEATURES) -> str:
    """The schema as the markdown table in features/README.md (a test keeps the two equal)."""
    lines = ["| feature | kind | allowed | may be missing | meaning |", "|---|---|---|---|---|"]
    for f in features:
        allowed = ", ".join(f.values) if f.kind == "categorical" else f"{f.minimum:g} .. {f.maximum:g}"
        lines.append(f"| `{f.name}` | {f.kind} | {allowed} | {'yes' if f.nullable else 'no'} | {f.description} |")
    return "\n".join(lines)


def example_features(features: tuple[Feature, ...] = FEATURES) -> dict[str, object]:
    """A valid features object built from the schema (OpenAPI example, curl examples, docs)."""
    out: dict[str, object] = {}
    for f in features:
        if f.kind == "categorical":
            out[f.name] = f.values[0]
        else:
            low = float(f.minimum or 0)
            out[f.name] = min(low + 3.0, float(f.maximum)) if f.maximum is not None else low + 3.0
    return out


def example_request() -> dict[str, object]:
    """A POST /predict body: the example features and the spec's example entity key."""
    return {"features": example_features(), "user_id": SPEC.entity.example}
