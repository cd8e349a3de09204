"""What Locust measured, read back from its CSV files (`locust --csv PREFIX --csv-full-history`).

PREFIX_stats.csv          one row per request name plus "Aggregated": counts, rates, percentiles
PREFIX_stats_history.csv  one row per second and name: rate and percentiles of the last ~10 s
PREFIX_failures.csv       failures grouped by name and message
PREFIX_exceptions.csv     exceptions raised by the scenario code itself

Times are milliseconds, as Locust writes them. Plain `csv`: no pandas needed to judge a run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

AGGREGATED = "Aggregated"


class ResultsError(RuntimeError):
    """The CSV files are missing or not Locust's."""


def _number(value: str | None) -> float | None:
    if value in (None, "", "N/A"):
        return None
    return float(value)


@dataclass(frozen=True)
class Endpoint:
    """One row of the stats file: a request name (or the aggregate of all)."""

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    failures_per_s: float
    median_ms: float | None
    average_ms: float | None
    min_ms: float | None
    max_ms: float | None
    average_bytes: float | None
    percentiles: dict[str, float | None] = field(default_factory=dict)

    def percentile(self, label: str) -> float | None:
        """A percentile column by Locust's label, e.g. "99%"."""
        return self.percentiles.get(label)

    @property
    def p50(self) -> float | None:
        return self.percentile("50%")

    @property
    def p95(self) -> float | None:
        return self.percentile("95%")

    @property
    def p99(self) -> float | None:
        return self.percentile("99%")

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Endpoint:
        return cls(
            method=row.get("Type") or "",
            name=row["Name"],
            requests=int(row["Request Count"]),
            failures=int(row["Failure Count"]),
            rps=float(row["Requests/s"]),
            failures_per_s=float(row["Failures/s"]),
            median_ms=_number(row.get("Median Response Time")),
            average_ms=_number(row.get("Average Response Time")),
            min_ms=_number(row.get("Min Response Time")),
            max_ms=_number(row.get("Max Response Time")),
            average_bytes=_number(row.get("Average Content Size")),
            percentiles={k: _number(v) for k, v in row.items() if k.endswith("%")},
        )


@dataclass(frozen=True)
class Failure:
    """Failures of one request name with one message."""

    method: str
    name: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class Results:
    """The final numbers of one run."""

    endpoints: list[Endpoint]
    total: Endpoint
    failures: list[Failure]
    exceptions: list[tuple[int, str]]

    def endpoint(self, name: str) -> Endpoint | None:
        """The row of request `name` (any method), or None if it never ran."""
        return next((e for e in self.endpoints if e.name == name), None)

    @property
    def exception_count(self) -> int:
        return sum(count for count, _ in self.exceptions)


@dataclass(frozen=True)
class HistoryPoint:
    """One second of one request name: current rate and rolling percentiles."""

    timestamp: int
    users: int
    name: str
    rps: float
    failures_per_s: float
    p50: float | None
    p95: float | None
    p99: float | None
    total_requests: int
    total_failures: int


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ResultsError(f"{path} does not exist: did Locust run with --csv {path.parent}/...?")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read(prefix: Path | str) -> Results:
    """Results from PREFIX_stats.csv, PREFIX_failures.csv and PREFIX_exceptions.csv."""
    prefix = str(prefix)
    stats = _rows(Path(prefix + "_stats.csv"))
    try:
        entries = [Endpoint.from_row(r) for r in stats]
    except (KeyError, ValueError) as exc:
        raise ResultsError(f"{prefix}_stats.csv is not a Locust stats file ({exc!r})") from None
    total = next((e for e in entries if e.name == AGGREGATED), None)
    if total is None:
        raise ResultsError(f"{prefix}_stats.csv has no {AGGREGATED!r} row; the run did not finish")
    failures_path, exceptions_path = Path(prefix + "_failures.csv"), Path(prefix + "_exceptions.csv")
    failures = [
        Failure(r.get("Method", ""), r["Name"], r["Error"], int(r["Occurrences"]))
        for r in (_rows(failures_path) if failures_path.is_file() else [])
    ]
    exceptions = [
        (int(r["Count"]), r["Message"])
        for r in (_rows(exceptions_path) if exceptions_path.is_file() else [])
    ]
    return Results(
        endpoints=[e for e in entries if e.name != AGGREGATED],
        total=total,
        failures=sorted(failures, key=lambda f: -f.occurrences),
        exceptions=exceptions,
    )


def read_history(prefix: Path | str) -> list[HistoryPoint]:
    """Every row of PREFIX_stats_history.csv, oldest first."""
    points = []
    for r in _rows(Path(str(prefix) + "_stats_history.csv")):
        points.append(HistoryPoint(
            timestamp=int(r["Timestamp"]),
            users=int(r["User Count"]),
            name=r["Name"],
            rps=float(r["Requests/s"]),
            failures_per_s=float(r["Failures/s"]),
            p50=_number(r.get("50%")),
            p95=_number(r.get("95%")),
            p99=_number(r.get("99%")),
            total_requests=int(r["Total Request Count"]),
            total_failures=int(r["Total Failure Count"]),
        ))
    return points
