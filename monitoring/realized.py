"""Realized model quality as the server exports it: `python -m monitoring.quality` writes
$MODEL_DIR/quality/latest.json; each server worker reads it on its model poll (when it changed)
and sets the model_realized_* gauges. Light on purpose: no pandas, no scikit-learn here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitoring import metrics as prom

log = logging.getLogger(__name__)

QUALITY_FOLDER = "quality"  # under MODEL_DIR (the registry's reports_dir; objects quality/<name> on s3://)
LATEST_FILE = "latest.json"


def latest_path(model_dir: Path) -> Path:
    return Path(model_dir) / QUALITY_FOLDER / LATEST_FILE


class RealizedExport:
    """Follows latest.json; refresh() is cheap when it has not changed (one stat, or on an s3://
    registry one conditional GET at most every OBJECT_STORE_EVERY seconds)."""

    OBJECT_STORE_EVERY = 60.0  # the quality job runs hourly at most; the model poll stays one request

    def __init__(self, path: Path | None = None, read: Callable[[object], tuple[object, bytes] | None] | None = None,
                 every: float = 0.0, where: str | None = None) -> None:
        self.path = path
        self._read = read or self._read_file
        self._every = every
        self._next = 0.0
        self.where = where or str(path)
        self._stamp: object = None

    @classmethod
    def of(cls, registry: Any) -> RealizedExport:
        """The latest.json of a registry (folder or object store), read through it."""
        if isinstance(getattr(registry, "url", None), str):  # s3://: poll the report object now and then
            return cls(read=lambda stamp: registry.read_report(LATEST_FILE, stamp), every=cls.OBJECT_STORE_EVERY,
                       where=f"{registry.url}/{QUALITY_FOLDER}/{LATEST_FILE}")
        return cls(latest_path(registry.root))

    def _read_file(self, stamp: object) -> tuple[object, bytes] | None:
        try:
            st = self.path.stat()
            new = (st.st_mtime, st.st_size)
            return None if new == stamp else (new, self.path.read_bytes())
        except OSError:
            return None

    def refresh(self) -> bool:
        """Re-export the figures if latest.json changed; True when it did. Never raises."""
        if self._every:
            now = time.monotonic()
            if now < self._next:
                return False
            self._next = now + self._every
        try:
            got = self._read(self._stamp)
        except Exception as exc:  # the store is down: the model poll counts that; try again later
            log.debug("realized quality %s not read: %s", self.where, exc)
            return False
        if got is None:
            return False
        stamp, body = got
        try:
            doc = json.loads(body.decode("utf-8"))
            export(doc.get("models", []))
            computed = datetime.fromisoformat(doc["computed_at"]) if doc.get("computed_at") else None
            window = f"{float(doc.get('window_days', 0)):g}"
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("realized quality %s not exported: %s", self.where, exc)
            return False
        if computed is not None:
            prom.MODEL_REALIZED_COMPUTED.labels(window).set((computed if computed.tzinfo else computed.replace(tzinfo=UTC)).timestamp())
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
