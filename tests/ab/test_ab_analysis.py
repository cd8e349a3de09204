"""The SQL join on SQLite and Postgres (a hand-built dataset with a known answer), the report and the CLI."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

import ab.analysis
from ab.__main__ import main
from ab.analysis import ArmCounts, analyse, count_arms, load_models, load_units
from ab.exposures import ExposureWriter, ab_exposures
from ab.exposures import metadata as ab_metadata
from ab.report import write_report
from features.spec import SPEC, Entity, Outcome
from tests.ab.units import key, unit

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
    (1, "exp", "control", T0 + timedelta(hours=10)),
    (1, "exp", "control", T0 + timedelta(days=1)),
    (2, "exp", "control", T0 + timedelta(hours=10)),
    (3, "exp", "control", T0 + timedelta(hours=11)),
    (4, "exp", "treatment", T0 + timedelta(hours=12)),
    (5, "exp", "treatment", T0 + timedelta(days=5)),  # logged first, happened later
    (5, "exp", "treatment", T0),
    (6, "exp", "control", T0 + timedelta(hours=1)),  # saw both variants
    (6, "exp", "treatment", T0 + timedelta(hours=2)),
    (7, "exp", "treatment", T0 + timedelta(hours=3)),
    (8, "exp", "treatment", AS_OF - timedelta(days=2)),  # window still open
    (9, "other", "control", T0),  # another experiment
    (10, "exp", "treatment", T0 - timedelta(days=10)),  # before started_at (SINCE)
    (11, "exp", "control", AS_OF + timedelta(hours=1)),  # after as_of
    # experiment "win": outcomes 8 days after exposure count with a 10-day window, not a 7-day one
    (21, "win", "control", T0),
    (22, "win", "control", T0),
    (23, "win", "treatment", T0),
    (24, "win", "treatment", T0),
]
# (unit, outcome time): rows of the spec's outcome table (orders in the demo), via the loader
OUTCOMES = [
    (1, T0 + timedelta(hours=9)),  # before exposure: does not count
    (1, T0 + timedelta(hours=10) + WEEK),  # exactly 7 days later: does not count
    (2, T0 + timedelta(hours=10) + WEEK - US),  # last microsecond inside: counts
    (4, T0 + timedelta(hours=12)),  # at the exposure instant: counts
    (5, T0 + WEEK + timedelta(hours=1)),  # inside 7 days of the 2nd exposure, not the 1st
    (6, T0 + timedelta(hours=3)),
    (7, T0 + timedelta(days=3, hours=3)),
    (7, T0 + timedelta(days=10)),
    (8, AS_OF - timedelta(days=1)),  # immature unit: not counted yet
    (9, T0 + timedelta(hours=1)),
    (10, T0 - timedelta(days=9)),
    (12, T0 + timedelta(hours=5)),  # never exposed
    (21, T0 + timedelta(days=8)),  # day 8: inside a 10-day window, outside a 7-day one
    (23, T0 + timedelta(days=3)),  # inside either
]


def seven_day_outcome() -> Outcome:
    """The spec's outcome with the 7-day window this hand-built dataset was written for."""
    return SPEC.outcome.model_copy(update={"window_days": 7})


@pytest.fixture
def engine(ab_db_url, make_app_tables, loader):
    """The hand-built dataset in the parametrised database."""
    engine = sa.create_engine(ab_db_url)
    make_app_tables(engine)
    ab_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(ab_exposures),
            [
                {
                    "unit_id": unit(i),
                    "experiment": e,
                    "variant": v,
                    "ts": ts,
                    "model_version": "20261128T191500Z-a1b2c3",
                }
                for i, e, v, ts in EXPOSURES
            ],
        )
    assert loader.record_outcomes(engine, [(key(i), ts) for i, ts in OUTCOMES]) == len(OUTCOMES)
    yield engine
    engine.dispose()


def test_join_gives_the_known_answer(engine):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    assert list(units["unit_id"]) == [unit(i) for i in range(1, 9)]
    first = units.set_index("unit_id")
    assert first.at[unit(5), "first_ts"] == T0  # the earliest exposure, not the first logged
    assert first.at[unit(2), "first_outcome_ts"] == T0 + timedelta(hours=10) + WEEK - US
    assert (
        first.at[unit(1), "first_outcome_ts"] == T0 + timedelta(hours=10) + WEEK
    )  # SQL keeps it...
    arms, unexpected, multi = count_arms(units, WEIGHTS, as_of=AS_OF, window=WEEK)
    assert arms == [  # ...and the 7-day window drops it
        ArmCounts("control", 50.0, units=3, mature=3, conversions=1),
        ArmCounts("treatment", 50.0, units=4, mature=3, conversions=2),
    ]
    assert unexpected == {} and multi == 1


def test_since_and_experiment_scope(engine):
    units = load_units(engine, "exp", until=AS_OF)  # no started_at: unit 10 counts too
    arms, _, _ = count_arms(units, WEIGHTS, as_of=AS_OF, window=WEEK)
    assert arms[1] == ArmCounts("treatment", 50.0, units=5, mature=4, conversions=3)
    other = load_units(engine, "other", until=AS_OF)
    assert list(other["unit_id"]) == [unit(9)]
    assert load_units(engine, "nope", until=AS_OF).empty


def test_unexpected_variants_are_reported(engine):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    arms, unexpected, _ = count_arms(units, {"control": 50.0, "b": 50.0}, as_of=AS_OF, window=WEEK)
    assert unexpected == {"treatment": 4} and arms[1].units == 0


def test_models_served_per_variant(engine):
    served = load_models(engine, "exp", until=AS_OF, since=SINCE)
    assert served.to_dict("records")[0]["variant"] == "control"
    assert served["exposures"].sum() == 11


def test_report_and_chart_are_written(engine, tmp_path):
    units = load_units(engine, "exp", until=AS_OF, since=SINCE)
    arms, unexpected, multi = count_arms(units, WEIGHTS, as_of=AS_OF, window=WEEK)
    result = analyse(
        "exp",
        arms,
        unexpected=unexpected,
        multi_variant_units=multi,
        outcome=seven_day_outcome(),
    )
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


# -- the outcome and its window come from the spec (features/spec.yml `outcome`) --------------

WIN_WEIGHTS = {"control": 50.0, "treatment": 50.0}


@pytest.mark.parametrize(("days", "control_conversions"), [(7, 0), (10, 1)])
def test_the_window_is_the_outcomes_not_a_fixed_week(engine, days, control_conversions):
    # unit 21 converts on day 8 after its exposure: inside a 10-day window, outside a 7-day one
    outcome = SPEC.outcome.model_copy(update={"window_days": days})
    units = load_units(engine, "win", until=AS_OF, outcome=outcome)
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=AS_OF, window=outcome.window)
    assert arms == [
        ArmCounts("control", 50.0, units=2, mature=2, conversions=control_conversions),
        ArmCounts("treatment", 50.0, units=2, mature=2, conversions=1),
    ]


def spec_with_outcome(**changes) -> object:
    """SPEC with its outcome changed (what a fork's spec.yml would say)."""
    return SPEC.model_copy(update={"outcome": SPEC.outcome.model_copy(update=changes)})


def test_count_arms_defaults_to_the_spec_window(engine, monkeypatch):
    units = load_units(engine, "win", until=AS_OF)
    monkeypatch.setattr(ab.analysis, "SPEC", spec_with_outcome(window_days=10))
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=AS_OF)
    assert [a.conversions for a in arms] == [1, 1]
    monkeypatch.setattr(ab.analysis, "SPEC", spec_with_outcome(window_days=7))
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=AS_OF)
    assert [a.conversions for a in arms] == [0, 1]
    # a window that has not closed by as_of: the unit is assigned, not yet mature
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=T0 + timedelta(days=9))
    assert [a.mature for a in arms] == [2, 2]
    monkeypatch.setattr(ab.analysis, "SPEC", spec_with_outcome(window_days=10))
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=T0 + timedelta(days=9))
    assert [a.mature for a in arms] == [0, 0]


def test_cli_reads_window_and_wording_from_the_spec(
    ab_db_url, engine, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(ab.analysis, "SPEC", spec_with_outcome(window_days=10, noun="purchase"))
    rc = main(
        [
            "--experiment",
            "win",
            "--weights",
            "control=50,treatment=50",
            "--config",
            str(tmp_path / "missing.yml"),
            "--database-url",
            ab_db_url,
            "--out",
            str(tmp_path / "out"),
            "--as-of",
            AS_OF.isoformat(),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "1+ purchase" in err and "within 10 days" in err
    text = (tmp_path / "out" / "win" / "report.md").read_text()
    assert "at least one purchase" in text and "in the 10 days from its first exposure" in text
    assert "full 10-day window" in text and "7 days" not in text and " order" not in text
    # the day-8 conversion of unit 21 counts: control 1 of 2
    assert re.search(r"^\| control \| `\?` \| 2 \| 2 \| 1 \| 50\.00% \|", text, re.MULTILINE), text
    assert f"{SPEC.entity.name}s with a complete 10-day window" in text  # the verdict's wording


# -- integer keys: ab_exposures.unit_id is text, the outcome's key is BIGINT ------------------

INT_ENTITY = Entity(name="account", key="account_id", type="integer", table="accounts", example=7)
INT_OUTCOME = Outcome(
    table="ab_int_payments", key="account_id", time="paid_at", window_days=7, noun="payment"
)


@pytest.fixture
def int_engine(ab_db_url):
    """An integer-keyed outcome table; exposures written by the real writer with integer keys."""
    engine = sa.create_engine(ab_db_url)
    payments = sa.Table(
        INT_OUTCOME.table,
        sa.MetaData(),
        sa.Column("payment_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("paid_at", sa.DateTime, nullable=False),
    )
    payments.create(engine)
    writer = ExposureWriter(ab_db_url, flush_interval=0.05)
    big = 2**40 + 3  # beyond 32 bits: BIGINT on both sides
    # keys in their type, as serve passes them: the writer stores their canonical text
    for account, variant in ((1, "control"), (2, "control"), (big, "treatment"), (4, "treatment")):
        writer.record("int", account, variant, "current")
    assert writer.close(timeout=15)
    with engine.begin() as conn:
        conn.execute(
            sa.update(ab_exposures).values(ts=T0)  # one exposure time for a known answer
        )
        conn.execute(
            sa.insert(payments),
            [
                {"payment_id": 1, "account_id": 1, "paid_at": T0 + timedelta(days=2)},
                {"payment_id": 2, "account_id": big, "paid_at": T0 + timedelta(days=1)},
                # unit 4 paid only before its exposure; account 10 was never exposed
                {"payment_id": 3, "account_id": 4, "paid_at": T0 - timedelta(days=1)},
                {"payment_id": 4, "account_id": 10, "paid_at": T0 + timedelta(days=1)},
            ],
        )
    yield engine, big
    engine.dispose()


def test_integer_keys_join_on_both_databases(int_engine):
    engine, big = int_engine
    units = load_units(engine, "int", until=AS_OF, outcome=INT_OUTCOME, entity=INT_ENTITY)
    assert sorted(units["unit_id"]) == sorted(["1", "2", "4", str(big)])  # canonical text
    got = units.set_index("unit_id")["first_outcome_ts"]
    assert got["1"] == T0 + timedelta(days=2) and got[str(big)] == T0 + timedelta(days=1)
    assert got[["2", "4"]].isna().all()  # no outcome / only one before the exposure
    arms, _, _ = count_arms(units, WIN_WEIGHTS, as_of=AS_OF, window=INT_OUTCOME.window)
    assert [(a.units, a.conversions) for a in arms] == [(2, 1), (2, 1)]


@pytest.mark.postgres
def test_integer_keys_without_the_cast_fail_on_postgres(ab_postgres_url):
    # what the join did before it knew the key's type: text = bigint, which Postgres refuses
    engine = sa.create_engine(ab_postgres_url)
    try:
        ab_metadata.create_all(engine)
        sa.Table(
            "ab_int_plain",
            sa.MetaData(),
            sa.Column("account_id", sa.BigInteger),
            sa.Column("paid_at", sa.DateTime),
        ).create(engine)
        as_text = INT_ENTITY.model_copy(update={"type": "string"})
        plain = INT_OUTCOME.model_copy(update={"table": "ab_int_plain"})
        with pytest.raises(sa.exc.ProgrammingError, match="operator does not exist"):
            load_units(engine, "int", until=AS_OF, outcome=plain, entity=as_text)
        assert load_units(engine, "int", until=AS_OF, outcome=plain, entity=INT_ENTITY).empty
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS ab_int_plain"))
            conn.execute(sa.text("DROP TABLE IF EXISTS ab_exposures"))
        engine.dispose()
