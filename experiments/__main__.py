"""`python -m experiments`: the training runs of EXPERIMENTS_LOG as a table, best first.

Examples:
    python -m experiments                              # every run, best roc_auc first
    python -m experiments --sort log_loss --last 10    # the 10 newest runs, lowest log loss first
    python -m experiments --model lightgbm --promoted  # LightGBM runs that were deployed
    python -m experiments --plot roc_auc               # also var/experiments/roc_auc.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from experiments.log import read_runs
from experiments.report import NUMERIC, SORT_KEYS, better, model_types, select, sort_runs, table


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    lines = __doc__.splitlines()
    p = argparse.ArgumentParser(prog="python -m experiments", description=lines[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(lines[2:]))
    p.add_argument("--log", type=Path, default=None, help="the CSV to read (default: EXPERIMENTS_LOG, "
                   "else experiments/runs.csv)")
    p.add_argument("--sort", choices=SORT_KEYS, default="roc_auc",
                   help="best first by this column; log_loss, brier and duration_s: lower is better; "
                   "started_at: newest first (default roc_auc)")
    p.add_argument("--model", default=None, help="only runs of this model type, e.g. lightgbm or logreg")
    p.add_argument("--last", type=_positive, default=None, metavar="N", help="only the N most recent runs")
    p.add_argument("--promoted", action="store_true", help="only runs the gate deployed")
    p.add_argument("--wide", action="store_true", help="full versions and notes, no truncation")
    p.add_argument("--plot", choices=NUMERIC, default=None, metavar="METRIC",
                   help=f"also write a PNG of METRIC over time; one of {', '.join(NUMERIC)}")
    p.add_argument("--out", type=Path, default=Path("var/experiments"),
                   help="folder for --plot (default var/experiments)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write the plot); 0 on success, 2 for a bad option."""
    args = parse_args(argv)
    if args.log is None:
        from stack.settings import get_settings

        args.log = get_settings().experiments_log
    runs = read_runs(args.log)
    if not runs:
        print(f"no training runs in {args.log} yet: run `make train` (or `python -m train "
              "--notes '...'`) and every run adds a row here")
        return 0
    known = model_types(runs)
    if args.model is not None and args.model not in known:
        print(f"experiments: no runs of model {args.model!r} in {args.log}; --model must be one of: "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    picked = select(runs, model=args.model, promoted=args.promoted, last=args.last)
    filters = " ".join(f for f in (args.model and f"--model {args.model}",
                                   args.promoted and "--promoted",
                                   args.last and f"--last {args.last}") if f)
    if not picked:
        print(f"no runs in {args.log} match {filters}; {len(runs)} runs in all")
        return 0
    order = "newest first" if args.sort == "started_at" else f"best {args.sort} first ({better(args.sort)} is better)"
    print(f"{len(picked)} of {len(runs)} runs in {args.log}{f' ({filters})' if filters else ''}, {order}\n")
    width = shutil.get_terminal_size((150, 24)).columns  # COLUMNS, the terminal, or 150 when piped
    print(table(sort_runs(picked, args.sort), wide=args.wide, sort_key=args.sort, width=width))
    if args.plot:
        from experiments.plot import plot_metric  # matplotlib only when asked

        path = plot_metric(picked, args.plot, args.out)
        print(f"\nplot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
