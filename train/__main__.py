"""`python -m train`: train a model on the app database, gate it, save it, log it, deploy it.

Examples:
    python -m train                                   # LightGBM, deploy if not worse
    python -m train --model logreg --notes "baseline"
    python -m train --param num_leaves=63 --param learning_rate=0.03 --no-deploy
    python -m train --force --reason "schema change"  # deploy even if the gate says no
"""

from __future__ import annotations

import argparse
import sys

from features.build import EmptyDataError, FeatureSQLError
from features.db import DatabaseError, check_connection, make_engine
from features.spec import SPEC
from registry import open_registry
from registry.store import RegistryError
from stack.settings import get_settings
from train.pipeline import MODEL_TYPES, TrainConfig, TrainError, TrainingBusy, params_from_cli, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--model", choices=MODEL_TYPES, default="lightgbm")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model parameter (repeatable)")
    p.add_argument("--notes", default="", help="what you tried and why (goes to experiments/runs.csv)")
    p.add_argument("--no-deploy", action="store_true", help="save and log, but never touch `current`")
    p.add_argument("--force", action="store_true", help="deploy even if the gate refuses (needs --reason)")
    p.add_argument("--reason", default="", help="why --force (goes to history.csv)")
    p.add_argument("--tolerance", type=float, default=0.005, help="ROC AUC the challenger may lose (default 0.005)")
    p.add_argument("--as-of-count", type=int, default=SPEC.training.as_of_count,
                   help=f"as_of dates in the frame, every {SPEC.training.step_days} days "
                        f"(default {SPEC.training.as_of_count}, spec.yml training)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if a model is deployed (container start)")
    p.add_argument("--shuffle-labels", action="store_true", help="sanity check: train on shuffled labels")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    try:
        registry = open_registry(settings.model_dir, settings.model_cache_dir)
        if args.if_missing and registry.current():
            print(f"train: {registry.current()} is deployed; nothing to do (--if-missing)")
            return 0
        config = TrainConfig(
            model_type=args.model, params=params_from_cli(args.param), as_of_count=args.as_of_count,
            tolerance=args.tolerance, notes=args.notes, deploy=not args.no_deploy, force=args.force,
            reason=args.reason, shuffle_labels=args.shuffle_labels,
        )
        engine = make_engine(settings.database_url, create=False)  # a missing SQLite file: "run make seed"
        check_connection(engine)
        result = run(engine, registry, settings.experiments_log, config)
    except TrainingBusy as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 3
    except (TrainError, DatabaseError, EmptyDataError, FeatureSQLError, RegistryError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    state = "deployed" if result.promoted else "not deployed"
    print(f"train: {result.version} roc_auc={result.metrics['roc_auc']:.4f} ({state}: {result.decision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
