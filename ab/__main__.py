"""`python -m ab`: analyse an experiment and write var/ab/<experiment>/report.md + conversion.png."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ab import analysis as ab_analysis
from ab.analysis import analyse, count_arms, load_models, load_units
from ab.config import ConfigError, load_experiment
from ab.report import write_report
from features.db import DatabaseError, make_engine, redact
from stack.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; 0 when the report was written, 1 for data problems, 2 for usage errors."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[ab {time.perf_counter() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        experiment = load_experiment(args.config or get_settings().ab_config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.experiment or (experiment.name if experiment else None)
    if name is None:
        print(
            f"error: no experiment is configured in {args.config or get_settings().ab_config}; pass "
            "--experiment NAME to analyse a finished one (see ab/README.md)",
            file=sys.stderr,
        )
        return 2
    since = args.since
    if experiment is not None and experiment.name == name and not args.weights:
        weights = {v.name: v.weight for v in experiment.variants}
        models = {v.name: v.model for v in experiment.variants}
        since = since or experiment.started_at
    elif args.weights:
        weights, models = args.weights, {}
    else:
        print(
            f"error: experiment {name!r} is not the one in the config; pass its split as "
            "--weights control=50,challenger=50 (control first)",
            file=sys.stderr,
        )
        return 2
    as_of = args.as_of or datetime.now(UTC).replace(tzinfo=None)
    spec = ab_analysis.SPEC  # read here, at run time (tests may swap it)
    outcome, entity = spec.outcome, spec.entity

    url = args.database_url or get_settings().database_url
    engine: sa.Engine | None = None
    try:
        engine = make_engine(url)
        if not sa.inspect(engine).has_table("ab_exposures"):
            print(
                f"error: no ab_exposures table in {redact(url)}: the server has not recorded any "
                "exposure yet (is an experiment configured and receiving user_id requests?)",
                file=sys.stderr,
            )
            return 1
        progress(f"querying exposures of {name!r} up to {as_of:%Y-%m-%d %H:%M} in {redact(url)}")
        progress(
            f"a unit converts with 1+ {outcome.noun} ({outcome.table}.{outcome.time}) within "
            f"{outcome.window_days} days of its first exposure (features/spec.yml outcome)"
        )
        units = load_units(engine, name, until=as_of, since=since, outcome=outcome, entity=entity)
        served = load_models(engine, name, until=as_of, since=since)
    except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            engine.dispose()
    if units.empty:
        print(f"error: no exposures for experiment {name!r} in {redact(url)}", file=sys.stderr)
        return 1
    progress(f"{len(units):,} exposed units ({entity.name}s)")
    arms, unexpected, multi = count_arms(units, weights, as_of=as_of, window=outcome.window)
    analysis = analyse(
        name,
        arms,
        mde=args.mde,
        alpha=args.alpha,
        power=args.power,
        baseline=args.baseline,
        unexpected=unexpected,
        multi_variant_units=multi,
        outcome=outcome,
        unit=entity.name,
    )
    report = write_report(
        analysis,
        Path(args.out),
        as_of=as_of,
        since=since,
        database=redact(url),
        models=models,
        served=served,
    )
    progress(f"wrote {report} and {report.with_name('conversion.png')}")
    print(analysis.verdict)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ab", description=__doc__)
    p.add_argument("--experiment", help="experiment name (default: the one in AB_CONFIG)")
    p.add_argument(
        "--config", type=Path, help="experiment config (default: AB_CONFIG, ab/experiment.yml)"
    )
    p.add_argument("--database-url", help="SQLAlchemy URL (default: DATABASE_URL)")
    p.add_argument("--out", default="var/ab", help="output folder (default: var/ab)")
    p.add_argument(
        "--mde",
        type=float,
        default=0.02,
        help="smallest absolute difference in conversion worth detecting (default: 0.02 = 2 points)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="false positive rate (default: 0.05)")
    p.add_argument(
        "--power", type=float, default=0.8, help="chance to detect the MDE (default: 0.8)"
    )
    p.add_argument(
        "--baseline",
        type=float,
        help="control conversion rate for the sample size (default: observed in control)",
    )
    p.add_argument(
        "--weights",
        type=_parse_weights,
        help="split of an experiment no longer in the config: control=50,b=50",
    )
    p.add_argument(
        "--since",
        type=_parse_ts,
        help="ignore exposures before this UTC time (default: the config's started_at)",
    )
    p.add_argument("--as-of", type=_parse_ts, help="analyse as of this UTC time (default: now)")
    return p


def _parse_ts(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO time like 2026-11-28T19:15:00Z: {value!r}"
        ) from None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def _parse_weights(value: str) -> dict[str, float]:
    try:
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        weights = {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        weights = {}
    if len(weights) < 2 or any(w <= 0 for w in weights.values()):
        raise argparse.ArgumentTypeError(
            f"expected control=50,challenger=50 (control first), got {value!r}"
        )
    return weights


if __name__ == "__main__":
    sys.exit(main())
