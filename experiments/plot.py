"""A metric over time as a PNG: one line per model type, promoted runs ringed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state (Agg canvas)

from experiments.report import Row, better, is_promoted, number, when


def plot_metric(rows: Sequence[Row], metric: str, out_dir: Path | str) -> Path:
    """Write `<out_dir>/<metric>.png` from the runs that have a time and a value; returns its path."""
    out = Path(out_dir) / f"{metric}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    points = [(when(r), number(r, metric), r) for r in rows]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    for model in sorted({p[2].get("model_type") or "?" for p in points}):
        mine = sorted((p for p in points if (p[2].get("model_type") or "?") == model), key=lambda p: p[0])
        xs, ys = [p[0] for p in mine], [p[1] for p in mine]
        (line,) = ax.plot(xs, ys, marker="o", markersize=5, linewidth=1.2, label=model)
        promoted = [p for p in mine if is_promoted(p[2])]
        if promoted:
            ax.scatter([p[0] for p in promoted], [p[1] for p in promoted], s=160, facecolors="none",
                       edgecolors=line.get_color(), linewidths=1.8, zorder=3)
    if points:  # one legend entry for the rings, whatever the colour
        ax.scatter([], [], s=160, facecolors="none", edgecolors="black", linewidths=1.8,
                   label="promoted (deployed)")
    ax.set_title(f"{metric} per training run ({better(metric)} is better)")
    ax.set_xlabel("run started (UTC)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    fig.savefig(out)
    return out
