"""Experiment analysis: exposures joined with the spec's outcome in SQL, counts per variant, tests, a verdict.

What counts as a conversion comes from features/spec.yml `outcome`: a row of `outcome.table` for
the unit (`outcome.key`) at `outcome.time` within `outcome.window_days` of its first exposure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from ab.exposures import ab_exposures
from ab.stats import (
    Difference,
    SRMCheck,
    sample_size_per_arm,
    srm_check,
    two_proportion_test,
    wilson_interval,
)
from features.spec import SPEC, Entity, Outcome

UNIT_COLUMNS = ["unit_id", "variant", "first_ts", "n_variants", "first_outcome_ts"]


@dataclass(frozen=True)
class ArmCounts:
    """One variant's counts: assigned units, units whose window has closed, and conversions among those."""

    name: str
    weight: float
    units: int
    mature: int
    conversions: int


@dataclass(frozen=True)
class ArmResult:
    """One variant's conversion rate with its Wilson interval."""

    counts: ArmCounts
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed from counts alone."""

    experiment: str
    arms: list[ArmResult]
    srm: SRMCheck
    comparisons: dict[str, Difference]  # treatment name -> difference vs control
    alpha: float
    alpha_per_comparison: float  # Bonferroni over the treatments
    power: float
    mde: float
    baseline: float
    baseline_source: str
    required_per_arm: int
    unexpected: dict[str, int] = field(default_factory=dict)  # variants logged but not configured
    multi_variant_units: int = 0
    verdict: str = ""
    ready: bool = False  # SRM clean and every arm has the required sample
    winner: str | None = None  # the best significantly better treatment, once ready
    outcome: Outcome = field(default_factory=lambda: SPEC.outcome)  # what a conversion is
    unit: str = field(default_factory=lambda: SPEC.entity.name)  # what one unit is, in words


def _scope(
    experiment: str, until: datetime, since: datetime | None
) -> list[sa.ColumnElement[bool]]:
    """The exposures of one experiment in [since, until)."""
    e = ab_exposures
    scope = [e.c.experiment == experiment, e.c.ts < until]
    if since is not None:
        scope.append(e.c.ts >= since)
    return scope


def load_units(
    engine: sa.Engine,
    experiment: str,
    *,
    until: datetime,
    since: datetime | None = None,
    outcome: Outcome | None = None,
    entity: Entity | None = None,
) -> pd.DataFrame:
    """One row per exposed unit: first exposure, its variant, variants seen, first outcome at or after it.

    `outcome` (default: the spec's) names the table, key and time column of the outcome; `entity`
    (default: the spec's) gives the key's type: ab_exposures.unit_id is text, so an integer key
    is compared as BIGINT (Postgres has no text = bigint operator; SQLite would hide the mistake).
    """
    # one portable query; the conversion window is applied in pandas (count_arms), not in SQL
    outcome = SPEC.outcome if outcome is None else outcome
    entity = SPEC.entity if entity is None else entity
    e = ab_exposures
    scope = _scope(experiment, until, since)
    units = (
        sa.select(
            e.c.unit_id,
            sa.func.min(e.c.ts).label("first_ts"),
            sa.func.count(sa.distinct(e.c.variant)).label("n_variants"),
        )
        .where(*scope)
        .group_by(e.c.unit_id)
        .subquery("units")
    )
    fe = e.alias("fe")  # the first exposure's row(s), for its variant
    first = (
        sa.select(
            units.c.unit_id,
            units.c.first_ts,
            units.c.n_variants,
            sa.func.min(fe.c.variant).label("variant"),
        )
        .select_from(
            units.join(
                fe,
                sa.and_(
                    fe.c.experiment == experiment,
                    fe.c.unit_id == units.c.unit_id,
                    fe.c.ts == units.c.first_ts,
                ),
            )
        )
        .group_by(units.c.unit_id, units.c.first_ts, units.c.n_variants)
        .subquery("first_exposure")
    )
    target = outcome_table(outcome)
    key, time = target.c[outcome.key], target.c[outcome.time]
    query = (
        sa.select(
            first.c.unit_id,
            first.c.variant,
            first.c.first_ts,
            first.c.n_variants,
            sa.func.min(time).label("first_outcome_ts"),
        )
        .select_from(
            first.outerjoin(
                target,
                sa.and_(unit_matches(first.c.unit_id, key, entity), first.c.first_ts <= time),
            )
        )
        .group_by(first.c.unit_id, first.c.variant, first.c.first_ts, first.c.n_variants)
        .order_by(first.c.unit_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=UNIT_COLUMNS)
    for col in ("first_ts", "first_outcome_ts"):
        frame[col] = pd.to_datetime(frame[col])
    frame["n_variants"] = frame["n_variants"].astype("int64")
    return frame


def outcome_table(outcome: Outcome | None = None) -> sa.TableClause:
    """The outcome's table with the two columns the analysis reads (no app table definitions needed)."""
    outcome = SPEC.outcome if outcome is None else outcome
    return sa.table(outcome.table, sa.column(outcome.key), sa.column(outcome.time))


def unit_matches(
    unit_id: sa.ColumnElement, key: sa.ColumnElement, entity: Entity | None = None
) -> sa.ColumnElement[bool]:
    """ab_exposures.unit_id (text, the key's canonical form) = the outcome's key, in the key's type."""
    entity = SPEC.entity if entity is None else entity
    if entity.type == "integer":
        return sa.cast(unit_id, sa.BigInteger) == key
    return unit_id == key


def load_models(
    engine: sa.Engine, experiment: str, *, until: datetime, since: datetime | None = None
) -> pd.DataFrame:
    """Exposures per (variant, model_version): shows when `current` changed during the experiment."""
    e = ab_exposures
    scope = _scope(experiment, until, since)
    first_seen = sa.func.min(e.c.ts).label("first_seen")
    query = (
        sa.select(
            e.c.variant,
            e.c.model_version,
            sa.func.count().label("exposures"),
            first_seen,
            sa.func.max(e.c.ts).label("last_seen"),
        )
        .where(*scope)
        .group_by(e.c.variant, e.c.model_version)
        .order_by(e.c.variant, first_seen)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return pd.DataFrame(
        [tuple(r) for r in rows],
        columns=["variant", "model_version", "exposures", "first_seen", "last_seen"],
    )


def count_arms(
    units: pd.DataFrame,
    weights: dict[str, float],
    *,
    as_of: datetime,
    window: timedelta | None = None,
) -> tuple[list[ArmCounts], dict[str, int], int]:
    """Per-variant counts (config order), unexpected variants' unit counts, and multi-variant units.

    A unit converts when its first outcome lies in [first exposure, first exposure + window);
    `window` defaults to the spec's outcome.window_days. Units whose window has not closed by
    `as_of` count as assigned, not as mature.
    """
    window = SPEC.outcome.window if window is None else window
    multi = units["n_variants"] > 1
    clean = units[~multi]
    end = clean["first_ts"] + pd.Timedelta(window)
    mature = end <= pd.Timestamp(as_of)
    converted = mature & clean["first_outcome_ts"].notna() & (clean["first_outcome_ts"] < end)
    by_variant = pd.DataFrame(
        {"variant": clean["variant"], "mature": mature, "converted": converted}
    )
    sums = by_variant.groupby("variant").agg(
        units=("mature", "size"), mature=("mature", "sum"), conversions=("converted", "sum")
    )
    arms = [
        ArmCounts(
            name,
            weight,
            *(
                int(sums.at[name, c]) if name in sums.index else 0
                for c in ("units", "mature", "conversions")
            ),
        )
        for name, weight in weights.items()
    ]
    unexpected = {str(v): int(sums.at[v, "units"]) for v in sums.index if v not in weights}
    return arms, unexpected, int(multi.sum())


def analyse(
    experiment: str,
    arms: Sequence[ArmCounts],
    *,
    mde: float = 0.02,
    alpha: float = 0.05,
    power: float = 0.8,
    baseline: float | None = None,
    unexpected: dict[str, int] | None = None,
    multi_variant_units: int = 0,
    outcome: Outcome | None = None,
    unit: str | None = None,
) -> Analysis:
    """The statistics and the verdict from counts alone; arms[0] is the control.

    `outcome` and `unit` (default: the spec's outcome and entity name) only word the verdict and
    the report: pass the same outcome whose window count_arms used.
    """
    if len(arms) < 2:
        raise ValueError(f"an experiment needs at least 2 variants, got {[a.name for a in arms]}")
    unexpected = dict(unexpected or {})
    control = arms[0]
    alpha_each = alpha / (len(arms) - 1)
    results = [
        ArmResult(
            a,
            a.conversions / a.mature if a.mature else math.nan,
            *wilson_interval(a.conversions, a.mature, alpha),
        )
        for a in arms
    ]
    srm = srm_check([a.units for a in arms], [a.weight for a in arms])
    comparisons = {
        a.name: two_proportion_test(
            control.conversions, control.mature, a.conversions, a.mature, alpha_each
        )
        for a in arms[1:]
    }
    if baseline is not None:
        source = "given"
    elif control.mature:
        baseline, source = control.conversions / control.mature, f"observed in {control.name}"
    else:
        baseline, source = 0.5, "no data yet: 0.5, the worst case"
    required = sample_size_per_arm(baseline, mde, alpha_each, power)
    analysis = Analysis(
        experiment=experiment,
        arms=results,
        srm=srm,
        comparisons=comparisons,
        alpha=alpha,
        alpha_per_comparison=alpha_each,
        power=power,
        mde=mde,
        baseline=baseline,
        baseline_source=source,
        required_per_arm=required,
        unexpected=unexpected,
        multi_variant_units=multi_variant_units,
        outcome=SPEC.outcome if outcome is None else outcome,
        unit=unit or SPEC.entity.name,
    )
    text, ready, winner = verdict(analysis)
    return replace(analysis, verdict=text, ready=ready, winner=winner)


def verdict(a: Analysis) -> tuple[str, bool, str | None]:
    """A plain-words verdict, whether the experiment may be called at all, and the winner if any."""
    if a.unexpected:
        return (
            f"Do not trust these results: exposures were logged for variants that are not in "
            f"the config ({_fmt_counts(a.unexpected)}). The config changed during the experiment "
            f"or another service logs under this name; fix that, then restart with a new salt.",
            False,
            None,
        )
    if a.srm.flagged:
        shares = ", ".join(f"{r.counts.name} {r.counts.units:,}" for r in a.arms)
        return (
            f"Do not trust these results: sample ratio mismatch (chi-square p = {a.srm.p_value:.2g} "
            f"< 0.001; units {shares} do not match the configured weights). Assignment or exposure "
            f"logging is broken (lost exposures, bots, a redirect, a config change mid-test); find "
            f"the cause before reading any conversion numbers.",
            False,
            None,
        )
    smallest = min(a.arms, key=lambda r: r.counts.mature)
    if smallest.counts.mature < a.required_per_arm:
        have = smallest.counts.mature
        return (
            f"Too early to call: each variant needs {a.required_per_arm:,} {a.unit}s with a "
            f"complete {a.outcome.window_days}-day window to detect a difference of {a.mde * 100:.1f} "
            f"percentage points (alpha {a.alpha:g}, power {a.power:.0%}); {smallest.counts.name} "
            f"has {have:,} ({have / a.required_per_arm:.0%}). Keep it running and do not stop "
            f"early because the numbers look good now (see 'The peeking trap').",
            False,
            None,
        )
    control = a.arms[0]
    lines = []
    winners = []
    for r in a.arms[1:]:
        d = a.comparisons[r.counts.name]
        what = (
            f"{r.counts.name} converts at {fmt_pct(r.rate)} vs {fmt_pct(control.rate)} for "
            f"{control.counts.name}: {fmt_pp(d.diff)} (CI {fmt_pp(d.ci_low)} to {fmt_pp(d.ci_high)}, "
            f"p = {d.p_value:.2g})"
        )
        if d.p_value < a.alpha_per_comparison and d.diff > 0:
            winners.append((d.diff, r.counts.name))
            lines.append(f"{what}: better than {control.counts.name}.")
        elif d.p_value < a.alpha_per_comparison:
            lines.append(f"{what}: worse than {control.counts.name}.")
        else:
            lines.append(
                f"{what}: no detectable difference; a real effect, if any, is probably "
                f"smaller than the {a.mde * 100:.1f} points this test was sized for."
            )
    winner = max(winners)[1] if winners else None
    if winner:
        head = f"Winner: {winner}."
    else:
        head = f"No winner: keep {control.counts.name} (or decide on cost, latency or simplicity)."
    return " ".join([head, *lines]), True, winner


def fmt_pct(x: float) -> str:
    """A rate as a percentage, e.g. 12.34%."""
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def fmt_pp(x: float) -> str:
    """A difference of rates in percentage points, e.g. +1.20 pp."""
    return "n/a" if math.isnan(x) else f"{x * 100:+.2f} pp"


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,} units" for k, v in counts.items())
