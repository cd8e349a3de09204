"""Experiment tracking's trigger (experiments/README.md, "Replace this when"): more than 20
experiments in 30 days. `make audit` gathers it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from experiments.log import read_runs
from stack.findings import SECTION, Finding, parse_time, plural, shown, verdict

EXPERIMENT_WINDOW = timedelta(days=30)


def audit_experiments(runs_path: Path, now: datetime) -> Finding:
    """Training runs logged in the last 30 days."""
    rows = read_runs(runs_path)
    since = now - EXPERIMENT_WINDOW
    times = [parse_time(r.get("started_at")) for r in rows]
    recent = sum(1 for t in times if t is not None and since <= t <= now + timedelta(minutes=5))
    undated = sum(1 for t in times if t is None)
    how = (f"rows of {shown(runs_path)} (experiments.log.read_runs) with started_at in the last "
           f"{EXPERIMENT_WINDOW.days} days, of {plural(len(rows), 'run')} in all")
    if undated:
        how += f"; {undated} without a readable started_at were skipped"
    return Finding(
        trigger="experiment tracking",
        value=recent,
        measured=f"{plural(recent, 'run')} in {EXPERIMENT_WINDOW.days} days",
        threshold="> 20 experiments in 30 days",
        verdict=verdict(recent, 20, strictly_above=True),
        how=how,
        replace_with="MLflow or W&B",
        step="Log each run to MLflow (params, metrics, the version folder as artifacts) next to "
             "experiments.log.append_run in the log step; import runs.csv once as history.",
        readme="experiments/README.md" + SECTION,
        details={"runs_30d": recent, "runs_total": len(rows), "undated": undated},
    )
