"""`make chaos` (serve/chaos.py) without running it: the target, the scenarios, the table.

The scenarios themselves are the regression tests of test_failure_modes.py and test_reliability.py,
which use the same helpers; `make chaos` runs all of them against one server in about 30 s.
"""

from __future__ import annotations

import re

from serve import chaos
from tests.conftest import ROOT


def test_make_chaos_is_a_documented_phony_target():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^chaos: install ## .+$", makefile, re.M)
    assert "$(PY) -m serve.chaos" in makefile
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)$", makefile, re.M | re.S).group(1)
    assert "chaos" in phony.split()


def test_every_scenario_runs_and_the_issue_s_list_is_covered():
    assert all(callable(getattr(chaos.Chaos, name, None)) for name in chaos.SCENARIOS)
    assert len(set(chaos.SCENARIOS)) == len(chaos.SCENARIOS) == 11


def test_the_table_has_the_columns_and_marks_a_failed_expectation():
    rows = [chaos.Row("a", "went fine", "0 of 10 probe", "0 s", "1 → 1 MB", True, "nothing fails"),
            chaos.Row("b | c", "broke", "3 of 10 probe", "9 s", "1 → 2 MB", False, "0 failures")]
    table = chaos.render(rows, "make chaos", 12.3)
    lines = table.splitlines()
    assert lines[0].startswith("`make chaos`, ") and "12 s wall, 1 of 2 as expected" in lines[0]
    assert lines[2] == ("| scenario | what happened | failed requests | time to recover | RSS before → after "
                        "| as expected |")
    assert lines[4] == "| a | went fine | 0 of 10 probe | 0 s | 1 → 1 MB | yes |"
    assert lines[5] == "| b / c | broke | 3 of 10 probe | 9 s | 1 → 2 MB | **no** (0 failures) |"
