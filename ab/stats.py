"""A/B statistics as pure functions on counts: SRM, Wilson intervals, two-proportion test, sample size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import chi2, norm

SRM_ALPHA = (
    0.001  # a sample-ratio check this strict only fires when assignment or logging is broken
)


@dataclass(frozen=True)
class SRMCheck:
    """Chi-square goodness of fit of observed units per variant against the configured weights."""

    chi2: float
    p_value: float
    flagged: bool


@dataclass(frozen=True)
class Difference:
    """Treatment minus control conversion: difference, its CI, and the two-sided z test."""

    diff: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float


def srm_check(
    observed: Sequence[int], weights: Sequence[float], alpha: float = SRM_ALPHA
) -> SRMCheck:
    """Pearson chi-square of `observed` units vs expected = total * weight share; flagged when p < alpha."""
    total, wsum = sum(observed), sum(weights)
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError(
            f"need one weight per variant and at least 2 variants, got {observed} vs {weights}"
        )
    if total == 0:
        return SRMCheck(chi2=0.0, p_value=1.0, flagged=False)
    stat = sum(
        (o - total * w / wsum) ** 2 / (total * w / wsum)
        for o, w in zip(observed, weights, strict=True)
    )
    p = float(chi2.sf(stat, len(observed) - 1))
    return SRMCheck(chi2=float(stat), p_value=p, flagged=p < alpha)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = float(norm.isf(alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(
    x_control: int, n_control: int, x_treatment: int, n_treatment: int, alpha: float = 0.05
) -> Difference:
    """Difference p_t - p_c with a Wald CI, and the pooled two-proportion z test (two-sided)."""
    if n_control == 0 or n_treatment == 0:
        return Difference(
            diff=math.nan, ci_low=math.nan, ci_high=math.nan, z=math.nan, p_value=math.nan
        )
    p_c, p_t = x_control / n_control, x_treatment / n_treatment
    diff = p_t - p_c
    pooled = (x_control + x_treatment) / (n_control + n_treatment)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_treatment))
    if se_pooled == 0:  # both arms all 0 or all 1: no evidence of a difference
        z, p_value = 0.0, 1.0
    else:
        z = diff / se_pooled
        p_value = float(2 * norm.sf(abs(z)))
    half = float(norm.isf(alpha / 2)) * math.sqrt(
        p_c * (1 - p_c) / n_control + p_t * (1 - p_t) / n_treatment
    )
    return Difference(diff=diff, ci_low=diff - half, ci_high=diff + half, z=z, p_value=p_value)


def sample_size_per_arm(
    baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Units per arm to detect an absolute lift `mde` over `baseline` (two-sided; arcsine effect size)."""
    if not 0 < mde < 1:
        raise ValueError(f"mde is an absolute difference in conversion rate, e.g. 0.02; got {mde}")
    p1 = min(max(baseline, 0.0), 1.0)
    p2 = p1 + mde if p1 + mde <= 1 else p1 - mde
    h = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))  # Cohen's h
    n = 2 * ((norm.isf(alpha / 2) + norm.ppf(power)) / h) ** 2  # var(2 asin sqrt p) = 1/n per arm
    return math.ceil(n - 1e-9)
