"""Append to and read experiments/runs.csv, the team's spreadsheet of training runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from filelock import FileLock

COLUMNS = (
    "started_at", "run_id", "git_commit", "git_dirty", "user", "data_fingerprint", "rows_train",
    "rows_holdout", "model_type", "params", "roc_auc", "pr_auc", "log_loss", "brier",
    "champion_roc_auc", "duration_s", "version", "promoted", "decision", "notes",
)
# The holdout metrics in COLUMNS (train/evaluate.py's METRICS; a test holds the two equal).
METRIC_COLUMNS = ("roc_auc", "pr_auc", "log_loss", "brier")
# Columns where a smaller number is the better run; every other number is better when larger.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "duration_s"})


def append_run(path: Path | str, row: dict[str, Any]) -> None:
    """Append one run under a file lock (two trainers never interleave a line)."""
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown runs.csv columns: {sorted(unknown)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=30):
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_runs(path: Path | str) -> list[dict[str, str]]:
    """All runs, oldest first; an absent file is an empty log."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
