"""`make audit`: each trigger's verdict follows the project state across its threshold.

Each component measures its own trigger (<component>/trigger.py); stack.audit gathers them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from deploy import trigger as deploy_trigger
from experiments import trigger as experiments_trigger
from experiments.log import append_run
from features import trigger as features_trigger
from features.schema import FEATURES
from features.spec import SPEC
from registry.store import Registry
from serve import trigger as serve_trigger
from stack import audit, findings
from tests.registry.test_meta import full_meta
from train import pipeline
from train import trigger as train_trigger

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def by_trigger(found: list[findings.Finding]) -> dict[str, findings.Finding]:
    return {f.trigger: f for f in found}


# -- the verdict rule ------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "threshold", "strict", "expected"), [
    (0, 3, False, "not yet"), (2, 3, False, "not yet"), (3, 3, False, "now"),
    (13, 20, True, "not yet"), (14, 20, True, "watch"), (20, 20, True, "watch"), (21, 20, True, "now"),
    (None, 10, True, "not yet"),
])
def test_verdict_rule(value, threshold, strict, expected):
    assert findings.verdict(value, threshold, strictly_above=strict) == expected


# -- experiment tracking ---------------------------------------------------------------------

def runs_csv(path: Path, recent: int, old: int = 0, now: datetime = NOW) -> Path:
    for i in range(recent):
        append_run(path, {"started_at": (now - timedelta(days=29 * i / max(recent, 1), hours=1)).isoformat(),
                          "run_id": f"recent-{i}"})
    for i in range(old):
        append_run(path, {"started_at": (now - timedelta(days=31 + i)).isoformat(), "run_id": f"old-{i}"})
    return path


@pytest.mark.parametrize(("recent", "expected"), [(5, "not yet"), (15, "watch"), (25, "now")])
def test_experiment_tracking_flips_with_runs_in_the_last_30_days(tmp_path, recent, expected):
    finding = experiments_trigger.audit_experiments(runs_csv(tmp_path / "runs.csv", recent, old=30), NOW)
    assert (finding.value, finding.verdict) == (recent, expected)
    assert finding.details["runs_total"] == recent + 30


def test_no_experiment_log_is_zero_runs(tmp_path):
    finding = experiments_trigger.audit_experiments(tmp_path / "absent.csv", NOW)
    assert (finding.value, finding.verdict) == (0, "not yet")


# -- Kubernetes ------------------------------------------------------------------------------

def compose_file(path: Path, n: int, distinct: bool = True) -> Path:
    services = {f"svc{i}": {"image": "busybox", "deploy": {"resources": {"limits": {
        "cpus": str(0.25 * (i + 1) if distinct else 1), "memory": "256m"}}}} for i in range(n)}
    services["migrate"] = {"image": "busybox", "restart": "no"}  # a one-shot job: no scaling need
    path.write_text(yaml.safe_dump({"services": services}))
    return path


@pytest.mark.parametrize(("n", "distinct", "expected"), [
    (4, True, "not yet"), (8, True, "watch"), (11, True, "now"), (11, False, "not yet"),
])
def test_kubernetes_flips_with_services_that_scale_differently(tmp_path, n, distinct, expected):
    finding = deploy_trigger.audit_kubernetes(compose_file(tmp_path / "compose.yml", n, distinct))
    assert finding.verdict == expected
    assert finding.value == (n if distinct else 1)
    assert finding.details["jobs"] == ["migrate"]


def test_kubernetes_on_the_repo_compose_file_is_not_yet():
    finding = deploy_trigger.audit_kubernetes(ROOT / "docker-compose.yml")
    assert finding.verdict == "not yet"
    assert "serve" in finding.details["services"]


# -- serving platform ------------------------------------------------------------------------

V1, V2, V3 = "20261101T000000Z-aaaaaa", "20261102T000000Z-bbbbbb", "20261103T000000Z-cccccc"


def registry(root: Path, types: dict[str, str], sizes: dict[str, int], promotions: list[str]) -> Path:
    """A registry folder: versions with meta.json + model.joblib, history.csv, current = V1."""
    for version, model_type in types.items():
        folder = root / "versions" / version
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps(full_meta(version=version, model_type=model_type,
                                                               schema_fingerprint="abc123def456")))
        (folder / "model.joblib").write_bytes(b"x" * sizes[version])
    (root / "current").write_text(V1 + "\n")
    lines = ["at,action,from_version,to_version,reason"]
    start = NOW - timedelta(days=90)
    for i, version in enumerate(promotions):
        lines.append(f"{(start + timedelta(hours=i)).isoformat()},promote,,{version},test")
    (root / "history.csv").write_text("\n".join(lines) + "\n")
    return root


def ab_config(path: Path, models: list[str]) -> Path:
    weights = [100 // len(models)] * len(models)
    weights[0] += 100 - sum(weights)
    variants = [{"name": f"v{i}", "weight": w, "model": m} for i, (w, m) in enumerate(zip(weights, models, strict=True))]
    path.write_text(yaml.safe_dump({"experiment": {"name": "three-models", "salt": "s1", "variants": variants}}))
    return path


def test_serving_platform_now_with_three_models_of_different_needs_and_cadences(tmp_path):
    root = registry(tmp_path / "models", {V1: "lightgbm", V2: "logreg", V3: "transformer"},
                    {V1: 2_000_000, V2: 10_000, V3: 200_000_000},
                    [V1] * 60 + [V2] * 2 + [V3] * 12)  # daily, rarely, weekly over 3 months
    config = ab_config(tmp_path / "ab.yml", ["current", V2, V3])
    finding = serve_trigger.audit_serving(root, config, NOW)
    assert (finding.value, finding.verdict) == (3, "now")
    cadences = {m["model_type"]: m["promotions_per_month"] for m in finding.details["models"]}
    assert cadences["lightgbm"] > cadences["transformer"] > cadences["logreg"]


def test_serving_platform_not_yet_with_one_model_or_three_alike(tmp_path):
    alike = registry(tmp_path / "alike", {V1: "lightgbm", V2: "lightgbm", V3: "lightgbm"},
                     {V1: 2_000_000, V2: 2_100_000, V3: 2_200_000}, [V1, V2, V3])
    finding = serve_trigger.audit_serving(alike, ab_config(tmp_path / "ab.yml", ["current", V2, V3]), NOW)
    assert (len(finding.details["models"]), finding.value, finding.verdict) == (3, 1, "not yet")
    finding = serve_trigger.audit_serving(alike, tmp_path / "no-experiment.yml", NOW)
    assert (len(finding.details["models"]), finding.verdict) == (1, "not yet")


def test_serving_platform_names_a_pinned_version_that_is_missing(tmp_path):
    root = registry(tmp_path / "models", {V1: "lightgbm"}, {V1: 10}, [V1])
    finding = serve_trigger.audit_serving(root, ab_config(tmp_path / "ab.yml", ["current", V2]), NOW)
    assert finding.verdict == "not yet"
    assert V2 in finding.how


# -- workflow orchestration ------------------------------------------------------------------

def test_orchestration_now_when_the_pipeline_has_several_owners(tmp_path):
    owners = tmp_path / "OWNERS"
    owners.write_text("# step  owner(s)\nload @data-eng\ncheck @data-eng\nfit @alice @bob\n* @ml-team\n")
    finding = train_trigger.audit_orchestration(owners)
    assert finding.verdict == "now"
    assert finding.value == 4
    assert finding.details["owners_by_stage"]["fit"] == ["@alice", "@bob", "@ml-team"]


def test_orchestration_not_yet_with_one_team_or_few_stages(tmp_path):
    finding = train_trigger.audit_orchestration(tmp_path / "absent")
    assert finding.verdict == "not yet"
    assert len(finding.details["stages"]) > 3  # the real pipeline's steps are found
    short = tmp_path / "pipeline.py"
    short.write_text("STEPS = ('load', 'fit')\n\ndef run():\n    pass\n")
    owners = tmp_path / "OWNERS"
    owners.write_text("* @alice @bob\n")
    finding = train_trigger.audit_orchestration(owners, short)
    assert (finding.details["stages"], finding.verdict) == (["load", "fit"], "not yet")


def test_orchestration_counts_the_steps_the_pipeline_declares(tmp_path, monkeypatch):
    finding = train_trigger.audit_orchestration(tmp_path / "absent")
    assert finding.details["stages"] == list(pipeline.STEPS)
    monkeypatch.setattr(pipeline, "STEPS", (*pipeline.STEPS, "explain"))  # a step added to the pipeline
    finding = train_trigger.audit_orchestration(tmp_path / "absent")
    assert finding.details["stages"][-1] == "explain" and "-> explain" in finding.how
    other = tmp_path / "pipeline.py"  # another file (--pipeline): names, or (name, function) pairs
    other.write_text("STEPS = (('load', print), ('fit', print), ('save', print))\n")
    assert train_trigger.pipeline_steps(other) == ["load", "fit", "save"]


# -- feature store ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory) -> str:
    """A few hundred demo entities in SQLite: enough to sample 20 and fast to build."""
    from features.db import make_engine
    from tests.conftest import demo

    url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'app.db'}"
    engine = make_engine(url)
    demo.load(engine, demo.generate(scale=100 / demo.ENTITIES_PER_SCALE, seed=3, end=datetime(2026, 6, 1)))
    engine.dispose()
    return url


def feature_store(tmp_path: Path, parity: features_trigger.Parity, consumers: str = "") -> findings.Finding:
    root = registry(tmp_path / "models", {V1: "lightgbm"}, {V1: 10}, [V1])
    (tmp_path / "CONSUMERS").write_text(consumers)
    in_service, _ = serve_trigger.models_in_service(Registry(root), tmp_path / "no-ab.yml")
    return features_trigger.audit_feature_store(root, in_service, tmp_path / "CONSUMERS", parity)


def test_parity_check_finds_no_skew_between_batch_and_online(tmp_path, tiny_db):
    parity = features_trigger.parity_check(tiny_db)
    assert (parity.status, parity.checked, parity.mismatches) == ("ok", 20, 0)
    assert feature_store(tmp_path, parity).verdict == "not yet"


def test_skew_makes_the_feature_store_due(tmp_path, tiny_db, monkeypatch):
    from features import build

    real = build.build_online

    name = next(f.name for f in FEATURES if f.kind == "numeric" and not f.nullable)

    def skewed(conn, key, as_of):  # the serving path counts one more than training
        row = real(conn, key, as_of)
        return {**row, name: (row[name] or 0) + 1} if row else row

    monkeypatch.setattr(build, "build_online", skewed)
    parity = features_trigger.parity_check(tiny_db)
    assert (parity.status, parity.mismatches) == ("skew", 20)
    assert name in parity.examples[0]
    finding = feature_store(tmp_path, parity)
    assert finding.verdict == "now"
    assert f"20 of 20 {SPEC.entity.name}s skewed" in finding.measured


def test_features_shared_by_a_second_consumer_make_the_feature_store_due(tmp_path):
    unknown = features_trigger.Parity("unknown", reason="no database")
    assert feature_store(tmp_path / "a", unknown).verdict == "not yet"
    finding = feature_store(tmp_path / "b", unknown, "# model or team\nfraud-model  @risk-team\n")
    assert (finding.value, finding.verdict) == (2, "now")
    assert "skew unknown" in finding.measured


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/absent.db", "mysql://nobody@nowhere/db", "not a url"])
def test_parity_is_unknown_without_a_usable_database(tmp_path, url):
    parity = features_trigger.parity_check(url.format(tmp=tmp_path))
    assert parity.status == "unknown" and parity.reason
    assert not (tmp_path / "absent.db").exists()  # the audit never creates a database


def test_parity_is_unknown_without_the_app_tables(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x INTEGER)").connection.commit()
    parity = features_trigger.parity_check(f"sqlite:///{tmp_path / 'other.db'}")
    assert parity.status == "unknown" and "make seed" in parity.reason


# -- the command -----------------------------------------------------------------------------

def test_json_output_parses(tmp_path, capsys):
    root = registry(tmp_path / "models", {V1: "lightgbm"}, {V1: 10}, [V1])
    # the command reads the clock: runs dated from it (from NOW they leave the 30-day window as days pass)
    runs = runs_csv(tmp_path / "runs.csv", 25, now=datetime.now(UTC))
    args = ["--json", "--model-dir", str(root), "--runs", str(runs),
            "--compose", str(compose_file(tmp_path / "compose.yml", 11)), "--skip-parity"]
    assert audit.main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    verdicts = {r["trigger"]: r["verdict"] for r in rows}
    assert verdicts["experiment tracking"] == "now" and verdicts["Kubernetes"] == "now"
    assert set(verdicts) == {"serving platform", "feature store", "workflow orchestration",
                             "experiment tracking", "Kubernetes"}
    for row in rows:
        assert row["readme"].endswith("/README.md#replace-this-when")
        assert {"value", "measured", "threshold", "step", "how"} <= set(row)


@pytest.mark.parametrize("args", [["--compose", "/no/such/compose.yml"], ["--model-dir", "/no/such/dir"],
                                  ["--frobnicate"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        audit.main(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err


def test_a_pipeline_that_does_not_import_exits_2_naming_it(tmp_path, capsys):
    broken = tmp_path / "pipeline.py"
    broken.write_text("STEPS = ('load',\n")
    assert audit.main(["--pipeline", str(broken), "--skip-parity", "--json"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_default_run_on_the_repo_prints_a_table_and_exits_0(tmp_path):
    # The repo's own registry, log, compose file and pipeline; the database is kept out of it
    # (the parity check is covered above on a tiny one) so this stays fast.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'absent.db'}"}
    done = subprocess.run([sys.executable, "-m", "stack.audit"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trigger"))
    assert lines[header].split() == ["trigger", "measured", "threshold", "verdict", "read"]
    table = lines[header + 2: header + 7]
    assert [row.split("  ")[0] for row in table] == [
        "serving platform", "feature store", "workflow orchestration", "experiment tracking", "Kubernetes"]
    assert all(any(v in row for v in ("not yet", "watch", "now")) for row in table)
