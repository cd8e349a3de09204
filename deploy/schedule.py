"""Cron for the trainer container: `python -m deploy.schedule train/crontab`.

Reads a crontab (five time fields in UTC, then a command), sleeps until the next minute a
line matches and runs that command with /bin/sh in the foreground, so runs never overlap
and their output goes to the container's stdout. SIGTERM (`docker compose stop`) ends the
wait at once; a run still going is killed, which leaves nothing half-written because the
registry and the experiment log only ever rename complete files into place.

Fields: minute hour day-of-month month day-of-week, each `*`, a number, `a-b`, `*/n`,
`a-b/n` or a comma list of those; day-of-week 0-7 (0 and 7 are Sunday). As in cron, when
both day fields are restricted a day matching either one fires.

Why not supercronic: it is a binary fetched from GitHub at build time, and a build that
reaches only the package registries (CI here, many company networks) cannot do that.
Debian's cron wants root and mails its output. This loop runs as the image's user.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# (name, lowest, highest) of the five fields, in crontab order
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
          ("day of week", 0, 7))
SEARCH_LIMIT = timedelta(days=366 * 5)  # "0 0 30 2 *" never fires: say so instead of looping


class CrontabError(ValueError):
    """A crontab line that cannot be read; the message names the line and the field."""


@dataclass(frozen=True)
class Job:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`
    command: str

    def day_matches(self, when: datetime) -> bool:
        day_ok, weekday_ok = when.day in self.days, (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def matches(self, when: datetime) -> bool:
        return (when.minute in self.minutes and when.hour in self.hours and when.month in self.months
                and self.day_matches(when))

    def next_run(self, after: datetime) -> datetime:
        """The first whole minute strictly after `after` (UTC) at which this job fires."""
        when = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = when + SEARCH_LIMIT
        while when < limit:  # skip whole months, days and hours that cannot match
            if when.month not in self.months:
                when = (when.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self.day_matches(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        raise CrontabError(f"`{self.command}` never fires (no date matches its day and month fields)")


def parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = low, high
            elif "-" in span:
                start, end = (int(v) for v in span.split("-", 1))
            else:
                start = end = int(span)
                if step_text:
                    end = high
        except ValueError:
            raise CrontabError(f"{name} field {text!r}: use *, numbers, a-b, */n or lists") from None
        if step < 1 or not low <= start <= end <= high:
            raise CrontabError(f"{name} field {text!r}: values must lie in {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_line(line: str) -> Job:
    fields = line.split(None, 5)
    if len(fields) != 6:
        raise CrontabError(f"{line!r}: a job is five time fields and a command")
    parsed = [parse_field(text, *spec) for text, spec in zip(fields[:5], FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4])
    return Job(*parsed[:4], weekdays, fields[2] == "*", fields[4] == "*", fields[5].strip())


def read_crontab(path: Path) -> list[Job]:
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                jobs.append(parse_line(line))
            except CrontabError as exc:
                raise CrontabError(f"{path}:{number}: {exc}") from None
    if not jobs:
        raise CrontabError(f"{path} has no job")
    return jobs


def log(message: str) -> None:
    print(f"schedule: {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {message}", flush=True)


def run_forever(jobs: list[Job], now=lambda: datetime.now(UTC), sleep=time.sleep,
                execute=lambda cmd: subprocess.run(["/bin/sh", "-c", cmd]).returncode,
                max_runs: int | None = None) -> None:
    """Wait for the next due job, run it, repeat; `max_runs` ends the loop (tests)."""
    runs = 0
    while max_runs is None or runs < max_runs:
        due = min((job.next_run(now()), index) for index, job in enumerate(jobs))
        when, job = due[0], jobs[due[1]]
        log(f"next: `{job.command}` at {when:%Y-%m-%dT%H:%M}Z")
        while (wait := (when - now()).total_seconds()) > 0:
            sleep(min(wait, 60.0))  # short naps: a suspended host or changed clock is noticed
        started = time.monotonic()
        log(f"running `{job.command}`")
        code = execute(job.command)
        log(f"`{job.command}` exited {code} after {time.monotonic() - started:.1f} s")
        runs += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.schedule", description=__doc__.splitlines()[0])
    parser.add_argument("crontab", type=Path, help="crontab file (e.g. train/crontab)")
    args = parser.parse_args(argv)
    try:
        jobs = read_crontab(args.crontab)
    except (OSError, CrontabError) as exc:
        print(f"schedule: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"{len(jobs)} job(s) from {args.crontab}, times in UTC")
    with contextlib.suppress(KeyboardInterrupt):
        run_forever(jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
