"""`python -m monitoring.shadow`: how a shadow model compares with the serving one.

Pairs each shadow score in the prediction log with the served score of the same request (same
entity, logged within --pair-seconds), then prints agreement (both on the same side of
--threshold), the score shift, the rank correlation, and the realized quality of both from the
quality job's latest.json once labels have matured; writes shadow_vs_served.png beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from features.db import make_engine
from monitoring.predictions import SERVED, SHADOW, prediction_log
from monitoring.realized import LATEST_FILE, QUALITY_FOLDER
from registry import open_registry


@dataclass
class Comparison:
    pairs: int
    shadow_versions: list[str]
    served_versions: list[str]
    agreement: float | None
    mean_served: float | None
    mean_shadow: float | None
    mean_shift: float | None
    mean_abs_diff: float | None
    rank_correlation: float | None
    realized: list[dict[str, Any]]


def paired(engine: sa.Engine, since: datetime | None, pair_seconds: float) -> pd.DataFrame:
    """(entity, served score, shadow score, versions) for every shadow score with its served twin."""
    t = prediction_log
    query = sa.select(t.c.ts, t.c.entity_id, t.c.model_version, t.c.score, t.c.kind).where(t.c.entity_id.is_not(None))
    if since is not None:
        query = query.where(t.c.ts >= since.astimezone(UTC).replace(tzinfo=None))
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return pd.DataFrame(columns=["entity_id", "served", "shadow", "served_version", "shadow_version"])
        frame = pd.DataFrame(conn.execute(query).all(), columns=["ts", "entity_id", "model_version", "score", "kind"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    served = frame[frame["kind"] == SERVED].sort_values("ts")
    shadow = frame[frame["kind"] == SHADOW].sort_values("ts")
    if served.empty or shadow.empty:
        return pd.DataFrame(columns=["entity_id", "served", "shadow", "served_version", "shadow_version"])
    joined = pd.merge_asof(shadow, served, on="ts", by="entity_id", direction="backward",
                           tolerance=pd.Timedelta(seconds=pair_seconds), suffixes=("_shadow", "_served"))
    joined = joined.dropna(subset=["score_served"])
    return pd.DataFrame({"entity_id": joined["entity_id"], "served": joined["score_served"].astype(float),
                         "shadow": joined["score_shadow"].astype(float),
                         "served_version": joined["model_version_served"],
                         "shadow_version": joined["model_version_shadow"]})


def compare(pairs: pd.DataFrame, threshold: float, latest: Path | None = None) -> Comparison:
    """The figures of one comparison (None where there are no pairs)."""
    realized = []
    if latest is not None and latest.is_file():
        try:
            realized = json.loads(latest.read_text(encoding="utf-8")).get("models", [])
        except ValueError:
            realized = []
    n = len(pairs)
    if not n:
        return Comparison(0, [], [], None, None, None, None, None, None, realized)
    a, b = pairs["served"].to_numpy(), pairs["shadow"].to_numpy()
    rank = float(pd.Series(a).rank().corr(pd.Series(b).rank())) if n > 1 else None
    return Comparison(n, sorted(pairs["shadow_version"].unique()), sorted(pairs["served_version"].unique()),
                      float(np.mean((a >= threshold) == (b >= threshold))), float(a.mean()), float(b.mean()),
                      float((b - a).mean()), float(np.abs(b - a).mean()),
                      None if rank is None or np.isnan(rank) else rank, realized)


def report(c: Comparison, threshold: float) -> str:
    if not c.pairs:
        return "no shadow scores paired with served ones yet: is `shadow:` set in the A/B config, and the log on?"
    lines = [f"shadow {', '.join(c.shadow_versions)} vs served {', '.join(c.served_versions)}: {c.pairs:,} requests",
             f"  agreement at {threshold:g}: {c.agreement:.1%} (both scores on the same side)",
             f"  mean score: served {c.mean_served:.4f}, shadow {c.mean_shadow:.4f} (shift {c.mean_shift:+.4f}, "
             f"mean |difference| {c.mean_abs_diff:.4f})",
             f"  rank correlation: {c.rank_correlation:.3f}" if c.rank_correlation is not None else "  rank correlation: n/a"]
    wanted = set(c.shadow_versions) | set(c.served_versions)
    rows = [r for r in c.realized if r.get("model_version") in wanted]
    if rows:
        lines.append("  realized quality (matured predictions, monitoring.quality):")
        for r in rows:
            auc = "n/a" if r.get("roc_auc") is None else f"{r['roc_auc']:.3f}"
            lines.append(f"    {r['model_version']} ({r['kind']}): ROC AUC {auc} on {r['matured']:,} matured")
    else:
        lines.append("  realized quality: no matured predictions yet (run python -m monitoring.quality after the "
                     "label window closes)")
    return "\n".join(lines)


def plot(pairs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.scatter(pairs["served"], pairs["shadow"], s=4, alpha=0.4)
    ax.set(xlabel="served score", ylabel="shadow score", title="Shadow vs served, same requests")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from stack.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m monitoring.shadow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: DATABASE_URL")
    parser.add_argument("--model-dir", help="default: MODEL_DIR, a folder or s3://bucket/prefix (reads "
                        "quality/latest.json there)")
    parser.add_argument("--days", type=float, default=7.0, help="compare the last N days of the log (default 7)")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold for agreement (default 0.5)")
    parser.add_argument("--pair-seconds", type=float, default=60.0, help="a shadow score pairs with the served "
                        "score of the same entity logged at most this long before it (default 60)")
    args = parser.parse_args(argv)
    settings = get_settings()
    model_dir = args.model_dir or settings.model_dir
    engine = make_engine(args.database_url or settings.database_url)
    try:
        pairs = paired(engine, datetime.now(UTC) - timedelta(days=args.days), args.pair_seconds)
    finally:
        engine.dispose()
    registry = open_registry(model_dir)  # a folder, or s3:// (its reports are objects under quality/)
    comparison = compare(pairs, args.threshold, registry.fetch_report(LATEST_FILE))
    print(report(comparison, args.threshold))
    if comparison.pairs:
        folder = registry.reports_dir
        folder.mkdir(parents=True, exist_ok=True)
        plot(pairs, folder / "shadow_vs_served.png")
        registry.publish_reports(["shadow_vs_served.png"])
        url = getattr(registry, "url", None)
        print(f"chart: {f'{url}/{QUALITY_FOLDER}' if isinstance(url, str) else folder}/shadow_vs_served.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
