"""A second domain trains and serves by changing only the files docs/make-it-yours.md lists.

The repo's packages are copied into a temp folder; there the demo shop is replaced by a small
subscription app (accounts, logins, payments; label "will pay in the next 7 days") by editing
ONLY `DOMAIN_FILES`. Then, in a subprocess that imports the copy: seed, `python -m train`
(SQLite) and score through the app. Nothing outside `DOMAIN_FILES` is touched, except the
clearly marked stopgaps for the known gaps the doc lists (`KNOWN_GAPS`).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ab", "deploy", "experiments", "features", "loadtest", "monitoring", "serve", "stack", "train")

# What docs/make-it-yours.md tells a user to change; the test changes exactly these.
DOMAIN_FILES = (
    "features/tables.py",
    "features/sql/*.sql",
    "features/schema.py",
    "features/build.py",  # FEATURE_SQL and transform() only (see KNOWN_GAPS)
    "features/demo.py",
)

# -- the subscription app: the new contents of DOMAIN_FILES ----------------------------------

TABLES = '''\
"""The subscription app's tables (SQLAlchemy Core), the same on SQLite and Postgres."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, MetaData, String, Table

metadata = MetaData()

accounts = Table(
    "accounts", metadata,
    Column("account_id", String(16), primary_key=True),
    Column("created_at", DateTime, nullable=False),
    Column("plan", String(16), nullable=False),
)
logins = Table(
    "logins", metadata,
    Column("login_id", BigInteger, primary_key=True, autoincrement=False),
    Column("account_id", String(16), nullable=False),
    Column("ts", DateTime, nullable=False),
    Index("ix_logins_account_ts", "account_id", "ts"),
)
payments = Table(
    "payments", metadata,
    Column("payment_id", BigInteger, primary_key=True, autoincrement=False),
    Column("account_id", String(16), nullable=False),
    Column("ts", DateTime, nullable=False),
    Column("amount", Float, nullable=False),
    Index("ix_payments_account_ts", "account_id", "ts"),
)

APP_TABLES = (accounts, logins, payments)
ENTITY_ID = accounts.c.account_id  # the prediction unit: what user_id means in features/sql
EVENT_TIMES = (logins.c.ts, payments.c.ts)  # the data ends at the newest of these
OUTCOME_UNIT, OUTCOME_TIME = payments.c.account_id, payments.c.ts
'''

SQL = {
    "profile": '''\
-- Every account that existed before :as_of; the key is returned as user_id.
SELECT a.account_id AS user_id, a.created_at, a.plan
FROM accounts a
WHERE a.created_at < :as_of
  AND a.account_id BETWEEN :first_user AND :last_user
''',
    "activity": '''\
-- Logins in the last 7 and 30 days before :as_of.
SELECT l.account_id AS user_id,
       SUM(CASE WHEN l.ts >= :since_7d THEN 1 ELSE 0 END)  AS logins_7d,
       SUM(CASE WHEN l.ts >= :since_30d THEN 1 ELSE 0 END) AS logins_30d
FROM logins l
WHERE l.ts < :as_of
  AND l.account_id BETWEEN :first_user AND :last_user
GROUP BY l.account_id
''',
    "billing": '''\
-- The last payment before :as_of.
SELECT p.account_id AS user_id, MAX(p.ts) AS last_payment_at
FROM payments p
WHERE p.ts < :as_of
  AND p.account_id BETWEEN :first_user AND :last_user
GROUP BY p.account_id
''',
    "label": '''\
-- The label: payments in [:as_of, :label_end).
SELECT p.account_id AS user_id, COUNT(*) AS payments_next_7d
FROM payments p
WHERE p.ts >= :as_of
  AND p.ts < :label_end
  AND p.account_id BETWEEN :first_user AND :last_user
GROUP BY p.account_id
''',
}

# features/schema.py: these top-level definitions are replaced (None: removed); the rest stays.
SCHEMA = {
    "LABEL": 'LABEL = "will_pay_7d"',
    "COUNTRIES": None,
    "DEVICES": None,
    "CHANNELS": None,
    "FEATURES": '''\
PLANS = ("free", "basic", "pro")

FEATURES: tuple[Feature, ...] = (
    Feature("plan", "categorical", "The account's plan.", values=PLANS),
    Feature("tenure_days", "numeric", "Days since the account was created.", minimum=0, maximum=36500),
    Feature("logins_7d", "numeric", "Logins in the last 7 days.", minimum=0, maximum=1e5),
    Feature("logins_30d", "numeric", "Logins in the last 30 days.", minimum=0, maximum=1e5),
    Feature("days_since_last_payment", "numeric", "Days since the last payment; null if none.",
            nullable=True, minimum=0, maximum=36500),
)''',
}

# features/build.py: the feature SQL files and the pandas half of each feature.
BUILD = {
    "FEATURE_SQL": 'FEATURE_SQL = ("profile", "activity", "billing")',
    "transform": '''\
def transform(raw: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """SQL results -> model features in schema order."""
    as_of64 = np.datetime64(as_of, "us")
    out = pd.DataFrame(index=pd.Index(raw["user_id"].astype(str).to_numpy(), name="user_id"))
    out["plan"] = raw["plan"].to_numpy()
    out["tenure_days"] = (as_of64 - _to_datetime(raw["created_at"]).to_numpy()) / _DAY
    for column in ("logins_7d", "logins_30d"):
        out[column] = pd.to_numeric(raw[column]).fillna(0).to_numpy(dtype="float64")
    out["days_since_last_payment"] = (as_of64 - _to_datetime(raw["last_payment_at"]).to_numpy()) / _DAY
    return out[list(FEATURE_NAMES)]''',
}

DEMO = '''\
"""Demo data for the subscription app: accounts on a plan, their logins and monthly payments.

    python -m features.demo [--replace]

Paid accounts pay every 30 days from signup until they churn; engaged accounts churn later.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import func, select

from features import tables
from features.db import check_connection, make_engine
from features.schema import PLANS

ACCOUNTS, DAYS = 400, 90


def generate(seed: int = 7, end: datetime | None = None) -> dict[str, list[dict]]:
    end = end or datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {"accounts": [], "logins": [], "payments": []}
    for i in range(ACCOUNTS):
        account = f"a{i:05d}"
        plan = int(rng.choice(3, p=(0.4, 0.35, 0.25)))
        created = start + timedelta(days=float(rng.uniform(0, DAYS - 10)))
        engagement = float(rng.lognormal(-0.5 + 0.5 * plan, 0.6))
        churn = created + timedelta(days=float(rng.exponential(25 + 40 * engagement)))
        rows["accounts"].append({"account_id": account, "created_at": created, "plan": PLANS[plan]})
        day = created
        while day < min(churn, end):
            for _ in range(int(rng.poisson(engagement))):
                rows["logins"].append({"login_id": len(rows["logins"]) + 1, "account_id": account,
                                       "ts": day + timedelta(hours=float(rng.uniform(0, 24)))})
            day += timedelta(days=1)
        due = created
        while plan > 0 and due < min(churn, end):
            rows["payments"].append({"payment_id": len(rows["payments"]) + 1, "account_id": account,
                                     "ts": due, "amount": 10.0 * plan})
            due += timedelta(days=30)
    for name in ("logins", "payments"):
        rows[name] = [r for r in rows[name] if r["ts"] < end]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features.demo")
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)
    from stack.settings import get_settings

    engine = make_engine(get_settings().database_url)
    check_connection(engine)
    with engine.begin() as conn:
        if conn.dialect.has_table(conn, "accounts") and not args.replace:
            if conn.execute(select(func.count()).select_from(tables.accounts)).scalar_one():
                print("seed: the database has data; nothing to do")
                return 0
        tables.metadata.drop_all(conn)
        tables.metadata.create_all(conn)
        for table, rows in generate().items():
            conn.execute(getattr(tables, table).insert(), rows)
            print(f"seed: {len(rows):,} {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

# -- known gaps ----------------------------------------------------------------------------
# features/build.py still names the demo's tables and label column outside FEATURE_SQL and
# transform(). Until it reads them from features/tables.py (ENTITY_ID, EVENT_TIMES) and takes
# the label SQL's count column whatever its name, these stopgaps do that here. Each applies only
# while its demo-specific text is still there; docs/make-it-yours.md lists the same gaps.
KNOWN_GAPS = {
    "user_bounds() reads tables.users.c.user_id": (
        "tables.users.c.user_id", "tables.ENTITY_ID"),
    "data_end() reads tables.events and tables.orders": (
        "select(func.max(t.c.ts))).scalar() for t in (tables.events, tables.orders)]",
        "select(func.max(c))).scalar() for c in tables.EVENT_TIMES]"),
    "build_training_frame() reads the label column orders_next_7d": (
        '.set_index("user_id")["orders_next_7d"]', '.set_index("user_id").iloc[:, 0]'),
}
DEMO_NAMES = ("tables.users", "tables.events", "tables.orders", "orders_next_7d")

# One interpreter runs the three commands (runpy: exactly what `python -m` does), so the heavy
# imports are paid once. LightGBM gets one thread: on a busy 2-core box two threads spin.
STEPS = '''\
import json, runpy, sys


def python_m(module, *argv):
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            sys.exit(f"python -m {module} {' '.join(argv)} exited with {exc.code}")


python_m("features.demo")
python_m("train", "--as-of-count", "4", "--param", "num_threads=1", "--param", "num_boost_round=100")

import features
from fastapi.testclient import TestClient
from serve.app import create_app

valid = {"plan": "pro", "tenure_days": 40.0, "logins_7d": 5.0, "logins_30d": 18.0,
         "days_since_last_payment": 27.0}
out = {"features_module": features.__file__}
with TestClient(create_app()) as client:
    out["ready"] = client.get("/ready").status_code
    r = client.post("/predict", json={"features": valid})
    out["valid"] = [r.status_code, r.json()]
    r = client.post("/predict", json={"features": {**valid, "plan": "platinum"}})
    out["bad_plan"] = [r.status_code, r.json()]
    r = client.post("/predict", json={"features": {**valid, "country": "US"}})
    out["demo_field"] = [r.status_code, r.json()]
    r = client.post("/predict/user/a00007")
    out["by_user"] = [r.status_code, r.json()]
    out["schema"] = [f["name"] for f in client.get("/model").json()["feature_schema"]]
try:
    import ab.analysis  # noqa: F401
    out["ab_analysis"] = "ok"
except Exception as exc:
    out["ab_analysis"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(out))
'''


def replace_definitions(source: str, new: dict[str, str | None]) -> str:
    """`source` with the named top-level definitions replaced by new code (None: removed)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    spans = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        for name in names:
            spans[name] = (start, node.end_lineno)
    missing = set(new) - set(spans)
    assert not missing, f"not defined at top level any more: {sorted(missing)}; update this test"
    for name, (start, end) in sorted(spans.items(), key=lambda item: -item[1][0]):
        if name in new:
            lines[start - 1:end] = [] if new[name] is None else new[name].splitlines()
    return "\n".join(lines) + "\n"


def make_second_domain(dest: Path) -> dict[str, str]:
    """Copy the packages into `dest` and turn the copy into the subscription app."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db", "*.lock", "runs.csv")
    for package in PACKAGES:
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    features = dest / "features"
    (features / "tables.py").write_text(TABLES)
    for old in (features / "sql").glob("*.sql"):
        old.unlink()
    for name, body in SQL.items():
        (features / "sql" / f"{name}.sql").write_text(body)
    schema = features / "schema.py"
    schema.write_text(replace_definitions(schema.read_text(), SCHEMA))
    build = features / "build.py"
    source = replace_definitions(build.read_text(), BUILD)
    gaps = {}
    for gap, (old, stopgap) in KNOWN_GAPS.items():
        if old in source:
            gaps[gap] = old
            source = source.replace(old, stopgap)
    left = [name for name in DEMO_NAMES if name in source]
    assert not left, (f"features/build.py names {left} of the demo in a way this test does not "
                      "know; update KNOWN_GAPS (and docs/make-it-yours.md)")
    build.write_text(source)
    (features / "demo.py").write_text(DEMO)
    return gaps


@pytest.fixture(scope="module")
def second_domain(tmp_path_factory) -> dict:
    """The subscription app, seeded, trained and scored; what each step printed."""
    root = tmp_path_factory.mktemp("second_domain")
    app = root / "app"
    gaps = make_second_domain(app)
    env = {k: v for k, v in os.environ.items() if k.upper() not in {
        "DATABASE_URL", "MODEL_DIR", "EXPERIMENTS_LOG", "AB_CONFIG", "ADMIN_TOKEN", "ENVIRONMENT",
        "PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH", "WEB_CONCURRENCY", "GIT_COMMIT"}}
    env.update(PYTHONPATH=str(app), DATABASE_URL=f"sqlite:///{root / 'app.db'}",
               MODEL_DIR=str(root / "models"), EXPERIMENTS_LOG=str(root / "runs.csv"),
               AB_CONFIG=str(app / "ab" / "experiment.yml"), TRAIN_USER="test")

    done = subprocess.run([sys.executable, "-c", STEPS], cwd=app, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"the second domain failed:\n{done.stdout}\n{done.stderr}"
    printed, result = done.stdout.split("RESULT ", 1)
    return {**json.loads(result), "gaps": gaps, "printed": printed, "app": app}


def test_a_second_domain_trains_and_serves(second_domain):
    d = second_domain
    assert Path(d["features_module"]).parent == d["app"] / "features"  # the copy, not the repo
    assert "seed: 400 accounts" in d["printed"]
    assert "(deployed:" in d["printed"], d["printed"]
    assert d["schema"] == ["plan", "tenure_days", "logins_7d", "logins_30d", "days_since_last_payment"]
    assert d["ready"] == 200

    status, body = d["valid"]
    assert status == 200 and 0.0 <= body["score"] <= 1.0

    status, body = d["bad_plan"]
    assert status == 422
    assert any(e["loc"] == ["body", "features", "plan"] and "plan" in e["msg"] for e in body["detail"])

    status, body = d["demo_field"]  # the demo's fields are gone from the request schema
    assert status == 422 and "country" in json.dumps(body)

    status, body = d["by_user"]  # online features from the new tables
    assert status == 200 and 0.0 <= body["score"] <= 1.0


def test_the_doc_lists_the_files_this_test_changes():
    doc = (ROOT / "docs" / "make-it-yours.md").read_text()
    for path in DOMAIN_FILES:
        assert f"`{path}`" in doc, f"docs/make-it-yours.md does not list {path}"
    assert "features/sql/label.sql" in doc


def test_build_py_needs_no_edits_outside_feature_sql_and_transform(second_domain):
    assert second_domain["gaps"] == {}


def test_the_ab_analysis_imports_in_a_second_domain(second_domain):
    assert second_domain["ab_analysis"] == "ok"
