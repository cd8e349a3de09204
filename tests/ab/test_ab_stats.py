"""Statistics on counts: agreement with scipy/statsmodels, SRM, a known lift, A/A false positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, chisquare
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from ab.analysis import ArmCounts, analyse
from ab.stats import sample_size_per_arm, srm_check, two_proportion_test, wilson_interval

COUNTS = [(0, 50), (1, 50), (13, 100), (250, 2000), (1999, 2000), (480, 5000), (4100, 41_000)]


@pytest.mark.parametrize(("x", "n"), COUNTS)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_statsmodels(x, n, alpha):
    assert wilson_interval(x, n, alpha) == pytest.approx(
        proportion_confint(x, n, alpha=alpha, method="wilson"), abs=1e-12
    )


@pytest.mark.parametrize(
    ("c", "t"),
    [
        ((100, 1000), (130, 1000)),
        ((480, 5000), (520, 5100)),
        ((3, 40), (9, 44)),
        ((4100, 41_000), (4000, 40_500)),
    ],
)
def test_two_proportion_test_matches_statsmodels(c, t):
    d = two_proportion_test(*c, *t)
    z, p = proportions_ztest([t[0], c[0]], [t[1], c[1]])
    assert (d.z, d.p_value) == pytest.approx((z, p), rel=1e-10)
    low, high = confint_proportions_2indep(t[0], t[1], c[0], c[1], method="wald", compare="diff")
    assert (d.ci_low, d.ci_high) == pytest.approx((low, high), rel=1e-10)
    assert d.diff == pytest.approx(t[0] / t[1] - c[0] / c[1])


@pytest.mark.parametrize(
    ("observed", "weights"),
    [
        ([5000, 5000], [50, 50]),
        ([5100, 4900], [50, 50]),
        ([1000, 3100, 5900], [10, 30, 60]),
        ([30, 70], [1, 3]),
    ],
)
def test_srm_matches_scipy_chisquare(observed, weights):
    total = sum(observed)
    expected = [total * w / sum(weights) for w in weights]
    ref = chisquare(observed, expected)
    got = srm_check(observed, weights)
    assert (got.chi2, got.p_value) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)


@pytest.mark.parametrize("baseline", [0.0, 0.02, 0.1, 0.35, 0.5, 0.9, 0.99])
@pytest.mark.parametrize(
    ("mde", "alpha", "power"), [(0.02, 0.05, 0.8), (0.01, 0.01, 0.9), (0.05, 0.05, 0.8)]
)
def test_sample_size_matches_statsmodels(baseline, mde, alpha, power):
    target = baseline + mde if baseline + mde <= 1 else baseline - mde
    effect = proportion_effectsize(target, baseline)
    ref = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    assert sample_size_per_arm(baseline, mde, alpha, power) == math.ceil(ref)


def test_sample_size_gives_the_stated_power():
    # simulate 1000 experiments at exactly the computed size with the MDE as true lift: ~80% detect it
    rng = np.random.default_rng(7)
    n = sample_size_per_arm(0.10, 0.02, 0.05, 0.8)
    xc, xt = rng.binomial(n, 0.10, 1000), rng.binomial(n, 0.12, 1000)
    detected = sum(
        two_proportion_test(int(a), n, int(b), n).p_value < 0.05
        for a, b in zip(xc, xt, strict=True)
    )
    assert binom.ppf(0.0005, 1000, 0.8) <= detected <= binom.isf(0.0005, 1000, 0.8)


def test_a_a_false_positive_rate_is_alpha():
    rng = np.random.default_rng(20261128)
    runs, n, p, alpha = 2000, 4000, 0.1, 0.05
    xc, xt = rng.binomial(n, p, runs), rng.binomial(n, p, runs)
    hits = sum(
        two_proportion_test(int(a), n, int(b), n).p_value < alpha
        for a, b in zip(xc, xt, strict=True)
    )
    low, high = binom.ppf(0.0005, runs, alpha), binom.isf(0.0005, runs, alpha)  # 99.9% band
    assert low <= hits <= high, (
        f"{hits} false positives in {runs} A/A runs, expected {low:.0f}-{high:.0f}"
    )


def arms(control: tuple[int, int], *treatments: tuple[int, int], units=None) -> list[ArmCounts]:
    """ArmCounts with equal weights from (conversions, mature units) pairs."""
    pairs = [control, *treatments]
    return [
        ArmCounts(f"v{i}" if i else "control", 100 / len(pairs), units or n, n, x)
        for i, (x, n) in enumerate(pairs)
    ]


def test_known_lift_is_detected_and_called():
    rng = np.random.default_rng(1)
    n = 10_000
    result = analyse("lift", arms((int(rng.binomial(n, 0.10)), n), (int(rng.binomial(n, 0.13)), n)))
    d = result.comparisons["v1"]
    assert result.ready and not result.srm.flagged
    assert d.p_value < 1e-6 and d.ci_low > 0
    assert result.verdict.startswith("Winner: v1.") and result.winner == "v1"


def test_a_worse_treatment_is_called_worse():
    result = analyse("worse", arms((1300, 10_000), (1000, 10_000)))
    assert result.ready and "No winner" in result.verdict and "worse than control" in result.verdict


def test_no_difference_is_not_a_winner():
    result = analyse("flat", arms((1000, 10_000), (1010, 10_000)))
    assert (
        result.ready
        and result.verdict.startswith("No winner")
        and "no detectable difference" in result.verdict
    )


def test_refuses_to_call_before_the_sample_size():
    # a big observed lift on too few units is exactly when people stop too early
    result = analyse("early", arms((20, 300), (40, 300)))
    assert not result.ready
    assert result.verdict.startswith("Too early to call")
    assert f"{result.required_per_arm:,}" in result.verdict
    assert "Winner" not in result.verdict


def test_skewed_split_is_flagged_as_srm():
    counts = [
        ArmCounts("control", 50, 10_500, 10_500, 1050),
        ArmCounts("v1", 50, 9_500, 9_500, 1400),
    ]
    result = analyse("skewed", counts)
    assert result.srm.flagged and result.srm.p_value < 0.001
    assert not result.ready
    assert result.verdict.startswith("Do not trust these results: sample ratio mismatch")
    assert "Winner" not in result.verdict


def test_small_imbalance_is_not_srm():
    counts = [
        ArmCounts("control", 50, 10_080, 10_080, 1000),
        ArmCounts("v1", 50, 9_920, 9_920, 1000),
    ]
    assert not analyse("ok", counts).srm.flagged


def test_unexpected_variant_blocks_the_verdict():
    result = analyse("renamed", arms((1000, 10_000), (1300, 10_000)), unexpected={"old-name": 42})
    assert (
        not result.ready and "not in the config" in result.verdict and "old-name" in result.verdict
    )


def test_three_arms_use_bonferroni():
    result = analyse("three", arms((1000, 10_000), (1000, 10_000), (1000, 10_000)), alpha=0.05)
    assert result.alpha_per_comparison == pytest.approx(0.025)
    assert result.required_per_arm == sample_size_per_arm(0.1, 0.02, 0.025, 0.8)
