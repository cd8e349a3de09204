"""The A/B report: var/ab/<experiment>/report.md and conversion.png."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state (Agg canvas)

from ab.analysis import Analysis, fmt_pct, fmt_pp


def write_report(
    analysis: Analysis,
    out_dir: Path,
    *,
    as_of: datetime,
    since: datetime | None,
    database: str,
    models: dict[str, str],
    served: pd.DataFrame | None = None,
) -> Path:
    """Write report.md and conversion.png under out_dir/<experiment>/; returns the report's path."""
    folder = Path(out_dir) / analysis.experiment
    folder.mkdir(parents=True, exist_ok=True)
    chart = folder / "conversion.png"
    write_chart(analysis, chart)
    report = folder / "report.md"
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text(
        render_markdown(
            analysis,
            as_of=as_of,
            since=since,
            database=database,
            models=models,
            served=served,
            chart=chart.name,
        ),
        encoding="utf-8",
    )
    tmp.replace(report)
    return report


def render_markdown(
    a: Analysis,
    *,
    as_of: datetime,
    since: datetime | None,
    database: str,
    models: dict[str, str],
    served: pd.DataFrame | None,
    chart: str,
) -> str:
    """The report as Markdown text; the outcome and unit wording come from the analysis (the spec)."""
    days, noun, unit = a.outcome.window_days, a.outcome.noun, a.unit
    conf = 1 - a.alpha
    total = sum(r.counts.units for r in a.arms)
    wsum = sum(r.counts.weight for r in a.arms)
    out = [
        f"# A/B report: {a.experiment}",
        "",
        f"Exposures {'from ' + _ts(since) + ' ' if since else ''}up to {_ts(as_of)} UTC in `{database}`. "
        f"A unit (one {unit}) converts when it has at least one {noun} (a row of "
        f"`{a.outcome.table}`) in the {days} days from its first exposure; units whose {days} days "
        "have not ended yet count in the ratio check only.",
        "",
        "## Verdict",
        "",
        f"**{a.verdict}**",
        "",
        f"![conversion per variant]({chart})",
        "",
        "## 1. Sample ratio check",
        "",
        "Checked first: if units did not split as configured, nothing below can be trusted.",
        "",
        "| variant | weight | expected units | units | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in a.arms:
        c = r.counts
        share = c.units / total if total else math.nan
        out.append(
            f"| {c.name} | {c.weight:g}% | {total * c.weight / wsum:,.0f} | {c.units:,} | {fmt_pct(share)} |"
        )
    out += [
        "",
        f"Chi-square {a.srm.chi2:.2f}, p = {a.srm.p_value:.3g}: "
        + ("**mismatch (p < 0.001)**." if a.srm.flagged else "no mismatch (flag at p < 0.001)."),
        "",
        f"## 2. Conversion per variant ({conf * 100:g}% Wilson intervals)",
        "",
        "| variant | model | units assigned | units with full window | converted | rate | CI |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in a.arms:
        c = r.counts
        out.append(
            f"| {c.name} | `{models.get(c.name, '?')}` | {c.units:,} | {c.mature:,} | "
            f"{c.conversions:,} | {fmt_pct(r.rate)} | {fmt_pct(r.ci_low)} to {fmt_pct(r.ci_high)} |"
        )
    control = a.arms[0].counts.name
    out += [
        "",
        f"## 3. Difference vs {control}",
        "",
        f"Two-proportion z test (pooled), two-sided; Wald interval for the difference at "
        f"{(1 - a.alpha_per_comparison) * 100:g}%"
        + (
            f" (alpha {a.alpha:g} split over {len(a.comparisons)} comparisons, Bonferroni)."
            if len(a.comparisons) > 1
            else "."
        ),
        "",
        "| variant | difference | CI | z | p-value | significant |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, d in a.comparisons.items():
        sig = "yes" if d.p_value < a.alpha_per_comparison else "no"
        out.append(
            f"| {name} | {fmt_pp(d.diff)} | {fmt_pp(d.ci_low)} to {fmt_pp(d.ci_high)} | {d.z:.2f} | "
            f"{d.p_value:.3g} | {sig} |"
        )
    smallest = min(r.counts.mature for r in a.arms)
    out += [
        "",
        "## 4. Sample size",
        "",
        f"To detect a difference of {a.mde * 100:.1f} percentage points from a baseline of "
        f"{fmt_pct(a.baseline)} ({a.baseline_source}) at alpha {a.alpha_per_comparison:.3g} with "
        f"{a.power:.0%} power, each variant needs **{a.required_per_arm:,} units** with a full "
        f"{days}-day window. The smallest variant has {smallest:,} "
        f"({smallest / a.required_per_arm:.0%}). Decide the sample size before starting and "
        "read the result once it is reached.",
        "",
        "## Data notes",
        "",
        f"- Units exposed to more than one variant (reported, excluded everywhere): "
        f"{a.multi_variant_units:,}.",
    ]
    if a.unexpected:
        out.append(
            "- Variants in the log but not in the config: "
            + ", ".join(f"`{k}` ({v:,} units)" for k, v in a.unexpected.items())
            + "."
        )
    if served is not None and not served.empty:
        out += [
            "- Model versions served per variant (a `current` variant follows promotions):",
            "",
            "  | variant | model version | exposures | first seen | last seen |",
            "  |---|---|---:|---|---|",
        ]
        for row in served.itertuples(index=False):
            out.append(
                f"  | {row.variant} | `{row.model_version}` | {row.exposures:,} | "
                f"{_ts(row.first_seen)} | {_ts(row.last_seen)} |"
            )
    out += [
        "",
        "## The peeking trap",
        "",
        "Looking at this report every day and stopping the first time p < 0.05 inflates the false "
        "positive rate far above 5%: with enough looks, an A/A test 'wins'. Read the verdict only "
        "once every variant has the sample size in section 4, or use a sequential method (see "
        "ab/README.md, 'Replace this when').",
        "",
    ]
    return "\n".join(out)


def write_chart(a: Analysis, path: Path) -> None:
    """Bar chart of conversion per variant with its confidence interval, as a PNG."""
    names = [r.counts.name for r in a.arms]
    rates = [0.0 if math.isnan(r.rate) else r.rate * 100 for r in a.arms]
    low = [max(0.0, rate - r.ci_low * 100) for rate, r in zip(rates, a.arms, strict=True)]
    high = [max(0.0, r.ci_high * 100 - rate) for rate, r in zip(rates, a.arms, strict=True)]
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    colors = ["#7f7f7f"] + ["#1f77b4"] * (len(names) - 1)
    ax.bar(names, rates, color=colors, alpha=0.85)
    ax.errorbar(
        names, rates, yerr=[low, high], fmt="none", ecolor="black", capsize=8, linewidth=1.2
    )
    for i, r in enumerate(a.arms):
        label = f"{fmt_pct(r.rate)}\nn={r.counts.mature:,}"
        ax.annotate(
            label,
            (i, rates[i] + high[i]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(
        f"{a.unit}s with 1+ {a.outcome.noun} within {a.outcome.window_days} days of exposure (%)",
        fontsize=9,
    )
    top = max((r + h for r, h in zip(rates, high, strict=True)), default=1.0)
    ax.set_ylim(0, max(top * 1.25, 1.0))
    if a.srm.flagged or a.unexpected:
        status = "do not trust: sample ratio mismatch"
    elif not a.ready:
        status = "too early to call"
    else:
        status = f"winner: {a.winner}" if a.winner else "no winner"
    ax.set_title(
        f"{a.experiment}: {a.outcome.noun} conversion per variant, {(1 - a.alpha) * 100:g}% CI "
        f"({status})",
        fontsize=10,
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)


def _ts(ts: datetime | pd.Timestamp | None) -> str:
    return "" if ts is None else pd.Timestamp(ts).strftime("%Y-%m-%d %H:%M")
