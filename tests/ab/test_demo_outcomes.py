"""`make ab-demo`'s simulated outcomes go through the loader contract and follow the spec's outcome."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from ab.analysis import count_arms, load_units
from ab.demo import CHALLENGER, CONTROL, EXPERIMENT, simulate_outcomes
from ab.exposures import ab_exposures
from ab.exposures import metadata as ab_metadata
from features.spec import SPEC
from tests.ab.units import unit

T0 = datetime(2026, 11, 1, 12)


def test_simulated_outcomes_land_in_the_outcome_window(ab_db_url, make_app_tables):
    engine = sa.create_engine(ab_db_url)
    try:
        make_app_tables(engine)
        ab_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(ab_exposures),
                [
                    {
                        "unit_id": unit(i),
                        "experiment": EXPERIMENT,
                        "variant": CONTROL if i % 2 else CHALLENGER,
                        "ts": T0 + timedelta(minutes=i),
                        "model_version": "current",
                    }
                    for i in range(1, 401)
                ],
            )
        messages: list[str] = []
        as_of = simulate_outcomes(engine, 0.2, 0.5, seed=5, progress=messages.append)
        window = SPEC.outcome.window
        last = T0 + timedelta(minutes=400)
        assert last + window < as_of <= last + window + timedelta(days=1)
        units = load_units(engine, EXPERIMENT, until=as_of)
        weights = {CONTROL: 50.0, CHALLENGER: 50.0}
        arms, _, _ = count_arms(units, weights, as_of=as_of)
        assert [a.mature for a in arms] == [200, 200]  # every window closed by as_of
        # every simulated outcome is the unit's first one and lies inside its window
        assert units["first_outcome_ts"].notna().sum() == sum(a.conversions for a in arms)
        control, challenger = (a.conversions / a.mature for a in arms)
        assert 0.1 < control < 0.3 and 0.6 < challenger < 0.8
        assert f"{SPEC.outcome.noun}s" in messages[-1] and SPEC.outcome.table in messages[-1]
    finally:
        engine.dispose()
