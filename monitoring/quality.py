"""`python -m monitoring.quality`: realized model quality from delayed labels.

Takes the logged predictions (monitoring/predictions.py) whose label window has closed, computes
each one's label with the training label definition (features/build.labels_at: the spec's label
SQL and its positive rule) as of the prediction time, and writes, per model version, kind
(served | shadow) and day: matured count, base rate, mean score, ROC AUC, PR AUC, log loss and
calibration error, plus the same over the last --window-days for the server's gauges:

    $MODEL_DIR/quality/quality.csv        one row per day, model version and kind
    $MODEL_DIR/quality/latest.json        the window's figures; the server exports them
    $MODEL_DIR/quality/calibration.png    mean predicted vs observed, by decile, per version
    $MODEL_DIR/quality/realized_auc.png   realized ROC AUC per day against the holdout AUC

Runs on the trainer's schedule and by hand; each run recomputes everything the log still holds
(retention bounds it), so it is safe to rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from features.build import labels_at
from features.db import make_engine
from features.spec import SPEC
from monitoring.predictions import prediction_log
from monitoring.realized import LATEST_FILE, QUALITY_FOLDER
from registry import open_registry
from registry.store import RegistryError

COLUMNS = ("day", "model_version", "kind", "matured", "base_rate", "mean_score", "roc_auc", "pr_auc",
           "log_loss", "calibration_error")
Progress = Callable[[str], None]


@dataclass
class QualityResult:
    daily: pd.DataFrame  # one row per day, version, kind (COLUMNS)
    window: list[dict[str, Any]]  # latest.json's models
    folder: Path
    matured: int


def matured_predictions(engine: sa.Engine, now: datetime) -> pd.DataFrame:
    """Logged predictions with an entity whose label window [ts, ts + horizon) has closed by `now`."""
    cutoff = now.astimezone(UTC).replace(tzinfo=None) - SPEC.label.horizon
    t = prediction_log
    query = (sa.select(t.c.ts, t.c.entity_id, t.c.model_version, t.c.variant, t.c.score, t.c.kind)
             .where(t.c.ts < cutoff, t.c.entity_id.is_not(None)).order_by(t.c.ts))
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return pd.DataFrame(columns=["ts", "entity_id", "model_version", "variant", "score", "kind"])
        return pd.DataFrame(conn.execute(query).all(), columns=["ts", "entity_id", "model_version", "variant",
                                                               "score", "kind"])


def with_labels(engine: sa.Engine, frame: pd.DataFrame, resolution_minutes: float,
                progress: Progress = print) -> pd.DataFrame:
    """`frame` with its label (0/1) as of each prediction time, by the training label definition.

    Predictions are grouped by their time rounded up to `resolution_minutes` (0: exact), one
    label query per group: an outcome at most that long after a prediction may be missed, an
    outcome before it is never counted.
    """
    frame = frame.copy()
    if frame.empty:
        frame["label"] = pd.Series(dtype="int64")
        return frame
    ts = pd.to_datetime(frame["ts"])
    frame["as_of"] = ts.dt.ceil(f"{resolution_minutes}min") if resolution_minutes > 0 else ts
    frame["key"] = [SPEC.entity.parse(k) for k in frame["entity_id"]]
    labels = np.zeros(len(frame), dtype=np.int64)
    groups = frame.groupby("as_of", sort=True).indices
    t0 = time.perf_counter()
    with engine.connect() as conn:
        for i, (as_of, rows) in enumerate(groups.items()):
            keys = frame["key"].iloc[rows]
            labels[rows] = labels_at(conn, pd.Timestamp(as_of).to_pydatetime(), keys, min(keys), max(keys))
            if progress and (i + 1) % 500 == 0:
                progress(f"  labels: {i + 1:,}/{len(groups):,} prediction times, {time.perf_counter() - t0:.0f}s")
    frame["label"] = labels
    return frame.drop(columns=["key"])


def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """Matured count, base rate, mean score, ROC AUC, PR AUC, log loss and calibration error."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    n = len(y)
    out: dict[str, float | None] = {"matured": n, "base_rate": float(y.mean()) if n else None,
                                    "mean_score": float(p.mean()) if n else None,
                                    "roc_auc": None, "pr_auc": None, "log_loss": None, "calibration_error": None}
    if not n:
        return out
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    out["log_loss"] = float(log_loss(y, clipped, labels=[0, 1]))
    if 0 < y.sum() < n:
        out["roc_auc"] = float(roc_auc_score(y, p))
        out["pr_auc"] = float(average_precision_score(y, p))
    out["calibration_error"] = float(sum(len(b) / n * abs(p[b].mean() - y[b].mean()) for b in _deciles(p)))
    return out


def _deciles(p: np.ndarray) -> list[np.ndarray]:
    """Row indices of up to 10 equal-count score bins."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(10, len(p))) if len(b)]


def daily_quality(labelled: pd.DataFrame) -> pd.DataFrame:
    """Figures per day (of the prediction), model version and kind."""
    rows = []
    if not labelled.empty:
        days = pd.to_datetime(labelled["ts"]).dt.strftime("%Y-%m-%d")
        for (day, version, kind), part in labelled.groupby([days, "model_version", "kind"], sort=True):
            rows.append({"day": day, "model_version": version, "kind": kind,
                         **figures(part["label"].to_numpy(), part["score"].to_numpy(dtype=float))})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def window_quality(labelled: pd.DataFrame, now: datetime, window_days: float) -> list[dict[str, Any]]:
    """Figures per model version and kind over the matured predictions of the last `window_days`."""
    if labelled.empty:
        return []
    newest = now.astimezone(UTC).replace(tzinfo=None) - SPEC.label.horizon
    recent = labelled[pd.to_datetime(labelled["ts"]) >= newest - timedelta(days=window_days)]
    return [{"model_version": version, "kind": kind, **figures(part["label"].to_numpy(),
                                                                 part["score"].to_numpy(dtype=float))}
            for (version, kind), part in recent.groupby(["model_version", "kind"], sort=True)]


def holdout_figures(model_dir: Path | str, versions: list[str]) -> dict[str, dict[str, float]]:
    """meta.json metrics of each version (the training holdout), where the registry has it."""
    registry, out = open_registry(model_dir), {}
    for version in versions:
        try:
            out[version] = dict(registry.meta(version).metrics)
        except (RegistryError, OSError, ValueError):
            continue
    return out


def run(database_url: str, model_dir: Path | str, now: datetime | None = None, window_days: float = 7.0,
        resolution_minutes: float = 5.0, progress: Progress = print) -> QualityResult:
    """The whole job: read, label, measure, write the CSV, latest.json and the charts."""
    now = now or datetime.now(UTC)
    engine = make_engine(database_url)
    t0 = time.perf_counter()
    try:
        raw = matured_predictions(engine, now)
        progress(f"[read] {len(raw):,} logged predictions have a closed {SPEC.label.horizon_days}-day label window "
                 f"(before {(now - SPEC.label.horizon):%Y-%m-%d %H:%M} UTC)")
        labelled = with_labels(engine, raw, resolution_minutes, progress)
    finally:
        engine.dispose()
    progress(f"[label] {SPEC.label.name} as of each prediction time, {len(labelled):,} rows, "
             f"{labelled['label'].mean() if len(labelled) else 0:.1%} positive, {time.perf_counter() - t0:.1f}s")
    daily = daily_quality(labelled)
    window = window_quality(labelled, now, window_days)
    holdout = holdout_figures(model_dir, sorted({w["model_version"] for w in window} | set(daily["model_version"])))
    for entry in window:
        entry["holdout_roc_auc"] = holdout.get(entry["model_version"], {}).get("roc_auc")
    registry = open_registry(model_dir)
    folder = registry.reports_dir  # MODEL_DIR/quality, or a staging folder uploaded to s3://.../quality/
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "quality.csv", daily.to_csv(index=False))
    _write_atomic(folder / LATEST_FILE, json.dumps({
        "computed_at": datetime.now(UTC).isoformat(timespec="seconds"), "now": now.isoformat(timespec="seconds"),
        "window_days": window_days, "models": [_jsonable(w) for w in window]}, indent=2))
    plot_calibration(labelled, folder / "calibration.png")
    plot_realized_auc(daily, holdout, folder / "realized_auc.png")
    registry.publish_reports(["quality.csv", "calibration.png", "realized_auc.png", LATEST_FILE])
    for w in window:
        auc = "n/a" if w["roc_auc"] is None else f"{w['roc_auc']:.3f}"
        hold = "n/a" if w["holdout_roc_auc"] is None else f"{w['holdout_roc_auc']:.3f}"
        progress(f"[quality] {w['model_version']} ({w['kind']}): {w['matured']:,} matured, base rate "
                 f"{w['base_rate']:.1%}, mean score {w['mean_score']:.1%}, ROC AUC {auc} (holdout {hold})")
    url = getattr(registry, "url", None)
    progress(f"[write] {f'{url}/{QUALITY_FOLDER}' if isinstance(url, str) else folder}/quality.csv ({len(daily)} rows), {LATEST_FILE}, calibration.png, realized_auc.png")
    return QualityResult(daily, window, folder, len(labelled))


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # the server never reads half a file


def plot_calibration(labelled: pd.DataFrame, path: Path) -> None:
    """Mean predicted vs observed rate by score decile, one line per model version and kind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    for (version, kind), part in labelled.groupby(["model_version", "kind"], sort=True) if len(labelled) else []:
        p, y = part["score"].to_numpy(dtype=float), part["label"].to_numpy()
        bins = _deciles(p)
        ax.plot([p[b].mean() for b in bins], [y[b].mean() for b in bins], "o-", label=f"{version} ({kind})")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Realized calibration (matured predictions)")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_realized_auc(daily: pd.DataFrame, holdout: dict[str, dict[str, float]], path: Path) -> None:
    """Realized ROC AUC per day and version, with each version's holdout AUC as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for (version, kind), part in daily.groupby(["model_version", "kind"], sort=True) if len(daily) else []:
        line = ax.plot(pd.to_datetime(part["day"]), part["roc_auc"], "o-", label=f"{version} ({kind}) realized")
        auc = holdout.get(version, {}).get("roc_auc")
        if auc is not None:
            ax.axhline(auc, linestyle="--", color=line[0].get_color(), label=f"{version} holdout")
    ax.set(xlabel="day of prediction", ylabel="ROC AUC", title="Realized ROC AUC against the holdout")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(argv: list[str] | None = None) -> int:
    from stack.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m monitoring.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: DATABASE_URL")
    parser.add_argument("--model-dir", help="default: MODEL_DIR, a folder or s3://bucket/prefix (the output goes "
                        "to its quality/)")
    parser.add_argument("--now", type=_utc, help="measure as if it were this UTC time (ISO); default: now")
    parser.add_argument("--window-days", type=float, default=7.0, help="days of matured predictions the "
                        "server's gauges summarise (default 7)")
    parser.add_argument("--resolution-minutes", type=float, default=5.0, help="label queries group prediction "
                        "times rounded up to this (0: one query per distinct time; default 5)")
    args = parser.parse_args(argv)
    settings = get_settings()
    run(args.database_url or settings.database_url, args.model_dir or settings.model_dir, args.now,
        args.window_days, args.resolution_minutes)
    return 0


def _utc(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} (e.g. 2026-12-01T12:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


if __name__ == "__main__":
    sys.exit(main())
