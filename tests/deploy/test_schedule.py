"""The trainer's scheduler (deploy/schedule.py): crontab parsing, next run times, the loop."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy import schedule

ROOT = Path(__file__).resolve().parents[2]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("line", "after", "expected"), [
    ("0 3 * * * x", "2026-01-01T02:59:30", "2026-01-01T03:00"),
    ("0 3 * * * x", "2026-01-01T03:00:00", "2026-01-02T03:00"),  # strictly after
    ("*/15 * * * * x", "2026-01-01T10:16", "2026-01-01T10:30"),
    ("* * * * * x", "2026-12-31T23:59:59", "2027-01-01T00:00"),
    ("30 4 1,15 * * x", "2026-02-02T00:00", "2026-02-15T04:30"),
    ("0 0 * * 0 x", "2026-01-01T00:00", "2026-01-04T00:00"),  # 2026-01-04 is a Sunday
    ("0 0 * * 7 x", "2026-01-01T00:00", "2026-01-04T00:00"),  # 7 is Sunday too
    ("0 0 * * 1-5 x", "2026-01-02T12:00", "2026-01-05T00:00"),  # Friday noon -> Monday
    ("0 0 13 * 5 x", "2026-01-01T00:00", "2026-01-02T00:00"),  # both days restricted: either fires
    ("0 12 29 2 * x", "2026-03-01T00:00", "2028-02-29T12:00"),  # leap day
    ("5-10/5 8-9 * 6 * x", "2026-01-01T00:00", "2026-06-01T08:05"),
])
def test_next_run(line: str, after: str, expected: str) -> None:
    assert schedule.parse_line(line).next_run(at(after)) == at(expected)


@pytest.mark.parametrize(("line", "message"), [
    ("0 3 * * *", "five time fields"),
    ("61 * * * * x", "0-59"),
    ("0 24 * * * x", "0-23"),
    ("*/0 * * * * x", "0-59"),
    ("0 3 * jan * x", "use *, numbers"),
])
def test_bad_lines_are_refused_with_the_field(line: str, message: str) -> None:
    with pytest.raises(schedule.CrontabError, match=re.escape(message)):
        schedule.parse_line(line)


def test_a_date_that_never_comes_is_an_error_not_a_hang() -> None:
    with pytest.raises(schedule.CrontabError, match="never fires"):
        schedule.parse_line("0 0 30 2 * x").next_run(at("2026-01-01T00:00"))


def test_the_trainer_crontab_runs_the_quality_job_and_training_daily() -> None:
    jobs = {job.command: job for job in schedule.read_crontab(ROOT / "train/crontab")}
    assert sorted(jobs) == ["python -m monitoring.quality", "python -m train"]
    quality, train = jobs["python -m monitoring.quality"], jobs["python -m train"]
    first = train.next_run(at("2026-05-01T12:00"))
    assert first == at("2026-05-02T03:00") and train.next_run(first) - first == timedelta(days=1)
    measured = quality.next_run(at("2026-05-01T12:00"))
    assert measured == at("2026-05-02T02:00") and quality.next_run(measured) - measured == timedelta(days=1)


def test_a_long_run_of_one_crontab_job_does_not_skip_the_other() -> None:
    # the scheduler skips a job whose minute passes while another runs: the jobs sit an hour apart
    jobs = schedule.read_crontab(ROOT / "train/crontab")
    clock = [at("2026-01-01T00:00:00")]
    ran: list[tuple[str, datetime]] = []
    took = {"python -m monitoring.quality": timedelta(minutes=50), "python -m train": timedelta(minutes=55)}

    def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)

    def execute(command: str) -> int:
        ran.append((command, clock[0]))
        clock[0] += took[command]
        return 0

    schedule.run_forever(jobs, now=lambda: clock[0], sleep=sleep, execute=execute, max_runs=4)
    assert ran == [("python -m monitoring.quality", at("2026-01-01T02:00")), ("python -m train", at("2026-01-01T03:00")),
                   ("python -m monitoring.quality", at("2026-01-02T02:00")), ("python -m train", at("2026-01-02T03:00"))]


def test_loop_waits_for_the_due_minute_then_runs_jobs_one_after_another() -> None:
    clock = [at("2026-01-01T10:00:30")]
    ran: list[tuple[str, datetime]] = []

    def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)

    def execute(command: str) -> int:
        ran.append((command, clock[0]))
        clock[0] += timedelta(seconds=90)  # a run longer than the interval: no overlap
        return 0

    jobs = [schedule.parse_line("* * * * * python -m train")]
    schedule.run_forever(jobs, now=lambda: clock[0], sleep=sleep, execute=execute, max_runs=2)
    assert ran == [("python -m train", at("2026-01-01T10:01")), ("python -m train", at("2026-01-01T10:03"))]


def test_main_reports_a_bad_crontab_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("# nothing\n0 3 * * *\n")
    assert schedule.main([str(crontab)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{crontab}:2:" in err and "five time fields" in err
