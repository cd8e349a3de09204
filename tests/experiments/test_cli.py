"""The experiment log: `python -m experiments` (table, filters, plot), concurrent appends, and
the committed experiments/runs.csv."""

from __future__ import annotations

import ast
import csv
import multiprocessing
import sys
from pathlib import Path

import pytest

from experiments.__main__ import main
from experiments.log import COLUMNS, METRIC_COLUMNS, append_run, read_runs

ROOT = Path(__file__).resolve().parents[2]

# Five runs, oldest first: (short id, model, roc_auc, log_loss, promoted, notes).
RUNS = [
    ("aaaaa1", "logreg", 0.80, 0.25, True, "baseline"),
    ("bbbbb2", "lightgbm", 0.90, 0.20, True, "default lightgbm"),
    ("ccccc3", "lightgbm", 0.85, 0.18, False, "min_data_in_leaf 200"),
    ("ddddd4", "lightgbm", 0.88, 0.30, False, "a very long note, with commas and \"quotes\",\n"
     "over two lines, that the table must cut short " + "x" * 80),
    ("eeeee5", "logreg", None, None, False, "crashed half way: no metrics"),
]


def _row(i: int, short: str, model: str, auc: float | None, loss: float | None,
         promoted: bool, notes: str) -> dict:
    version = f"202601{i + 1:02d}T120000Z-{short}"
    return {
        "started_at": f"2026-01-{i + 1:02d}T12:00:00+00:00", "run_id": version, "git_commit": "abc123",
        "git_dirty": False, "user": "ana", "model_type": model, "params": {"num_leaves": 31},
        "roc_auc": auc, "pr_auc": None if auc is None else auc - 0.3, "log_loss": loss,
        "brier": None if loss is None else loss / 4, "champion_roc_auc": 0.8 if i else None,
        "duration_s": 40.0 + i, "version": version, "promoted": promoted,
        "decision": "promote" if promoted else "keep champion", "notes": notes,
    }


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "runs.csv"
    for i, run in enumerate(RUNS):
        append_run(path, _row(i, *run))
    return path


def order(out: str) -> list[str]:
    """The short run ids in the order the table prints them."""
    ids = [r[0] for r in RUNS]
    return [next(i for i in ids if i in line) for line in out.splitlines() if any(i in line for i in ids)]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse rejects an option with exit status 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- the table ---------------------------------------------------------------------------------

def test_table_is_best_roc_auc_first_with_missing_values_last(log, capsys):
    code, out, _ = run_cli(capsys, "--log", str(log))
    assert code == 0
    assert order(out) == ["bbbbb2", "ddddd4", "ccccc3", "aaaaa1", "eeeee5"]
    header = out.splitlines()[2]
    for column in ("when", "run", "model", "roc_auc", "pr_auc", "log_loss", "champion_roc_auc",
                   "promoted", "who", "notes"):
        assert column in header


def test_lower_is_better_for_log_loss(log, capsys):
    code, out, _ = run_cli(capsys, "--log", str(log), "--sort", "log_loss")
    assert code == 0
    assert order(out) == ["ccccc3", "bbbbb2", "aaaaa1", "ddddd4", "eeeee5"]
    assert "lower is better" in out


def test_sort_by_brier_shows_the_brier_column(log, capsys):
    _, out, _ = run_cli(capsys, "--log", str(log), "--sort", "brier")
    assert "brier" in out.splitlines()[2]
    assert order(out)[0] == "ccccc3"


def test_filters_and_last(log, capsys):
    assert order(run_cli(capsys, "--log", str(log), "--model", "lightgbm")[1]) == ["bbbbb2", "ddddd4", "ccccc3"]
    assert order(run_cli(capsys, "--log", str(log), "--promoted")[1]) == ["bbbbb2", "aaaaa1"]
    assert order(run_cli(capsys, "--log", str(log), "--last", "2")[1]) == ["ddddd4", "eeeee5"]
    # filters first, then the most recent N of what is left, then best first
    out = run_cli(capsys, "--log", str(log), "--model", "lightgbm", "--last", "2")[1]
    assert order(out) == ["ddddd4", "ccccc3"]
    assert "2 of 5 runs" in out


def test_last_and_newest_first_go_by_started_at_not_file_order(tmp_path, capsys):
    # two branches' logs merged: the file is no longer in time order
    path = tmp_path / "runs.csv"
    for i in (3, 4, 0, 1, 2):
        append_run(path, _row(i, *RUNS[i]))
    assert order(run_cli(capsys, "--log", str(path), "--last", "2")[1]) == ["ddddd4", "eeeee5"]
    assert order(run_cli(capsys, "--log", str(path), "--sort", "started_at")[1]) == [
        "eeeee5", "ddddd4", "ccccc3", "bbbbb2", "aaaaa1"]


def test_a_filter_that_matches_nothing_says_so(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    append_run(path, _row(2, *RUNS[2]))  # one run, not promoted
    code, out, _ = run_cli(capsys, "--log", str(path), "--promoted")
    assert code == 0
    assert "no runs" in out and "--promoted" in out and "1 runs in all" in out


def test_rows_are_aligned_and_long_notes_cut_to_fit_the_terminal(log, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "130")
    out = run_cli(capsys, "--log", str(log))[1]
    lines = out.splitlines()[2:]
    assert max(len(line) for line in lines) == 130
    rule = lines[1]
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    for line in lines[2:]:  # every column of every row starts where the header's does
        assert all(line[s - 2:s] == "  " for s in starts[1:])
    long = next(line for line in lines if "ddddd4" in line)
    assert "…" in long and "x" * 80 not in long
    assert len(lines) == 2 + len(RUNS)  # the two-line note did not break a row
    wide = run_cli(capsys, "--log", str(log), "--wide")[1]
    assert "x" * 80 in wide and "20260104T120000Z-ddddd4" in wide


def test_log_defaults_to_the_experiments_log_setting(log, capsys, monkeypatch):
    from stack.settings import get_settings

    monkeypatch.setenv("EXPERIMENTS_LOG", str(log))
    get_settings.cache_clear()
    try:
        code, out, _ = run_cli(capsys)
    finally:
        get_settings.cache_clear()
    assert code == 0 and str(log) in out and len(order(out)) == len(RUNS)


# -- empty logs and bad options ---------------------------------------------------------------

@pytest.mark.parametrize("content", [None, "", ",".join(COLUMNS) + "\n"])
def test_an_empty_or_missing_log_points_to_make_train(tmp_path, capsys, content):
    path = tmp_path / "runs.csv"
    if content is not None:
        path.write_text(content)
    code, out, _ = run_cli(capsys, "--log", str(path), "--plot", "roc_auc", "--out", str(tmp_path / "plots"))
    assert code == 0
    assert "make train" in out
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("option", ["--sort", "--plot"])
def test_an_unknown_metric_exits_2_naming_the_choices(log, capsys, option):
    code, _, err = run_cli(capsys, "--log", str(log), option, "accuracy")
    assert code == 2
    assert "accuracy" in err and "roc_auc" in err and "log_loss" in err


def test_an_unknown_model_exits_2_naming_the_models_in_the_log(log, capsys):
    code, _, err = run_cli(capsys, "--log", str(log), "--model", "xgboost")
    assert code == 2
    assert "xgboost" in err and "lightgbm, logreg" in err


def test_last_must_be_positive(log, capsys):
    assert run_cli(capsys, "--log", str(log), "--last", "0")[0] == 2


def test_metric_columns_are_the_metrics_training_computes():
    # Read the constant from the source: importing train.evaluate costs seconds (sklearn).
    tree = ast.parse((ROOT / "train" / "evaluate.py").read_text())
    metrics = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "METRICS" for t in node.targets))
    assert tuple(metrics) == METRIC_COLUMNS
    assert set(METRIC_COLUMNS) <= set(COLUMNS)


# -- the plot ---------------------------------------------------------------------------------

def test_plot_writes_a_png_and_prints_its_path(log, tmp_path, capsys):
    out_dir = tmp_path / "plots"
    code, out, _ = run_cli(capsys, "--log", str(log), "--plot", "log_loss", "--out", str(out_dir))
    assert code == 0
    png = out_dir / "log_loss.png"
    assert f"plot: {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


# -- concurrent appends -----------------------------------------------------------------------

WRITERS, APPENDS, FRESH = 4, 50, 20
BIG_NOTE = "a long note, bigger than the write buffer, " * 300  # ~13 kB per row


def _append_many(folder: str, writer: int, start) -> None:
    for k in range(FRESH):  # all writers race for the first row, and the header, of new files
        start.wait()
        append_run(Path(folder) / f"fresh{k}.csv", _row(0, f"{writer:02d}{k:04d}", "logreg", 0.8, 0.2, False, ""))
    for i in range(APPENDS):
        row = _row(0, f"{writer:02d}{i:04d}", "lightgbm", 0.9, 0.2, False, f"w{writer} i{i} {BIG_NOTE}")
        append_run(Path(folder) / "runs.csv", row)


def test_concurrent_appends_keep_every_row_intact(tmp_path):
    # fork: no interpreter start per writer (spawn, the default off Linux, works too, slower)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    header = ",".join(COLUMNS)
    for k in range(FRESH):  # without the lock, two writers often both see an empty file
        fresh = tmp_path / f"fresh{k}.csv"
        assert fresh.read_text().count(header) == 1 and len(read_runs(fresh)) == WRITERS
    path = tmp_path / "runs.csv"
    assert path.read_text().count(header) == 1
    rows = read_runs(path)
    assert len(rows) == WRITERS * APPENDS
    assert all(set(r) == set(COLUMNS) and None not in r.values() for r in rows)
    assert all(r["notes"].endswith(BIG_NOTE) for r in rows)
    seen = {tuple(r["notes"].split(" ", 2)[:2]) for r in rows}
    assert len(seen) == WRITERS * APPENDS  # every (writer, append) exactly once


# -- the committed log ------------------------------------------------------------------------

def test_the_committed_runs_csv_holds_the_teams_real_runs():
    path = ROOT / "experiments" / "runs.csv"
    text = path.read_text()
    assert text.endswith("\n")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert tuple(header) == COLUMNS
    assert len(body) >= 6 and all(len(r) == len(COLUMNS) for r in body)
    rows = read_runs(path)
    assert {"logreg", "lightgbm"} <= {r["model_type"] for r in rows}
    assert len({r["run_id"] for r in rows}) == len(rows)
    for r in rows:
        for metric in METRIC_COLUMNS:
            assert 0 <= float(r[metric]) <= 1 or metric == "log_loss", (r["run_id"], metric)
        assert r["notes"].strip(), f"run {r['run_id']} has no notes: say what was tried and learned"
