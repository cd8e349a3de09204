"""Holdout metrics and the charts saved beside each model version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from features.schema import Feature

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier")


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss and Brier score of scores `p` against labels `y`."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
    }


def score_baseline(scores: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Decile edges of the training scores and the fraction of scores in each bin.

    The server counts live predictions into the same bins; PSI compares the two.
    """
    inner = np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1])
    edges = [0.0, *[float(x) for x in inner], 1.0]
    counts = np.histogram(np.clip(scores, 0, 1), bins=edges)[0]
    return {"edges": edges, "fractions": [float(c) / len(scores) for c in counts]}


def feature_baselines(X: np.ndarray, features: Sequence[Feature], bins: int = 10) -> list[dict]:
    """Each feature's training inputs in bins, from the encoded matrix (columns in schema order).

    Numeric: inner decile edges (repeated quantiles merge, so a count that is mostly 0 gets few
    bins); categorical: one bin per value (the encoded value is its index). Missing inputs get a
    last bin when the feature is nullable. The server counts served rows into the same bins.
    """
    out = []
    for j, f in enumerate(features):
        column = X[:, j]
        missing = np.isnan(column)
        present = column[~missing]
        edges: list[float] = []
        if f.kind == "categorical":
            counts = np.bincount(present.astype(np.int64), minlength=len(f.values))[: len(f.values)]
        else:
            if present.size:
                inner = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
                edges = [float(e) for e in inner if e > present.min()]  # no bin below the minimum
            counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
        counts = [*counts.tolist(), int(missing.sum())] if f.nullable else counts.tolist()
        total = max(sum(counts), 1)
        out.append({"name": f.name, "kind": f.kind, "edges": edges, "values": list(f.values),
                    "nullable": f.nullable, "fractions": [c / total for c in counts]})
    return out


def save_plots(folder: Path, y: np.ndarray, p: np.ndarray, importance: dict[str, float]) -> list[str]:
    """ROC, calibration and feature-importance charts as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"model (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the holdout")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "roc.png", dpi=80)
    plt.close(fig)
    written.append("roc.png")

    edges = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    mean_p = [p[which == b].mean() for b in range(10) if (which == b).any()]
    mean_y = [y[which == b].mean() for b in range(10) if (which == b).any()]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(mean_p, mean_y, "o-", label="model (deciles)")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration on the holdout")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "calibration.png", dpi=80)
    plt.close(fig)
    written.append("calibration.png")

    if importance:
        names = sorted(importance, key=importance.get)
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
        ax.barh(names, [importance[n] for n in names])
        ax.set(xlabel="importance", title="Feature importance")
        fig.tight_layout()
        fig.savefig(folder / "importance.png", dpi=80)
        plt.close(fig)
        written.append("importance.png")
    return written
