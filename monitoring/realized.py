"""Realized model quality as the server exports it: `python -m monitoring.quality` writes
$MODEL_DIR/quality/latest.json; each server worker reads it on its model poll (when it changed)
and sets the model_realized_* gauges. Light on purpose: no pandas, no scikit-learn here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from monitoring import metrics as prom

log = logging.getLogger(__name__)

QUALITY_FOLDER = "quality"  # under MODEL_DIR: the trainer and the server share that volume
LATEST_FILE = "latest.json"


def latest_path(model_dir: Path) -> Path:
    return Path(model_dir) / QUALITY_FOLDER / LATEST_FILE


class RealizedExport:
    """Follows latest.json; refresh() is cheap when the file has not changed (one stat)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None

    def refresh(self) -> bool:
        """Re-export the figures if the file changed; True when it did. Never raises."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            export(doc.get("models", []))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("realized quality %s not exported: %s", self.path, exc)
            return False
        self._stamp = stamp
        return True


def export(models: list[dict[str, Any]]) -> None:
    """Set the model_realized_* gauges from latest.json's `models` entries."""
    for entry in models:
        version, kind = str(entry["model_version"]), str(entry["kind"])
        for gauge, key in prom.REALIZED_GAUGES:
            value = entry.get(key)
            if isinstance(value, int | float):
                gauge.labels(version, kind).set(float(value))
