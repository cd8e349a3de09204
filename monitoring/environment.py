"""The environment a server's processes need before any of them imports prometheus_client.

Kept apart from monitoring/metrics.py: importing that module defines the metrics, and in
multiprocess mode the unlabelled ones open their value file at once, so the folder has to exist
before. `python -m serve` applies this, then execs gunicorn.
"""

from __future__ import annotations

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def server_environment(multiproc_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The multiprocess folder (created here) and no `_created` series (they double every counter
    and histogram, and multiprocess mode does not export them anyway; without them single- and
    multi-process /metrics look the same)."""
    directory = Path(multiproc_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return {MULTIPROC_ENV: str(directory), "PROMETHEUS_DISABLE_CREATED_SERIES": "True"}
