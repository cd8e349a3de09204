"""The report of one run: report.md (totals, per-endpoint table, SLO verdicts, steps) and a PNG.

Built only from Locust's CSV files, so a report can be rebuilt later from a run folder:
    python -m loadtest.report var/loadtest/<run>      (rewrites report.md and loadtest.png)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest import results as lr
from loadtest import slo as slos
from loadtest import traffic

CSV_PREFIX = "loadtest"  # Locust writes loadtest_stats.csv, loadtest_stats_history.csv, ...
REPORT = "report.md"
CHART = "loadtest.png"
RUN_INFO = "run.json"
MIN_STEP_SECONDS = 2  # shorter plateaus are ramps, not steps


@dataclass(frozen=True)
class RunInfo:
    """How the run was made: what the report says about its conditions."""

    host: str
    started_at: str
    duration_s: float
    users: int
    spawn_rate: float
    shape: str = "constant"
    mix: str = traffic.DEFAULT_MIX
    user_rps: float = 20.0
    processes: int = 1
    cores: int = 1
    locust_version: str = ""
    payloads: str = ""
    command: str = ""
    slo: dict[str, Any] = field(default_factory=lambda: asdict(slos.DEFAULT))


@dataclass(frozen=True)
class Step:
    """A plateau of constant user count in the history."""

    users: int
    seconds: float
    rps: float
    failures: int
    requests: int
    p99_ms: float | None


def steps(history: Sequence[lr.HistoryPoint], endpoint: str) -> list[Step]:
    """Plateaus of constant user count: their throughput and the p99 of `endpoint` at their end.

    Locust's p99 in the history covers the last ~10 s, so a step's last point describes the
    step (when steps are at least 10 s long) rather than the ramp into it.
    """
    totals = [p for p in history if p.name == lr.AGGREGATED]
    p99_at = {p.timestamp: p.p99 for p in history if p.name == endpoint}
    out: list[Step] = []
    groups: list[list[lr.HistoryPoint]] = []
    for point in totals:
        if groups and groups[-1][0].users == point.users:
            groups[-1].append(point)
        else:
            groups.append([point])
    for group in groups:
        first, last = group[0], group[-1]
        seconds = last.timestamp - first.timestamp
        if first.users == 0 or seconds < MIN_STEP_SECONDS:
            continue
        out.append(Step(
            users=first.users,
            seconds=seconds,
            rps=(last.total_requests - first.total_requests) / seconds,
            failures=last.total_failures - first.total_failures,
            requests=last.total_requests - first.total_requests,
            p99_ms=p99_at.get(last.timestamp),
        ))
    return out


def capacity(found: Sequence[Step], slo: slos.SLO) -> Step | None:
    """The step with the highest throughput whose p99 and error rate met the SLO."""
    good = [s for s in found if s.p99_ms is not None and s.p99_ms <= slo.p99_ms
            and s.requests and s.failures / s.requests <= slo.error_rate]
    return max(good, key=lambda s: s.rps, default=None)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _step_row(s: Step, user_rps: float, slo: slos.SLO) -> str:
    offered = f"{s.users * user_rps:,.0f}" if user_rps > 0 else "-"
    meets = "yes" if s.p99_ms is not None and s.p99_ms <= slo.p99_ms else "no"
    return (f"| {s.users} | {s.seconds:g} | {offered} | {s.rps:,.1f} | {_ms(s.p99_ms)} | "
            f"{s.failures:,} | {meets} |")


def _slo_from(info: RunInfo) -> slos.SLO:
    return slos.SLO(**info.slo)


def markdown(info: RunInfo, res: lr.Results, history: Sequence[lr.HistoryPoint],
             verdicts: Sequence[slos.Verdict]) -> str:
    """The report as markdown."""
    slo = _slo_from(info)
    missed = slos.missed(list(verdicts))
    total = res.total
    offered = (f"{info.user_rps:g} tasks/s per user (offered about {info.users * info.user_rps:,.0f}/s "
               f"at {info.users} users)" if info.user_rps > 0 else "none: each user sends as soon as "
               "its previous answer arrives")
    lines = [
        f"# Load test of {info.host}",
        "",
        f"**{'All SLOs met' if not missed else f'{len(missed)} SLO(s) missed'}.** "
        + " ".join(f"{v.name}: {v.measured}." for v in missed),
        "",
        "| run | |",
        "|---|---|",
        f"| started | {info.started_at} |",
        f"| duration | {info.duration_s:g} s |",
        f"| users | {info.users} (spawn rate {info.spawn_rate:g}/s), shape `{info.shape}` |",
        f"| task mix | `{info.mix}`: "
        + ", ".join(f"{k} {w}" for k, w in traffic.MIXES.get(info.mix, {}).items() if w) + " |",
        f"| pacing | {offered} |",
        f"| load generator | Locust {info.locust_version}, {info.processes} process(es), "
        f"on a machine with {info.cores} core(s) |",
        f"| payloads | `{info.payloads}` |",
        f"| command | `{info.command}` |",
        "",
        "## Totals",
        "",
        f"- requests: {total.requests:,}, at {total.rps:,.1f} requests/s",
        f"- unexpected failures: {total.failures:,} ({total.failure_rate:.2%}); "
        f"exceptions in the scenario: {res.exception_count:,}",
        f"- latency of all requests: p50 {_ms(total.p50)} ms, p95 {_ms(total.p95)} ms, "
        f"p99 {_ms(total.p99)} ms, max {_ms(total.max_ms)} ms",
        "",
        "## SLOs",
        "",
        "| objective | target | measured | verdict |",
        "|---|---|---|---|",
        *(f"| {v.name} | {v.objective} | {v.measured} | {'met' if v.met else '**MISSED**'} |"
          for v in verdicts),
        "",
        "## Per endpoint",
        "",
        "Latencies in ms. Rows named `/predict [bad input: ...]` are requests the server must "
        "refuse: they count as successes only when the answer was a 4xx naming the field.",
        "",
        "| request | requests | failures | req/s | p50 | p95 | p99 | max | avg bytes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = {name: i for i, name in enumerate(traffic.ENDPOINT_NAMES)}
    for e in sorted(res.endpoints, key=lambda e: (order.get(e.name, len(order)), e.name)):
        lines.append(f"| {e.method} {e.name} | {e.requests:,} | {e.failures:,} | {e.rps:,.1f} | "
                     f"{_ms(e.p50)} | {_ms(e.p95)} | {_ms(e.p99)} | {_ms(e.max_ms)} | "
                     f"{e.average_bytes or 0:,.0f} |")
    lines.append(f"| **all** | {total.requests:,} | {total.failures:,} | {total.rps:,.1f} | "
                 f"{_ms(total.p50)} | {_ms(total.p95)} | {_ms(total.p99)} | {_ms(total.max_ms)} | "
                 f"{total.average_bytes or 0:,.0f} |")
    lines += ["", "## Over time", "", f"![throughput and latency over time]({CHART})", ""]

    found = steps(history, slo.endpoint)
    if len(found) > 1:
        best = capacity(found, slo)
        lines += [
            "## Steps",
            "",
            f"One row per plateau of users; p99 of {slo.endpoint} over the step's last ~10 s.",
            "",
            "| users | seconds | offered req/s | achieved req/s | p99 (ms) | failures | meets p99 SLO |",
            "|--:|--:|--:|--:|--:|--:|---|",
            *(_step_row(s, info.user_rps, slo) for s in found),
            "",
            (f"Highest throughput meeting the p99 and error-rate SLOs: **{best.rps:,.0f} requests/s** "
             f"at {best.users} users (p99 {_ms(best.p99_ms)} ms)." if best else
             "No step met the p99 and error-rate SLOs."),
            "",
        ]

    if res.failures:
        lines += ["## Failures", "", "| request | error | count |", "|---|---|--:|"]
        lines += [f"| {f.method} {f.name} | {f.error.replace('|', '/')[:200]} | {f.occurrences:,} |"
                  for f in res.failures[:20]]
        lines.append("")
    if res.exceptions:
        lines += ["## Exceptions in the scenario", "", "| count | message |", "|--:|---|"]
        lines += [f"| {count:,} | {message.replace('|', '/')[:200]} |" for count, message in res.exceptions[:20]]
        lines.append("")
    lines += [
        "## Reading this",
        "",
        "Locust is a closed-loop generator: a user waits for each answer before its next request, "
        "so when the server stalls, fewer requests are sent and the slow moments are under-sampled "
        "(coordinated omission). The percentiles above are a lower bound on what an open stream of "
        "clients would see near saturation; see loadtest/README.md. Locust's own CSV files and "
        "`locust.html` are next to this report.",
        "",
    ]
    return "\n".join(lines)


def _objective(ax, value: float, data: Sequence[float], color: str, label: str) -> None:
    """A dotted line at the objective; when it is far above the data, say so instead of
    squashing the curves against the axis."""
    top = max(data, default=0) * 1.15 or 1.0
    if value <= 3 * top:
        ax.axhline(value, color=color, linestyle=":", linewidth=1, label=label)
        ax.set_ylim(0, max(top, value * 1.1))
    else:
        ax.plot([], [], color=color, linestyle=":", linewidth=1, label=f"{label} (above the chart)")
        ax.set_ylim(0, top)


def plot(history: Sequence[lr.HistoryPoint], path: Path, slo: slos.SLO) -> Path:
    """Throughput (with users) and p50/p95/p99 latency over time, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    totals = [p for p in history if p.name == lr.AGGREGATED]
    target = [p for p in history if p.name == slo.endpoint] or totals
    label = slo.endpoint if target is not totals else "all requests"
    t0 = totals[0].timestamp if totals else 0

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = [p.timestamp - t0 for p in totals]
    top.plot(x, [p.rps for p in totals], color="tab:blue", label="requests/s (~10 s average)")
    top.plot(x, [p.failures_per_s for p in totals], color="tab:red", label="failures/s")
    _objective(top, slo.min_rps, [p.rps for p in totals], "tab:blue",
               f"throughput SLO {slo.min_rps:,g}/s")
    top.set_ylabel("requests per second")
    top.set_title("Throughput (all requests) and simulated users")
    users = top.twinx()
    users.step(x, [p.users for p in totals], where="post", color="grey", alpha=0.6, label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0)
    handles = top.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="upper left", fontsize="small")
    top.grid(alpha=0.3)

    # A p99 of 0 means the ~10 s window was empty (the first second), not a 0 ms answer.
    measured = [p for p in target if p.p99]
    for attr, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        pts = [(p.timestamp - t0, getattr(p, attr)) for p in measured if getattr(p, attr) is not None]
        if pts:
            bottom.plot(*zip(*pts, strict=True), color=color, label=attr)
    _objective(bottom, slo.p99_ms, [p.p99 or 0 for p in measured], "tab:red",
               f"p99 SLO {slo.p99_ms:g} ms")
    bottom.set_ylabel("ms (rolling ~10 s window)")
    bottom.set_xlabel("seconds since start")
    bottom.set_title(f"Latency of {label}")
    bottom.legend(loc="upper left", fontsize="small")
    bottom.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write(run_dir: Path, info: RunInfo) -> tuple[Path, list[slos.Verdict]]:
    """Read the CSVs in `run_dir`, write report.md, the PNG and run.json; return the verdicts."""
    prefix = run_dir / CSV_PREFIX
    res = lr.read(prefix)
    history = lr.read_history(prefix)
    slo = _slo_from(info)
    verdicts = slos.evaluate(res, slo)
    plot(history, run_dir / CHART, slo)
    report = run_dir / REPORT
    report.write_text(markdown(info, res, history, verdicts))
    (run_dir / RUN_INFO).write_bytes(orjson.dumps({
        "run": asdict(info),
        "passed": not slos.missed(verdicts),
        "verdicts": [asdict(v) for v in verdicts],
        "total": asdict(res.total),
        "endpoints": [asdict(e) for e in res.endpoints],
        "steps": [asdict(s) for s in steps(history, slo.endpoint)],
    }, option=orjson.OPT_INDENT_2))
    return report, verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder written by python -m loadtest")
    args = p.parse_args(argv)
    try:
        info = RunInfo(**orjson.loads((args.run_dir / RUN_INFO).read_bytes())["run"])
        report, verdicts = write(args.run_dir, info)
    except (OSError, lr.ResultsError, KeyError, TypeError) as exc:
        print(f"report: cannot rebuild the report of {args.run_dir}: {exc}", file=sys.stderr)
        return 2
    for v in verdicts:
        print(f"  {v.line()}")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
