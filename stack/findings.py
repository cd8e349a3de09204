"""What a trigger measurement returns: a `Finding`, and the one rule that turns a count into a verdict.

Each component measures its own trigger (`serve/trigger.py`, `features/trigger.py`, ...) and
returns a Finding; `make audit` (stack/audit.py) only gathers and prints them. This module sits
with the settings at the bottom of the imports, so every component may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WATCH_FRACTION = 0.7  # "watch" from 70% of a threshold
SECTION = "#replace-this-when"  # the anchor of each README's "Replace this when" section

NOT_YET, WATCH, NOW = "not yet", "watch", "now"


@dataclass
class Finding:
    """One trigger: what was measured, against which threshold, the verdict and the next step."""

    trigger: str
    value: float | None  # the number compared with the threshold (None: could not measure)
    measured: str  # the value in words
    threshold: str
    verdict: str
    how: str  # what exactly was counted
    replace_with: str
    step: str  # the first migration step when the verdict is "now"
    readme: str  # relative path to the component's "Replace this when" section
    details: dict[str, Any] = field(default_factory=dict)


def verdict(value: float | None, threshold: float, *, strictly_above: bool = False) -> str:
    """'now' at the threshold (or strictly above it), 'watch' from 70% of it, else 'not yet'."""
    if value is None:
        return NOT_YET
    if value > threshold or (value == threshold and not strictly_above):
        return NOW
    return WATCH if value >= WATCH_FRACTION * threshold else NOT_YET


def plural(n: int, word: str, plural: str | None = None) -> str:
    """'1 model', '3 models' (or the given plural)."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def parse_time(text: str | None) -> datetime | None:
    """An ISO timestamp as aware UTC (naive values are taken as UTC); None when unparseable."""
    try:
        t = datetime.fromisoformat((text or "").strip())
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it, for shorter messages."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)

