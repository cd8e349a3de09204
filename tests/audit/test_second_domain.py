"""A fork puts in its own domain by changing 3 places, and the whole stack follows.

The checkout is copied into a fresh git repository ("upstream"); then, as docs/make-it-yours.md
says, only `features/spec.yml`, `features/sql/` and the loader `features/demo/` are replaced by
the marketplace in tests/audit/second_domain/ (integer key `host_id`, windows 3/14 days, a 14-day
absence label, a nullable average, a duration from a second table, categoricals of 3 and 4
values). `git diff --stat` of that commit is checked to touch only those places. Then, on SQLite
and on a real Postgres (in parallel), the fork's own commands run: seed, train, a real server
(/predict, /predict/batch, /predict/user/{id}, bad values), online == batch parity, load-test
payloads, the audit, and an A/B experiment through the server with its report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, throwaway_database

DOMAIN = Path(__file__).parent / "second_domain"
FORK_PLACES = ("features/spec.yml", "features/sql/", "features/demo/")

# Runs inside the fork (cwd and PYTHONPATH = the fork), one database per run.
STEPS = r'''
import json, os, runpy, subprocess, sys, urllib.error, urllib.request
from pathlib import Path

out = {}


def python_m(module, *argv, check=True):
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        sys.exit(f"python -m {module} {' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def post(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


out["seed"] = python_m("features.demo", "--scale", "0.5").stdout
out["train"] = python_m("train", "--param", "num_threads=1", "--param", "num_boost_round=80").stdout

from features import build
from features.db import make_engine
from features.spec import SPEC

engine = make_engine(os.environ["DATABASE_URL"])
as_of = build.training_as_of_dates(engine, 1)[0]
checked, mismatches = build.parity(engine, as_of, sample=60)
out["parity"] = [checked, mismatches]
frame = build.build_training_frame(engine, [as_of])
keys = frame[SPEC.entity.key].tolist()
rows = build.feature_rows(frame.head(5))
engine.dispose()

from deploy import harness

port = int(os.environ["PORT"])
server = harness.start(Path(os.environ["SERVE_LOG"]), {"WEB_CONCURRENCY": "1"}, port=port)
try:
    server.wait_ready(120)  # ServerError with the log's tail when it does not come up
    out["model"] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/model").read())
    openapi = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json").read())
    out["openapi"] = {"description": openapi["info"]["description"],
                      "example": openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]}
    out["predict"] = post(port, "/predict", {"features": rows[0], "user_id": keys[0]})
    out["predict_str_key"] = post(port, "/predict", {"features": rows[0], "user_id": str(keys[0])})
    out["batch"] = post(port, "/predict/batch", {"rows": rows})
    out["by_key"] = post(port, f"/predict/user/{keys[1]}")
    out["by_missing_key"] = post(port, "/predict/user/999999")
    out["unparsable_key"] = post(port, "/predict/user/host-12")
    out["bad_tier"] = post(port, "/predict", {"features": {**rows[0], "tier": "platinum"}})
    out["bad_hours"] = post(port, "/predict", {"features": {**rows[0], "hours_online_14d": 50000}})
    out["demo_field"] = post(port, "/predict", {"features": {**rows[0], "country": "US"}})
finally:
    server.stop(30)

out["payloads"] = python_m("loadtest.payloads", "--rows", "40", "--out", "payloads.json").stdout
payload = json.loads(Path("payloads.json").read_text())
out["payload_keys"] = [r["user_id"] for r in payload["rows"][:5]]
out["payload_features"] = sorted(payload["rows"][0]["features"])
out["audit"] = python_m("stack.audit", "--json", check=False).stdout
ab_db = ["--database-url", os.environ["AB_DEMO_DATABASE_URL"]] if os.environ.get("AB_DEMO_DATABASE_URL") else []
out["ab_demo"] = python_m("ab.demo", "--entities", "600", "--workdir", "ab-demo", "--lift", "0.15", *ab_db).stdout
print("RESULT " + json.dumps(out, default=str))
'''


def _files(root: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [p for p in listed if (root / p).is_file() and not p.startswith("tests/audit/second_domain/")]


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "fork", "GIT_AUTHOR_EMAIL": "fork@example.com",
           "GIT_COMMITTER_NAME": "fork", "GIT_COMMITTER_EMAIL": "fork@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def make_fork(dest: Path) -> str:
    """Upstream's files in a new repo, then the second domain in the 3 places; `git diff --stat`."""
    for rel in _files(ROOT):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "upstream")
    shutil.copy2(DOMAIN / "spec.yml", dest / "features/spec.yml")
    shutil.rmtree(dest / "features/sql")
    shutil.copytree(DOMAIN / "sql", dest / "features/sql")
    shutil.rmtree(dest / "features/demo")
    shutil.copytree(DOMAIN / "demo", dest / "features/demo", ignore=shutil.ignore_patterns("__pycache__"))
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "our marketplace")
    return _git(dest, "diff", "--stat=200", "HEAD~1", "HEAD")


@pytest.fixture(scope="module")
def fork(tmp_path_factory) -> tuple[Path, str]:
    dest = tmp_path_factory.mktemp("fork") / "repo"
    dest.mkdir()
    return dest, make_fork(dest)


def _env(fork_root: Path, work: Path, database_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {
        "DATABASE_URL", "MODEL_DIR", "EXPERIMENTS_LOG", "AB_CONFIG", "ADMIN_TOKEN", "ENVIRONMENT",
        "PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH", "WEB_CONCURRENCY", "GIT_COMMIT", "PORT", "HOST"}}
    env.update(PYTHONPATH=str(fork_root), DATABASE_URL=database_url, MODEL_DIR=str(work / "models"),
               EXPERIMENTS_LOG=str(work / "runs.csv"), AB_CONFIG=str(work / "experiment.yml"),
               TRAIN_USER="fork", PORT=str(port), HOST="127.0.0.1", SERVE_LOG=str(work / "serve.log"))
    return env


@pytest.fixture(scope="module")
def runs(fork, tmp_path_factory, postgres_server) -> dict[str, dict]:
    """The fork's commands on SQLite and on Postgres, run side by side."""
    from tests.conftest import free_port

    fork_root, _ = fork
    with throwaway_database(postgres_server, "fork") as pg_url, \
            throwaway_database(postgres_server, "fork_ab") as pg_ab_url:
        procs = {}
        for name, url_of in (("sqlite", lambda w: f"sqlite:///{w / 'app.db'}"), ("postgres", lambda _w: pg_url)):
            work = tmp_path_factory.mktemp(f"fork-{name}")
            env = _env(fork_root, work, url_of(work), free_port())
            if name == "postgres":
                env["AB_DEMO_DATABASE_URL"] = pg_ab_url  # the A/B loop on Postgres too
            procs[name] = (work, subprocess.Popen(
                [sys.executable, "-c", STEPS], cwd=work, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = {}
        for name, (_work, proc) in procs.items():
            stdout, stderr = proc.communicate(timeout=420)
            assert proc.returncode == 0, f"{name}: the fork failed:\n{stdout[-4000:]}\n{stderr[-4000:]}"
            results[name] = json.loads(stdout.split("RESULT ", 1)[1])
    return results


def test_the_fork_changes_only_the_three_places(fork):
    _, stat = fork
    changed = [line.split("|")[0].strip() for line in stat.splitlines() if "|" in line]
    assert changed, stat
    outside = [p for p in changed if not any(p == place or p.startswith(place) for place in FORK_PLACES)]
    assert outside == [], f"the fork had to change {outside}:\n{stat}"
    assert any(p.startswith("features/sql/") for p in changed) and "features/spec.yml" in changed


def test_the_fork_guide_lists_the_three_places():
    doc = (ROOT / "docs" / "make-it-yours.md").read_text()
    for place in FORK_PLACES:
        assert f"`{place}`" in doc, f"docs/make-it-yours.md does not name {place}"
    assert "tests/audit/second_domain" in doc


@pytest.mark.postgres
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_the_fork_seeds_trains_and_serves(runs, db):
    r = runs[db]
    assert "seed:" in r["seed"] and "hosts" in r["seed"]
    assert "(deployed:" in r["train"], r["train"]
    auc = r["model"]["models"][r["model"]["current"]]["metrics"]["roc_auc"]
    assert auc > 0.7, f"{db}: holdout ROC AUC {auc}"
    assert [f["name"] for f in r["model"]["feature_schema"]][:3] == ["tier", "region", "tenure_days"]
    assert "go quiet" in r["openapi"]["description"] and r["openapi"]["example"]["user_id"] == 123

    status, body = r["predict"]
    assert status == 200 and 0 <= body["score"] <= 1
    assert r["predict_str_key"][0] == 200  # "42" and 42 are the same integer key
    status, body = r["batch"]
    assert status == 200 and len(body["scores"]) == 5
    status, body = r["by_key"]
    assert status == 200 and 0 <= body["score"] <= 1, body
    assert r["by_missing_key"][0] == 404
    status, body = r["unparsable_key"]
    assert status == 422 and body["detail"][0]["loc"] == ["path", "user_id"], body
    assert "integer host id" in body["detail"][0]["msg"]
    for case, field in (("bad_tier", "tier"), ("bad_hours", "hours_online_14d"), ("demo_field", "country")):
        status, body = r[case]
        assert status == 422 and any(e["loc"][-1] == field for e in body["detail"]), (case, body)


@pytest.mark.postgres
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_online_equals_batch_in_the_fork(runs, db):
    checked, mismatches = runs[db]["parity"]
    assert checked == 60 and mismatches == []
    assert "parity" in runs[db]["audit"] and '"skew"' not in runs[db]["audit"].split('"parity"')[1][:200]


@pytest.mark.postgres
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_the_fork_load_test_payloads_have_integer_keys(runs, db):
    r = runs[db]
    assert all(isinstance(k, int) for k in r["payload_keys"])
    assert "bookings_per_session_14d" in r["payload_features"]


@pytest.mark.postgres
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_an_ab_experiment_runs_through_the_forks_server(runs, db):
    report = runs[db]["ab_demo"]
    assert "session" in report and "14-day window" in report, report[-2000:]
    assert ("postgresql" in report) == (db == "postgres")  # where the exposures were joined
    assert "challenger" in report and "done" in report.splitlines()[-1]
