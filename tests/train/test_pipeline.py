"""The training pipeline: quality, sanity, gate, atomic save, deploy, rollback, bad input."""

from __future__ import annotations

import csv
import errno
import json
import os
import sqlite3
import subprocess
import sys
import time

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from experiments.log import read_runs
from features.codec import CODEC
from features.schema import FEATURE_NAMES, FEATURES, LABEL
from registry.store import Registry, RegistryError
from tests.conftest import EXPECT, ROOT
from train import pipeline
from train.pipeline import TrainConfig, TrainError

# a required number and a categorical of whatever domain the spec describes
NUM = next(f for f in FEATURES if f.kind == "numeric" and not f.nullable)
CAT = next(f for f in FEATURES if f.kind == "categorical")


@pytest.fixture(scope="module")
def split_frames(default_frame):
    return pipeline.split(default_frame, 2)


@pytest.fixture(scope="module")
def recent_frame(default_frame):
    """The newest 4 as_of dates: enough for tests of mechanics, not of quality."""
    keep = sorted(default_frame["as_of"].unique())[-4:]
    return default_frame[default_frame["as_of"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, default_frame):
    """One real run on the default demo data into a fresh registry."""
    root = tmp_path_factory.mktemp("first")
    registry, log = Registry(root / "models"), root / "runs.csv"
    result = pipeline.run(None, registry, log, TrainConfig(notes="first"), frame=default_frame)
    return registry, log, result


def test_default_model_beats_the_bar(first_run):
    registry, _, result = first_run
    assert result.metrics["roc_auc"] >= EXPECT.MIN_ROC_AUC
    assert result.promoted and registry.current() == result.version


def test_shuffled_labels_learn_nothing(recent_frame):
    """Permutation test: the same pipeline on labels shuffled before the split scores ~0.5."""
    aucs = []
    for seed in range(3):
        noisy = recent_frame.assign(**{LABEL: np.random.default_rng(seed).permutation(recent_frame[LABEL].to_numpy())})
        train, holdout = pipeline.split(noisy, 1)
        model = pipeline.fit(train, "lightgbm", pipeline.DEFAULT_PARAMS["lightgbm"])
        aucs.append(pipeline.evaluate(model, holdout)[0]["roc_auc"])
    # ~19k holdout rows at ~9% positive: the AUC's standard error is about 0.007
    assert all(abs(a - 0.5) < 0.03 for a in aucs), aucs


def test_version_folder_has_the_artifact_of_the_design(first_run):
    registry, _, result = first_run
    folder = registry.path(result.version)
    assert {"model.joblib", "meta.json", "roc.png", "calibration.png", "importance.png"} <= {
        p.name for p in folder.iterdir()}
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("version", "created_at", "git_commit", "data_fingerprint", "library_versions",
                "feature_schema", "params", "metrics", "score_baseline", "self_check", "notes"):
        assert key in meta, key
    assert [f["name"] for f in meta["feature_schema"]] == list(FEATURE_NAMES)
    assert set(meta["metrics"]) == {"roc_auc", "pr_auc", "log_loss", "brier"}
    base = meta["score_baseline"]
    assert len(base["edges"]) == 11 and base["edges"][0] == 0 and base["edges"][-1] == 1
    assert sum(base["fractions"]) == pytest.approx(1)
    assert len(meta["self_check"]) == pipeline.SELF_CHECK_ROWS


def test_run_is_logged(first_run):
    _, log, result = first_run
    rows = read_runs(log)
    assert rows[-1]["version"] == result.version
    assert rows[-1]["promoted"] == "True" and rows[-1]["notes"] == "first"
    assert float(rows[-1]["roc_auc"]) == pytest.approx(result.metrics["roc_auc"], rel=1e-5)


def test_same_data_code_and_seed_give_the_same_model(split_frames):
    train, holdout = split_frames
    a = pipeline.fit(train, "lightgbm", pipeline.DEFAULT_PARAMS["lightgbm"])
    b = pipeline.fit(train, "lightgbm", pipeline.DEFAULT_PARAMS["lightgbm"])
    X = CODEC.encode_frame(holdout)
    np.testing.assert_array_equal(a.score(X), b.score(X))


def test_gate_keeps_a_better_champion_and_force_overrides(tmp_path, recent_frame):
    registry, log = Registry(tmp_path / "models"), tmp_path / "runs.csv"
    champion = pipeline.run(None, registry, log, TrainConfig(), frame=recent_frame)
    weak = TrainConfig(params={"num_boost_round": 3, "num_leaves": 2}, notes="deliberately weak")
    refused = pipeline.run(None, registry, log, weak, frame=recent_frame)
    assert not refused.promoted and "worse" in refused.decision
    assert registry.current() == champion.version
    assert refused.version in registry.versions()  # saved for inspection, not deployed
    forced = pipeline.run(None, registry, log, TrainConfig(params=weak.params, force=True, reason="test"),
                          frame=recent_frame)
    assert forced.promoted and registry.current() == forced.version
    history = registry.history()
    assert [h["action"] for h in history] == ["promote", "promote"]
    assert "forced (test)" in history[-1]["reason"]
    assert [r["promoted"] for r in read_runs(log)] == ["True", "False", "True"]

    before, after = registry.rollback(reason="bad deploy")
    assert (before, after) == (forced.version, champion.version)
    assert registry.current() == champion.version
    registry.rollback(to=forced.version)
    assert registry.current() == forced.version
    assert [h["action"] for h in registry.history()][-2:] == ["rollback", "rollback"]


def test_no_deploy_never_touches_current(tmp_path, recent_frame):
    registry = Registry(tmp_path / "models")
    result = pipeline.run(None, registry, tmp_path / "runs.csv", TrainConfig(deploy=False), frame=recent_frame)
    assert not result.promoted and registry.current() is None and registry.versions() == [result.version]


def test_corrupt_current_model_is_a_clear_error(tmp_path, recent_frame):
    registry = Registry(tmp_path / "models")
    first = pipeline.run(None, registry, tmp_path / "runs.csv", TrainConfig(), frame=recent_frame)
    (registry.path(first.version) / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(TrainError, match="current model cannot be loaded"):
        pipeline.run(None, registry, tmp_path / "runs.csv", TrainConfig(), frame=recent_frame)
    assert registry.current() == first.version and registry.versions() == [first.version]


def test_full_disk_mid_write_leaves_nothing_visible(tmp_path, recent_frame, monkeypatch):
    registry = Registry(tmp_path / "models")

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", full_disk)
    with pytest.raises(RegistryError, match="No space left on device; nothing was written"):
        pipeline.run(None, registry, tmp_path / "runs.csv", TrainConfig(), frame=recent_frame)
    assert registry.versions() == [] and registry.current() is None
    assert list(registry.versions_dir.iterdir()) == []  # no temp folder either


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.iloc[0:0], "empty"),
        (lambda f: f.assign(**{LABEL: 0}), "one class only"),
        (lambda f: f.rename(columns={NUM.name: "renamed"}), f"columns missing from the frame: ['{NUM.name}']"),
        (lambda f: f.assign(**{NUM.name: np.where(np.arange(len(f)) < 3, np.nan, f[NUM.name])}),
         f"{NUM.name}: 3 missing values"),
        (lambda f: f.assign(**{NUM.name: NUM.minimum - 1}), f"{NUM.name}: minimum {NUM.minimum - 1} below"),
        (lambda f: f.assign(**{CAT.name: pd.Categorical(["fax"] * len(f))}), f"{CAT.name}: values ['fax']"),
    ],
    ids=["empty", "one-class", "renamed", "nan", "range", "category"],
)
def test_check_names_the_problem(default_frame, mutate, message):
    with pytest.raises(TrainError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipeline.check(mutate(default_frame.head(2000)))


def _cli(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MODEL_DIR", "EXPERIMENTS_LOG")}
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://root@localhost/app", "DATABASE_URL: scheme 'mysql' is not supported"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/app", "cannot reach the database at"),
    ],
)
def test_cli_bad_database_is_one_line(tmp_path, url, message):
    result = _cli({"DATABASE_URL": url, "MODEL_DIR": str(tmp_path / "m"), "EXPERIMENTS_LOG": str(tmp_path / "r.csv")})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m" / "versions").exists()


def test_cli_empty_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = _cli({"DATABASE_URL": url, "MODEL_DIR": str(tmp_path / "m"), "EXPERIMENTS_LOG": str(tmp_path / "r.csv")})
    assert result.returncode == 2
    assert "make seed" in result.stderr and "Traceback" not in result.stderr


def test_second_run_exits_at_once_naming_the_holder(tmp_path):
    models = tmp_path / "m"
    models.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, json, os; from filelock import FileLock; "
        f"l = FileLock({str(models / '.train.lock')!r}); l.acquire(); "
        f"open({str(models / '.train.lock.holder')!r}, 'w').write(json.dumps({{'pid': os.getpid()}})); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        sqlite3.connect(tmp_path / "x.db").execute("CREATE TABLE t (x)").connection.close()  # a database that exists
        result = _cli({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "MODEL_DIR": str(models)})
        assert result.returncode == 3 and time.monotonic() - t0 < 30
        assert f'"pid": {holder.pid}' in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_history_csv_is_readable(first_run):
    registry, _, result = first_run
    with registry.history_file.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["to_version"] == result.version and rows[0]["action"] == "promote"


def test_scores_match_the_model_on_the_training_path(first_run, split_frames):
    registry, _, result = first_run
    model, meta = registry.load(result.version)
    _, holdout = split_frames
    direct = model.score(CODEC.encode_frame(holdout))
    assert roc_auc_score(holdout[LABEL], direct) == pytest.approx(meta.metrics["roc_auc"], abs=1e-12)


@pytest.mark.parametrize("model_type, params, bad", [
    ("lightgbm", {"num_leave": 63}, "num_leave"),
    ("logreg", {"num_leaves": 63}, "num_leaves"),
])
def test_unknown_parameters_are_refused_before_any_work(tmp_path, model_type, params, bad):
    registry = Registry(tmp_path / "models")
    with pytest.raises(TrainError, match=f"unknown {model_type} parameter\\(s\\) \\['{bad}'\\]"):
        pipeline.run(None, registry, tmp_path / "runs.csv", TrainConfig(model_type=model_type, params=params),
                     frame=pd.DataFrame())
    assert not (tmp_path / "runs.csv").exists() and registry.versions() == []
