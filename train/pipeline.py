"""The training pipeline as named steps; `run()` chains them and prints progress.

Each step is a plain function so a test can call it alone:
load -> check -> split -> fit -> evaluate -> gate -> save -> deploy -> log.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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
from train.artifact import predict
from train.evaluate import METRICS, metrics, save_plots, score_baseline
from train.registry import Registry, RegistryError, new_version

MODEL_TYPES = ("lightgbm", "logreg")
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
SELF_CHECK_TOLERANCE = 1e-9


class TrainError(RuntimeError):
    """Training cannot go on; the message says what was wrong and what to do."""


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
    if model_type == "lightgbm":
        from lightgbm.basic import _ConfigAliases

        aliases = _ConfigAliases._get_all_param_aliases()
        known = set(aliases) | {a for names in aliases.values() for a in names}
    elif model_type == "logreg":
        from sklearn.linear_model import LogisticRegression

        known = set(LogisticRegression().get_params())
    else:
        raise TrainError(f"unknown model type {model_type!r}; choose one of {MODEL_TYPES}")
    unknown = sorted(set(params) - known)
    if unknown:
        raise TrainError(f"unknown {model_type} parameter(s) {unknown}; see the {model_type} documentation "
                         "for the names it takes")


def fit(train: pd.DataFrame, model_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """Fit a model on the encoded frame; returns the artifact dict."""
    check_params(model_type, params)
    X, y = CODEC.encode_frame(train), train[LABEL].to_numpy()
    names = [f.name for f in FEATURES]
    if model_type == "lightgbm":
        import lightgbm as lgb

        p = dict(params)
        rounds = int(p.pop("num_boost_round", 300))
        data = lgb.Dataset(X, y, feature_name=names, categorical_feature=CODEC.categorical_indices(), free_raw_data=False)
        estimator = lgb.train(p, data, num_boost_round=rounds)
    elif model_type == "logreg":
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        cats = CODEC.categorical_indices()
        nums = [i for i in range(len(names)) if i not in cats]
        prep = ColumnTransformer([
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                  OneHotEncoder(handle_unknown="ignore")), cats),
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                  StandardScaler()), nums),
        ])
        estimator = make_pipeline(prep, LogisticRegression(**params)).fit(X, y)
    else:
        raise TrainError(f"unknown model type {model_type!r}; choose one of {MODEL_TYPES}")
    return {"model_type": model_type, "estimator": estimator, "feature_names": names}


def importance(artifact: dict[str, Any]) -> dict[str, float]:
    """Gain importance (LightGBM) or |coefficient| mass per feature (logreg)."""
    names = artifact["feature_names"]
    if artifact["model_type"] == "lightgbm":
        gains = artifact["estimator"].feature_importance(importance_type="gain")
        return {n: float(g) for n, g in zip(names, gains, strict=True)}
    return {}


def evaluate(artifact: dict[str, Any], holdout: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    """Metrics on the holdout, and the scores they came from."""
    scores = predict(artifact, CODEC.encode_frame(holdout))
    return metrics(holdout[LABEL].to_numpy(), scores), scores


def self_check_rows(artifact: dict[str, Any], holdout: pd.DataFrame, n: int = SELF_CHECK_ROWS) -> list[dict]:
    """Sample rows with the scores the model gives them through the serving encoder."""
    sample = holdout.sample(n=min(n, len(holdout)), random_state=0)
    rows = feature_rows(sample)
    encoded = CODEC.matrix(rows)  # checked by the rules the server applies to requests
    if encoded is None:
        problems = [e["msg"] for r in rows for e in CODEC.errors(r, ("features",))]
        raise TrainError(f"self-check rows break the feature schema: {problems[:5]}")
    scores = predict(artifact, encoded)
    return [{"features": r, "expected": float(s)} for r, s in zip(rows, scores, strict=True)]


def verify_self_check(artifact: dict[str, Any], rows: list[dict], tolerance: float = SELF_CHECK_TOLERANCE) -> None:
    """Re-score the stored rows; raise if any score moved (a broken artifact or library)."""
    if not rows:
        raise TrainError("the artifact has no self-check rows")
    encoded = CODEC.matrix([r["features"] for r in rows])
    if encoded is None:
        raise TrainError("self-check rows break the feature schema")
    got = predict(artifact, encoded)
    expected = np.array([r["expected"] for r in rows])
    worst = float(np.max(np.abs(got - expected)))
    if worst > tolerance:
        raise TrainError(f"self-check failed: scores differ from the stored ones by up to {worst:.3g}")


@dataclass
class Decision:
    """The gate's verdict."""

    promote: bool
    reason: str
    champion_metrics: dict[str, float] | None = None


def gate(registry: Registry, challenger: dict[str, Any], challenger_metrics: dict[str, float],
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
    problems = incompatibilities(schema_from_dicts(meta["feature_schema"]), FEATURES)
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


def library_versions() -> dict[str, str]:
    """Versions of the libraries an artifact depends on; the server refuses a mismatch."""
    import joblib
    import lightgbm
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__, "lightgbm": lightgbm.__version__,
            "scikit-learn": sklearn.__version__, "joblib": joblib.__version__}


# -- the run -----------------------------------------------------------------------------------

def run(engine: Engine | None, registry: Registry, experiments_log: Path, config: TrainConfig,
        progress: Callable[[str], None] = print, frame: pd.DataFrame | None = None) -> RunResult:
    """Train, evaluate, gate, save, log and (maybe) deploy one model.

    `frame` skips the load step (tests and notebooks that already hold the training frame).
    """
    if config.model_type not in MODEL_TYPES:
        raise TrainError(f"unknown model type {config.model_type!r}; choose one of {MODEL_TYPES}")
    if config.force and not config.reason:
        raise TrainError("--force needs --reason '...': the reason goes to history.csv")
    check_params(config.model_type, {**DEFAULT_PARAMS[config.model_type], **config.params})
    started = datetime.now(UTC)
    timings: dict[str, float] = {}
    t_run = time.perf_counter()

    def step(name: str, fn, *args):
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
    artifact = step("fit", fit, train, config.model_type, params)
    challenger_metrics, holdout_scores = step("evaluate", evaluate, artifact, holdout)
    progress("[evaluate] " + "  ".join(f"{k}={challenger_metrics[k]:.4f}" for k in METRICS))
    decision = step("gate", gate, registry, artifact, challenger_metrics, holdout, config.tolerance)
    if config.force and not decision.promote:
        decision = Decision(True, f"forced ({config.reason}); gate said: {decision.reason}", decision.champion_metrics)
    if config.shuffle_labels:  # the champion was scored on shuffled labels too: the gate means nothing
        decision = Decision(False, "permutation test (--shuffle-labels) is never deployed", decision.champion_metrics)
    elif not config.deploy:
        decision = Decision(False, f"--no-deploy; gate said: {decision.reason}", decision.champion_metrics)
    progress(f"[gate] {'PROMOTE' if decision.promote else 'keep champion'}: {decision.reason}")

    version = new_version(started)
    commit, dirty = git_state()
    train_scores = predict(artifact, CODEC.encode_frame(train))
    meta = {
        "version": version,
        "created_at": started.isoformat(timespec="seconds"),
        "model_type": config.model_type,
        "git_commit": commit,
        "git_dirty": dirty,
        "data_fingerprint": fingerprint(frame),
        "rows": {"train": len(train), "holdout": len(holdout)},
        "as_of_dates": [f"{pd.Timestamp(d):%Y-%m-%d}" for d in sorted(frame["as_of"].unique())],
        "library_versions": library_versions(),
        "feature_schema": schema_as_dicts(),
        "schema_fingerprint": schema_fingerprint(),
        "params": params,
        "metrics": challenger_metrics,
        "score_baseline": score_baseline(train_scores),
        "self_check": self_check_rows(artifact, holdout),
        "notes": config.notes,
    }

    def extras(folder: Path) -> None:
        save_plots(folder, holdout[LABEL].to_numpy(), holdout_scores, importance(artifact))

    step("save", registry.write, version, artifact, meta, extras)
    # Check what is on disk, not what is in memory: the server will load the file.
    reloaded, _ = registry.load(version)
    verify_self_check(reloaded, meta["self_check"])
    progress(f"[save] {registry.path(version)}")

    if decision.promote:
        step("deploy", registry.set_current, version, "promote", decision.reason)
        progress(f"[deploy] current -> {version}")
    timings["total"] = time.perf_counter() - t_run
    append_run(experiments_log, {
        "started_at": meta["created_at"], "run_id": version, "git_commit": commit, "git_dirty": dirty,
        "user": _user(), "data_fingerprint": meta["data_fingerprint"], "rows_train": len(train),
        "rows_holdout": len(holdout), "model_type": config.model_type,
        "params": {k: v for k, v in params.items() if k not in ("verbosity",)},
        **{k: challenger_metrics[k] for k in METRICS},
        "champion_roc_auc": (decision.champion_metrics or {}).get("roc_auc"),
        "duration_s": round(timings["total"], 1), "version": version,
        "promoted": decision.promote, "decision": decision.reason, "notes": config.notes,
    })
    progress(f"[log] appended to {experiments_log}")
    progress("timings: " + "  ".join(f"{k}={v:.1f}s" for k, v in timings.items()))
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
