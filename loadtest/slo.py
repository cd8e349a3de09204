"""The service level objectives a load test is judged by, defined once, and their verdicts.

`python -m loadtest` takes each default from DEFAULT and lets the command line override it.
The p99 objective applies to single-row POST /predict (the hot path the stack's claim is
about); the error rate and throughput apply to all requests of the run. 25 ms matches the
inference-latency objective of monitoring/metrics.py (LATENCY_SLO_SECONDS), which measures
the model call alone; this one is end to end, as the client sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.results import Results


@dataclass(frozen=True)
class SLO:
    """Objectives: p99 of `endpoint` in ms, error rate over all requests, mean requests/s."""

    p99_ms: float = 25.0
    error_rate: float = 0.01
    min_rps: float = 1000.0
    endpoint: str = "/predict"


DEFAULT = SLO()


@dataclass(frozen=True)
class Verdict:
    """One objective, what was measured, and whether it was met."""

    name: str
    objective: str
    measured: str
    met: bool

    def line(self) -> str:
        """One line for people: which SLO, the number, the objective."""
        state = "met" if self.met else "MISSED"
        return f"{state}: {self.name} was {self.measured} (objective {self.objective})"


def evaluate(results: Results, slo: SLO = DEFAULT) -> list[Verdict]:
    """The verdict on each objective.

    Errors are every request Locust counted as a failure (wrong status, wrong shape, no
    response; bad inputs that got their 4xx are successes) plus every exception the
    scenario itself raised, over all requests.
    """
    total = results.total
    verdicts = []

    target = results.endpoint(slo.endpoint)
    p99 = target.p99 if target is not None and target.requests else None
    verdicts.append(Verdict(
        name=f"p99 latency of {slo.endpoint}",
        objective=f"<= {slo.p99_ms:g} ms",
        measured=f"{p99:g} ms" if p99 is not None else f"unknown (no requests to {slo.endpoint})",
        met=p99 is not None and p99 <= slo.p99_ms,
    ))

    errors = total.failures + results.exception_count
    rate = errors / total.requests if total.requests else 1.0
    verdicts.append(Verdict(
        name="error rate",
        objective=f"<= {slo.error_rate:.2%}",
        measured=f"{rate:.2%} ({errors:,} errors in {total.requests:,} requests)",
        met=total.requests > 0 and rate <= slo.error_rate,
    ))

    verdicts.append(Verdict(
        name="throughput",
        objective=f">= {slo.min_rps:,g} requests/s",
        measured=f"{total.rps:,.1f} requests/s",
        met=total.requests > 0 and total.rps >= slo.min_rps,
    ))
    return verdicts


def missed(verdicts: list[Verdict]) -> list[Verdict]:
    """The objectives that were not met."""
    return [v for v in verdicts if not v.met]
