"""`make ab-demo` end to end: real server, real exposure log, a planted lift the report finds."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One small demo with a large lift (10 points on 5%): decisive with 750 users per variant."""
    work = tmp_path_factory.mktemp("ab-demo") / "work"
    args = ["--workdir", str(work), "--users", "1500", "--lift", "0.10", "--seed", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "ab.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return work, done


def test_demo_exits_cleanly(demo_run):
    _, done = demo_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[demo" in done.stdout and "done" in done.stdout.splitlines()[-1]


def test_every_request_was_recorded_as_an_exposure(demo_run):
    work, done = demo_run
    sent = int(re.search(r"sending ([\d,]+) requests", done.stdout).group(1).replace(",", ""))
    with sqlite3.connect(work / "app.db") as conn:
        recorded = conn.execute(
            "SELECT count(*) FROM ab_exposures WHERE experiment = 'ab-demo'"
        ).fetchone()[0]
        units = conn.execute("SELECT count(DISTINCT unit_id) FROM ab_exposures").fetchone()[0]
    assert recorded == sent > units == 1500  # users visit 1-3 times: more requests than users


def test_report_and_chart_name_both_variants_and_the_winner(demo_run):
    work, done = demo_run
    report = work / "ab" / "ab-demo" / "report.md"
    chart = report.with_name("conversion.png")
    assert str(report) in done.stdout and str(chart) in done.stdout
    assert chart.read_bytes().startswith(b"\x89PNG")
    text = report.read_text()
    assert "| control |" in text and "| challenger |" in text
    assert "**Winner: challenger." in text
    assert "Winner: challenger." in done.stdout
    # section 3: the measured difference is positive and significant
    row = re.search(r"^\| challenger \| ([+-][\d.]+) pp \|.*\| (yes|no) \|$", text, re.MULTILINE)
    assert row is not None, text
    assert float(row.group(1)) > 0 and row.group(2) == "yes"


def test_workdir_the_demo_did_not_make_is_never_wiped(tmp_path):
    from ab.demo import prepare_workdir

    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(ValueError, match="refusing to wipe"):
        prepare_workdir(tmp_path)
    assert precious.read_text() == "keep me"
    demo_dir = tmp_path / "demo"
    prepare_workdir(demo_dir)
    (demo_dir / "app.db").write_text("old run")
    prepare_workdir(demo_dir)  # its own folder: wiped and marked again
    assert [p.name for p in demo_dir.iterdir()] == [".ab-demo"]
