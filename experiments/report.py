"""Pick runs out of the log (filters, most recent N, best first) and print them as a table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from experiments.log import LOWER_IS_BETTER, METRIC_COLUMNS

# What `--sort` and `--plot` accept: the holdout metrics, then how long a run took.
NUMERIC = (*METRIC_COLUMNS, "duration_s")
SORT_KEYS = (*NUMERIC, "started_at")
NOTES_MIN_WIDTH = 24  # notes get what the terminal has left, but at least this

Row = dict[str, str]


def number(row: Row, column: str) -> float | None:
    """The cell as a float; None when empty or not a number (a hand-edited cell)."""
    try:
        value = float(row.get(column) or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def when(row: Row) -> datetime | None:
    """started_at as an aware datetime (UTC when the cell has no offset); None when unparsable."""
    try:
        t = datetime.fromisoformat(row.get("started_at") or "")
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def chronological(rows: Iterable[Row]) -> list[Row]:
    """Oldest first by started_at. Appends keep the file in time order, but a merge of two
    branches' runs.csv need not; rows without a time keep their place at the start."""
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(rows, key=lambda r: when(r) or oldest)


def is_promoted(row: Row) -> bool:
    """Whether the gate deployed the run."""
    return (row.get("promoted") or "").strip().lower() in ("true", "1", "yes")


def better(metric: str) -> str:
    """'lower' or 'higher': which way is better for `metric`."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def model_types(rows: Iterable[Row]) -> list[str]:
    """The model types that appear in `rows`, sorted."""
    return sorted({r.get("model_type") or "?" for r in rows})


def select(rows: Sequence[Row], model: str | None = None, promoted: bool = False,
           last: int | None = None) -> list[Row]:
    """Rows of `model` (and promoted ones only, if asked), then the `last` most recent of them."""
    picked = [r for r in chronological(rows) if (model is None or r.get("model_type") == model)
              and (not promoted or is_promoted(r))]
    if last is not None:
        picked = picked[-last:] if last > 0 else []
    return picked


def sort_runs(rows: Sequence[Row], key: str) -> list[Row]:
    """Best first by `key` (newest first for started_at); runs without a value go last."""
    if key == "started_at":
        return chronological(rows)[::-1]
    sign = 1.0 if key in LOWER_IS_BETTER else -1.0
    have = [r for r in rows if number(r, key) is not None]
    missing = [r for r in rows if number(r, key) is None]
    return sorted(have, key=lambda r: sign * number(r, key)) + missing


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _version(row: Row, wide: bool) -> str:
    version = row.get("version") or row.get("run_id") or ""
    # <YYYYMMDDTHHMMSSZ>-<6 hex>: the time is in the `when` column, the hex names the run.
    return version if wide else version.rsplit("-", 1)[-1]


def table(rows: Sequence[Row], wide: bool = False, sort_key: str = "roc_auc", width: int = 150) -> str:
    """An aligned text table of `rows`, in the order given, `width` characters wide at most.

    Shows roc_auc, pr_auc and log_loss; a `sort_key` outside those (brier, duration_s) gets a
    column too, so the order can be read off the table. Notes are cut to fit, unless `wide`.
    """
    shown = ["roc_auc", "pr_auc", "log_loss"]
    if sort_key in NUMERIC and sort_key not in shown:
        shown.append(sort_key)
    header = ["when (UTC)", "version" if wide else "run", "model", *shown,
              "champion_roc_auc", "promoted", "who", "notes"]
    right = set(range(3, 4 + len(shown)))  # numbers align right
    lines = []
    for r in rows:
        t = when(r)
        notes = " ".join((r.get("notes") or "").split())
        lines.append([
            f"{t:%Y-%m-%d %H:%M}" if t else (r.get("started_at") or "?"),
            _version(r, wide),
            r.get("model_type") or "?",
            *(_fmt(number(r, m), 1 if m == "duration_s" else 4) for m in shown),
            _fmt(number(r, "champion_roc_auc")),
            "yes" if is_promoted(r) else "no",
            r.get("user") or "",
            notes,
        ])
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
    if not wide:
        room = max(NOTES_MIN_WIDTH, width - sum(widths[:-1]) - 2 * (len(widths) - 1))
        for cells in lines:
            cells[-1] = _short(cells[-1], room)
        widths[-1] = max(len(header[-1]), *(len(c[-1]) for c in lines))

    def render(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(c) for c in lines)])
