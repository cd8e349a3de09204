"""The marketplace generator: deterministic for a seed."""

import pandas as pd

from features import demo


def test_the_generator_is_deterministic():
    a, b = demo.generate(0.05, seed=3), demo.generate(0.05, seed=3)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
