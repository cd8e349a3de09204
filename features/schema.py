"""The feature schema: the one list every other part derives from.

Training checks its frame against it, the server builds its request model from it, the load
test samples payloads by it and the docs print it. To add a feature: add its SQL column (or
pandas transform in `build.py`), then one `Feature` line here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

LABEL = "will_order_7d"
LABEL_HORIZON_DAYS = 7


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


COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "other")
DEVICES = ("ios", "android", "desktop")
CHANNELS = ("organic", "paid_search", "social", "email", "referral")

FEATURES: tuple[Feature, ...] = (
    Feature("country", "categorical", "Country the user signed up from.", values=COUNTRIES),
    Feature("device", "categorical", "Device the user signed up on.", values=DEVICES),
    Feature("channel", "categorical", "Acquisition channel.", values=CHANNELS),
    Feature("account_age_days", "numeric", "Days since signup.", minimum=0, maximum=36500),
    Feature("events_7d", "numeric", "Events of any kind in the last 7 days.", minimum=0, maximum=1e6),
    Feature("events_30d", "numeric", "Events of any kind in the last 30 days.", minimum=0, maximum=1e6),
    Feature("views_7d", "numeric", "Product views in the last 7 days.", minimum=0, maximum=1e6),
    Feature("searches_7d", "numeric", "Searches in the last 7 days.", minimum=0, maximum=1e6),
    Feature("carts_7d", "numeric", "Add-to-cart events in the last 7 days.", minimum=0, maximum=1e6),
    Feature("carts_30d", "numeric", "Add-to-cart events in the last 30 days.", minimum=0, maximum=1e6),
    Feature(
        "days_since_last_event", "numeric", "Days since the most recent event; null if none.",
        nullable=True, minimum=0, maximum=36500,
    ),
    Feature("orders_30d", "numeric", "Orders in the last 30 days.", minimum=0, maximum=1e5),
    Feature("orders_90d", "numeric", "Orders in the last 90 days.", minimum=0, maximum=1e5),
    Feature("amount_90d", "numeric", "Order value in the last 90 days.", minimum=0, maximum=1e8),
    Feature(
        "days_since_last_order", "numeric", "Days since the most recent order; null if none.",
        nullable=True, minimum=0, maximum=36500,
    ),
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
