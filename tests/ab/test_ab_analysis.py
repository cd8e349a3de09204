"""The SQL join on SQLite and Postgres (a hand-built dataset with a known answer), the report and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from ab.__main__ import main
from ab.analysis import ArmCounts, analyse, count_arms, load_models, load_units
from ab.exposures import ab_exposures
from ab.exposures import metadata as ab_metadata
from ab.report import write_report

T0 = datetime(2026, 11, 1)
AS_OF = datetime(2026, 12, 1)
SINCE = T0 - timedelta(days=1)
WEEK = timedelta(days=7)
US = timedelta(microseconds=1)
WEIGHTS = {"control": 50.0, "treatment": 50.0}
CONFIG = {
    "experiment": {
        "name": "exp",
        "salt": "exp-1",
        "variants": [
            {"name": "control", "weight": 50, "model": "current"},
            {"name": "treatment", "weight": 50, "model": "20261128T191500Z-a1b2c3"},
        ],
    }
}

# (unit, experiment, variant, exposure time)
EXPOSURES = [
    ("u000001", "exp", "control", T0 + timedelta(hours=10)),
    ("u000001", "exp", "control", T0 + timedelta(days=1)),
    ("u000002", "exp", "control", T0 + timedelta(hours=10)),
    ("u000003", "exp", "control", T0 + timedelta(hours=11)),
    ("u000004", "exp", "treatment", T0 + timedelta(hours=12)),
    ("u000005", "exp", "treatment", T0 + timedelta(days=5)),  # logged first, happened later
    ("u000005", "exp", "treatment", T0),
    ("u000006", "exp", "control", T0 + timedelta(hours=1)),  # saw both variants
    ("u000006", "exp", "treatment", T0 + timedelta(hours=2)),
    ("u000007", "exp", "treatment", T0 + timedelta(hours=3)),
    ("u000008", "exp", "treatment", AS_OF - timedelta(days=2)),  # window still open
    ("u000009", "other", "control", T0),  # another experiment
    ("u000010", "exp", "treatment", T0 - timedelta(days=10)),  # before started_at (SINCE)
    ("u000011", "exp", "control", AS_OF + timedelta(hours=1)),  # after as_of
]
# (order id, user, time)
ORDERS = [
    (1, "u000001", T0 + timedelta(hours=9)),  # before exposure: does not count
    (2, "u000001", T0 + timedelta(hours=10) + WEEK),  # exactly 7 days later: does not count
    (3, "u000002", T0 + timedelta(hours=10) + WEEK - US),  # last microsecond inside: counts
    (4, "u000004", T0 + timedelta(hours=12)),  # at the exposure instant: counts
    (
        5,
        "u000005",
        T0 + WEEK + timedelta(hours=1),
    ),  # inside 7 days of the 2nd exposure, not the 1st
    (6, "u000006", T0 + timedelta(hours=3)),
    (7, "u000007", T0 + timedelta(days=3, hours=3)),
    (8, "u000007", T0 + timedelta(days=10)),
    (9, "u000008", AS_OF - timedelta(days=1)),  # immature unit: not counted yet
    (10, "u000009", T0 + timedelta(hours=1)),
    (11, "u000010", T0 - timedelta(days=9)),
    (12, "u000012", T0 + timedelta(hours=5)),  # never exposed
]


@pytest.fixture
def engine(ab_db_url, make_app_tables):
    """The hand-built dataset in the parametrised database."""
    engine = sa.create_engine(ab_db_url)
    tables = make_app_tables(engine)
    ab_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tables["users"]),
            [
                {
                    "user_id": f"u{i:06d}",
                    "signup_at": T0 - timedelta(days=30),
                    "country": "DE",
                    "device": "ios",
                    "channel": "ads",
                }
                for i in range(1, 13)
            ],
        )
        conn.execute(
            sa.insert(ab_exposures),
            [
                {
                    "unit_id": u,
                    "experiment": e,
                    "variant": v,
                    "ts": ts,
                    "model_version": "20261128T191500Z-a1b2c3",
                }
                for u, e, v, ts in EXPOSURES
            ],
        )
        conn.execute(
            sa.insert(tables["orders"]),
            [{"order_id": i, "user_id": u, "ts": ts, "amount": 10.0} for i, u, ts in ORDERS],
        )
    yield engine
    engine.dispose()


def test_join_gives_the_known_answer(engine):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    assert list(units["unit_id"]) == [f"u{i:06d}" for i in range(1, 9)]
    first = units.set_index("unit_id")
    assert first.at["u000005", "first_ts"] == T0  # the earliest exposure, not the first logged
    assert first.at["u000002", "first_order_ts"] == T0 + timedelta(hours=10) + WEEK - US
    assert (
        first.at["u000001", "first_order_ts"] == T0 + timedelta(hours=10) + WEEK
    )  # SQL keeps it...
    arms, unexpected, multi = count_arms(units, WEIGHTS, as_of=AS_OF)
    assert arms == [  # ...and the 7-day window drops it
        ArmCounts("control", 50.0, units=3, mature=3, conversions=1),
        ArmCounts("treatment", 50.0, units=4, mature=3, conversions=2),
    ]
    assert unexpected == {} and multi == 1


def test_since_and_experiment_scope(engine):
    units = load_units(engine, "exp", until=AS_OF)  # no started_at: u000010 counts too
    arms, _, _ = count_arms(units, WEIGHTS, as_of=AS_OF)
    assert arms[1] == ArmCounts("treatment", 50.0, units=5, mature=4, conversions=3)
    other = load_units(engine, "other", until=AS_OF)
    assert list(other["unit_id"]) == ["u000009"]
    assert load_units(engine, "nope", until=AS_OF).empty


def test_unexpected_variants_are_reported(engine):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    arms, unexpected, _ = count_arms(units, {"control": 50.0, "b": 50.0}, as_of=AS_OF)
    assert unexpected == {"treatment": 4} and arms[1].units == 0


def test_models_served_per_variant(engine):
    served = load_models(engine, "exp", until=AS_OF, since=SINCE)
    assert served.to_dict("records")[0]["variant"] == "control"
    assert served["exposures"].sum() == 11


def test_report_and_chart_are_written(engine, tmp_path):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    arms, unexpected, multi = count_arms(units, WEIGHTS, as_of=AS_OF)
    result = analyse("exp", arms, unexpected=unexpected, multi_variant_units=multi)
    report = write_report(
        result,
        tmp_path,
        as_of=AS_OF,
        since=SINCE,
        database="sqlite:///x",
        models={"control": "current"},
        served=load_models(engine, "exp", until=AS_OF, since=SINCE),
    )
    assert report == tmp_path / "exp" / "report.md"
    text = report.read_text()
    for heading in (
        "## Verdict",
        "## 1. Sample ratio check",
        "## 2. Conversion per variant",
        "## 3. Difference vs control",
        "## 4. Sample size",
        "## The peeking trap",
    ):
        assert heading in text
    assert "Too early to call" in text  # 3 units per arm
    assert "more than one variant (reported, excluded everywhere): 1" in text
    assert (tmp_path / "exp" / "conversion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_the_report(ab_db_url, engine, tmp_path, capsys):
    config = tmp_path / "ab.yml"
    config.write_text(yaml.safe_dump(CONFIG))
    rc = main(
        [
            "--config",
            str(config),
            "--database-url",
            ab_db_url,
            "--out",
            str(tmp_path / "out"),
            "--as-of",
            AS_OF.isoformat(),
            "--since",
            SINCE.isoformat(),
        ]
    )
    assert rc == 0
    assert "Too early to call" in capsys.readouterr().out
    assert (tmp_path / "out" / "exp" / "report.md").exists()
    assert (tmp_path / "out" / "exp" / "conversion.png").exists()


def test_cli_usage_errors(ab_sqlite_url, tmp_path, capsys):
    config = tmp_path / "none.yml"
    config.write_text("experiment: null\n")
    assert main(["--config", str(config), "--database-url", ab_sqlite_url]) == 2
    assert "no experiment is configured" in capsys.readouterr().err
    assert (
        main(["--config", str(config), "--database-url", ab_sqlite_url, "--experiment", "old"]) == 2
    )
    assert "--weights" in capsys.readouterr().err
    assert (
        main(
            [
                "--config",
                str(config),
                "--database-url",
                ab_sqlite_url,
                "--experiment",
                "old",
                "--weights",
                "control=50,b=50",
            ]
        )
        == 1
    )
    assert "no ab_exposures table" in capsys.readouterr().err
