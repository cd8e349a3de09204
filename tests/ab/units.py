"""Unit ids for the A/B tests in the spec's key type: key(i) as the app tables hold it, unit(i)
as ab_exposures.unit_id stores it (its canonical text)."""

from __future__ import annotations

from features.spec import SPEC


def key(i: int) -> str | int:
    """The i-th test entity's key in the spec's type: 7 (integer keys) or "u000007" (string keys)."""
    return i if SPEC.entity.type == "integer" else f"u{i:06d}"


def unit(i: int) -> str:
    """The same entity as ab_exposures stores and assignment hashes it."""
    return SPEC.entity.canonical(key(i))
