"""The training pipeline as named steps; `run()` chains them and prints progress.

Each step is a plain function so a test can call it alone; `STEPS` declares their order:
load -> check -> split -> fit -> evaluate -> gate -> save -> deploy -> log. The model comes
from registry.models and is saved through registry.Registry, with its typed meta.json.
`run()` holds the registry's training lock, whoever calls it (CLI, ab.demo, tests, a notebook).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from sqlalchemy import Engine

from experiments.log import append_run
from features.build import build_training_frame, feature_rows, training_as_of_dates
from features.codec import CODEC
from features.schema import (
    FEATURES,
    LABEL,
    incompatibilities,
    schema_as_dicts,
    schema_fingerprint,
    schema_from_dicts,
)
from features.spec import SPEC
from registry import models
from registry.meta import (
    SELF_CHECK_TOLERANCE,
    FeatureBaseline,
    ModelMeta,
    Rows,
    ScoreBaseline,
    SelfCheckRow,
    recorded_versions,
)
from registry.models import MODEL_TYPES, Model, ModelError
from registry.store import Registry, RegistryError, new_version
from train.evaluate import METRICS, feature_baselines, metrics, save_plots, score_baseline

STEPS = ("load", "check", "split", "fit", "evaluate", "gate", "save", "deploy", "log")
# LightGBM: 150 trees at learning rate 0.1 scored like 300 at 0.05 (ROC AUC 0.9057 vs 0.9062,
# experiments/runs.csv) at half the prediction cost, which bounds /predict/batch throughput.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {
        "objective": "binary", "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 50,
        "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
        "num_boost_round": 150, "num_threads": 2, "seed": 42, "deterministic": True,
        "force_row_wise": True, "verbosity": -1,
    },
    "logreg": {"C": 1.0, "max_iter": 500},
}
SELF_CHECK_ROWS = 32


class TrainError(RuntimeError):
    """Training cannot go on; the message says what was wrong and what to do."""


class TrainingBusy(TrainError):
    """Another training run holds the registry's lock."""


@dataclass
class TrainConfig:
    """What one run does. Defaults are what `make train` uses."""

    model_type: str = "lightgbm"
    params: dict[str, Any] = field(default_factory=dict)
    as_of_count: int = SPEC.training.as_of_count
    holdout_dates: int = 2
    tolerance: float = 0.005
    notes: str = ""
    deploy: bool = True
    force: bool = False
    reason: str = ""
    shuffle_labels: bool = False  # permutation test: labels shuffled before the split


@dataclass
class RunResult:
    """What a run produced."""

    version: str
    metrics: dict[str, float]
    promoted: bool
    decision: str
    champion_metrics: dict[str, float] | None
    timings: dict[str, float]


# -- steps -------------------------------------------------------------------------------------

def load(engine: Engine, as_of_count: int, progress: Callable[[str], None] = print) -> pd.DataFrame:
    """The training frame for the newest `as_of_count` weekly as_of dates."""
    return build_training_frame(engine, training_as_of_dates(engine, as_of_count), progress=progress)


def check(frame: pd.DataFrame) -> None:
    """Refuse a frame that breaks the feature schema, with every problem named."""
    if frame.empty:
        raise TrainError("the training frame is empty: seed the database (`make seed`) or check DATABASE_URL")
    problems = CODEC.frame_problems(frame)  # the rules /predict and the self-check use
    if LABEL not in frame.columns:
        problems.append(f"label column {LABEL!r} missing")
    elif frame[LABEL].nunique() < 2:
        problems.append(f"the label has one class only ({frame[LABEL].iloc[0]!r} for all "
                        f"{len(frame):,} rows): nothing to learn. Is the data window right, and does "
                        f"spec.yml label.positive ({SPEC.label.positive!r}) match what "
                        f"features/sql/{SPEC.label.sql}.sql counts?")
    if problems:
        raise TrainError("the training frame does not match the feature schema:\n  - " + "\n  - ".join(problems))


def split(frame: pd.DataFrame, holdout_dates: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-based split: the newest `holdout_dates` as_of dates are the holdout."""
    dates = sorted(frame["as_of"].unique())
    if len(dates) <= holdout_dates:
        raise TrainError(f"need more than {holdout_dates} as_of dates to split, have {len(dates)}")
    cut = dates[-holdout_dates]
    train, holdout = frame[frame["as_of"] < cut], frame[frame["as_of"] >= cut]
    for name, part in (("train", train), ("holdout", holdout)):
        if part[LABEL].nunique() < 2:
            raise TrainError(f"the {name} part has one label class only: nothing to learn or measure")
    return train, holdout


def check_params(model_type: str, params: dict[str, Any]) -> None:
    """Refuse parameters the model does not know (a typo would otherwise be ignored, yet logged)."""
    try:
        models.check_params(model_type, params)
    except ModelError as exc:
        raise TrainError(str(exc)) from None


def fit(train: pd.DataFrame, model_type: str, params: dict[str, Any]) -> Model:
    """Fit a model on the encoded frame."""
    check_params(model_type, params)
    return models.fit(model_type, CODEC.encode_frame(train), train[LABEL].to_numpy(), params,
                      CODEC.names, CODEC.categorical_indices())


def evaluate(model: Model, holdout: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    """Metrics on the holdout, and the scores they came from."""
    scores = model.score(CODEC.encode_frame(holdout))
    return metrics(holdout[LABEL].to_numpy(), scores), scores


def self_check_rows(model: Model, holdout: pd.DataFrame, n: int = SELF_CHECK_ROWS) -> list[SelfCheckRow]:
    """Sample rows with the scores the model gives them through the server's path (codec, score_one)."""
    sample = holdout.sample(n=min(n, len(holdout)), random_state=0)
    rows = feature_rows(sample)
    encoded = CODEC.matrix(rows)  # checked by the rules the server applies to requests
    if encoded is None:
        problems = [e["msg"] for r in rows for e in CODEC.errors(r, ("features",))]
        raise TrainError(f"self-check rows break the feature schema: {problems[:5]}")
    return [SelfCheckRow(features=r, expected=model.score_one(list(x))) for r, x in zip(rows, encoded, strict=True)]


def verify_self_check(model: Model, rows: list[SelfCheckRow]) -> None:
    """Re-score the stored rows; raise if any score moved (a broken artifact or library)."""
    if not rows:
        raise TrainError("the artifact has no self-check rows")
    encoded = CODEC.matrix([r.features for r in rows])
    if encoded is None:
        raise TrainError("self-check rows break the feature schema")
    problem = models.self_check_problem(model, encoded, [r.expected for r in rows], SELF_CHECK_TOLERANCE)
    if problem:
        raise TrainError(f"self-check failed: {problem}")


@dataclass
class Decision:
    """The gate's verdict."""

    promote: bool
    reason: str
    champion_metrics: dict[str, float] | None = None


def gate(registry: Registry, challenger: Model, challenger_metrics: dict[str, float],
         holdout: pd.DataFrame, tolerance: float) -> Decision:
    """Promote only if the challenger is not worse than the champion on the same holdout."""
    champion_version = registry.current()
    if champion_version is None:
        return Decision(True, "no model deployed yet")
    try:
        champion, meta = registry.load(champion_version)
    except RegistryError as exc:
        raise TrainError(f"the current model cannot be loaded, so it cannot be compared: {exc}. "
                         "Fix or roll back (`make rollback TO=<version>`), or retrain with "
                         "--force --reason '...'") from None
    problems = incompatibilities(schema_from_dicts(meta.feature_schema), FEATURES)
    if problems:
        return Decision(False, "schema incompatible with the champion: " + "; ".join(problems))
    champ_metrics, _ = evaluate(champion, holdout)
    delta = challenger_metrics["roc_auc"] - champ_metrics["roc_auc"]
    verdict = (f"roc_auc {challenger_metrics['roc_auc']:.4f} vs champion {champion_version} "
               f"{champ_metrics['roc_auc']:.4f} (delta {delta:+.4f}, tolerance {tolerance})")
    return Decision(delta >= -tolerance, ("better or equal: " if delta >= -tolerance else "worse: ") + verdict,
                    champ_metrics)


def fingerprint(frame: pd.DataFrame) -> str:
    """A short hash of the training data: equal data, equal fingerprint."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the working tree, or ("unknown", False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_COMMIT", "unknown"), False


# -- the run -----------------------------------------------------------------------------------

def run(engine: Engine | None, registry: Registry, experiments_log: Path, config: TrainConfig,
        progress: Callable[[str], None] = print, frame: pd.DataFrame | None = None) -> RunResult:
    """Train, evaluate, gate, save, log and (maybe) deploy one model, holding the training lock.

    `frame` skips the load step (tests and notebooks that already hold the training frame).
    TrainingBusy when another run holds the lock of this registry.
    """
    if config.model_type not in MODEL_TYPES:
        raise TrainError(f"unknown model type {config.model_type!r}; choose one of {MODEL_TYPES}")
    if config.force and not config.reason:
        raise TrainError("--force needs --reason '...': the reason goes to history.csv")
    check_params(config.model_type, {**DEFAULT_PARAMS[config.model_type], **config.params})
    with training_lock(registry):
        return _run(engine, registry, experiments_log, config, progress, frame)


@contextmanager
def training_lock(registry: Registry):
    """One training run per registry at a time; the holder is written beside the lock."""
    registry.root.mkdir(parents=True, exist_ok=True)
    lock_path, holder_path = registry.root / ".train.lock", registry.root / ".train.lock.holder"
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = holder_path.read_text().strip() if holder_path.exists() else "unknown"
        raise TrainingBusy(f"another training run holds {lock_path} ({holder}); wait for it to finish") from None
    try:
        holder_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started_at": datetime.now(UTC).isoformat(timespec="seconds")}))
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


def _run(engine: Engine | None, registry: Registry, experiments_log: Path, config: TrainConfig,
         progress: Callable[[str], None], frame: pd.DataFrame | None) -> RunResult:
    started = datetime.now(UTC)
    timings: dict[str, float] = {}
    t_run = time.perf_counter()

    def step(name: str, fn, *args):
        assert name in STEPS, name
        t0 = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - t0
        progress(f"[{name}] done in {timings[name]:.1f}s")
        return out

    if frame is None:
        frame = step("load", load, engine, config.as_of_count, progress)
    progress(f"[load] {len(frame):,} rows, {frame['as_of'].nunique()} as_of dates, "
             f"{frame[LABEL].mean():.1%} positive")
    step("check", check, frame)
    if config.shuffle_labels:  # a permutation test: with no signal left, holdout ROC AUC must be ~0.5
        frame = frame.assign(**{LABEL: np.random.default_rng(0).permutation(frame[LABEL].to_numpy())})
    train, holdout = step("split", split, frame, config.holdout_dates)
    progress(f"[split] train {len(train):,} rows, holdout {len(holdout):,} rows "
             f"(as_of >= {pd.Timestamp(holdout['as_of'].min()):%Y-%m-%d})")
    params = {**DEFAULT_PARAMS[config.model_type], **config.params}
    model = step("fit", fit, train, config.model_type, params)
    challenger_metrics, holdout_scores = step("evaluate", evaluate, model, holdout)
    progress("[evaluate] " + "  ".join(f"{k}={challenger_metrics[k]:.4f}" for k in METRICS))
    champion = registry.current()  # what the gate compares with: deploy only if it is still current then
    decision = step("gate", gate, registry, model, challenger_metrics, holdout, config.tolerance)
    if config.force and not decision.promote:
        decision = Decision(True, f"forced ({config.reason}); gate said: {decision.reason}", decision.champion_metrics)
    if config.shuffle_labels:  # the champion was scored on shuffled labels too: the gate means nothing
        decision = Decision(False, "permutation test (--shuffle-labels) is never deployed", decision.champion_metrics)
    elif not config.deploy:
        decision = Decision(False, f"--no-deploy; gate said: {decision.reason}", decision.champion_metrics)
    progress(f"[gate] {'PROMOTE' if decision.promote else 'keep champion'}: {decision.reason}")

    version = new_version(started)
    commit, dirty = git_state()
    train_X = CODEC.encode_frame(train)
    train_scores = model.score(train_X)
    meta = ModelMeta(
        version=version,
        created_at=started.replace(microsecond=0),
        model_type=config.model_type,
        git_commit=commit,
        git_dirty=dirty,
        data_fingerprint=fingerprint(frame),
        rows=Rows(train=len(train), holdout=len(holdout)),
        as_of_dates=[f"{pd.Timestamp(d):%Y-%m-%d}" for d in sorted(frame["as_of"].unique())],
        library_versions=recorded_versions(),
        feature_schema=schema_as_dicts(),
        schema_fingerprint=schema_fingerprint(),
        params=params,
        metrics=challenger_metrics,
        score_baseline=ScoreBaseline(**score_baseline(train_scores)),
        feature_baselines=[FeatureBaseline(**b) for b in feature_baselines(train_X, FEATURES)],
        self_check=self_check_rows(model, holdout),
        notes=config.notes,
    )

    def extras(folder: Path) -> None:
        save_plots(folder, holdout[LABEL].to_numpy(), holdout_scores, model.importance())

    step("save", registry.write, model, meta, extras)
    # Check what is on disk, not what is in memory: the server will load the file.
    reloaded, stored = registry.load(version)
    verify_self_check(reloaded, stored.self_check)
    progress(f"[save] {registry.path(version)}")

    lost: RegistryError | None = None
    if decision.promote:
        try:  # a compare-and-swap: another run that deployed since the gate read `current` wins
            step("deploy", registry.set_current, version, "promote", decision.reason, champion)
            progress(f"[deploy] current -> {version}")
        except RegistryError as exc:
            lost, decision = exc, Decision(False, f"not deployed: {exc}", decision.champion_metrics)
            progress(f"[deploy] {exc}")
    timings["total"] = time.perf_counter() - t_run
    step("log", append_run, experiments_log, {
        "started_at": started.isoformat(timespec="seconds"), "run_id": version, "git_commit": commit,
        "git_dirty": dirty, "user": _user(), "data_fingerprint": meta.data_fingerprint, "rows_train": len(train),
        "rows_holdout": len(holdout), "model_type": config.model_type,
        "params": {k: v for k, v in params.items() if k not in ("verbosity",)},
        **{k: challenger_metrics[k] for k in METRICS},
        "champion_roc_auc": (decision.champion_metrics or {}).get("roc_auc"),
        "duration_s": round(timings["total"], 1), "version": version,
        "promoted": decision.promote, "decision": decision.reason, "notes": config.notes,
    })
    progress(f"[log] appended to {experiments_log}")
    progress("timings: " + "  ".join(f"{k}={v:.1f}s" for k, v in timings.items() if k != "total")
             + f"  total={timings['total']:.1f}s")
    if lost is not None:  # logged as not promoted; the caller hears who won
        raise lost
    return RunResult(version, challenger_metrics, decision.promote, decision.reason,
                     decision.champion_metrics, timings)


def _user() -> str:
    try:
        return os.environ.get("TRAIN_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def params_from_cli(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings -> params, values parsed as JSON where they parse."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise TrainError(f"--param {pair!r}: expected key=value, e.g. --param num_leaves=63")
        key, raw = pair.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out
