"""Assignment: the documented hash, uniform buckets, independent salts, weighted ranges."""

from __future__ import annotations

import bisect
import time
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

from ab.assign import assign, bucket, fnv1a_32
from ab.config import parse_experiment
from features.spec import SPEC

IDS = [f"u{i:06d}" for i in range(100_000)]


def reference_fnv1a_32(data: bytes) -> int:
    """FNV-1a written differently (multiply by the prime as shifts), to cross-check the real one."""
    h = 2166136261
    for b in data:
        h ^= b
        h += (h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24)
        h %= 2**32
    return h


def experiment(salt: str, *weights: float, name: str = "exp"):
    """An experiment with variants v0, v1, ... of the given weights."""
    return parse_experiment(
        {
            "name": name,
            "salt": salt,
            "variants": [
                {"name": f"v{i}", "weight": w, "model": "current"} for i, w in enumerate(weights)
            ],
        }
    )


def reference_bucket(salt: str, unit: str) -> int:
    """The documented bucket, spelled out with the reference hash."""
    inner = reference_fnv1a_32((salt + unit).encode("utf-8"))
    return reference_fnv1a_32(str(inner).encode("ascii")) % 10_000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),  # published FNV-1a vectors
    ],
)
def test_fnv1a_published_vectors(data, expected):
    assert fnv1a_32(data) == expected == reference_fnv1a_32(data)


# Pinned once from reference_bucket (inner hash, outer hash, bucket); these must never change,
# or every running experiment reshuffles its users.
PINNED = [
    ("", "u000000", 1764898608, 0x6DF7A47A, 6042),
    ("exp-1", "u000123", 4121442817, 0x9FA43E41, 1185),
    ("exp-1", "u000124", 4138220436, 0x251F0DA0, 2096),
    ("exp-2", "u000123", 4285967430, 0xC5A4C5FB, 139),
    ("checkout-2026-11", "u099999", 3376717985, 0x3892557D, 4237),
    ("salt", "", 3255728001, 0x4A5EF9F0, 8352),
    ("s\u00e4lz", "u000001", 212625717, 0x498A4926, 9462),  # non-ASCII salt: UTF-8 bytes
]


@pytest.mark.parametrize(("salt", "unit", "inner", "outer", "expected"), PINNED)
def test_bucket_pinned_vectors(salt, unit, inner, outer, expected):
    assert reference_fnv1a_32((salt + unit).encode("utf-8")) == inner
    assert reference_fnv1a_32(str(inner).encode()) == outer
    assert outer % 10_000 == expected == bucket(salt, unit)


# GrowthBook SDK test vectors (cases.json "hash", version 2): [seed, value, hash in 0..1).
# bucket / 10000 must equal them, so a GrowthBook experiment with seed = our salt and hash
# version 2 puts every user where we did.
GROWTHBOOK_V2 = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
]


@pytest.mark.parametrize(("seed", "value", "expected"), GROWTHBOOK_V2)
def test_bucket_matches_growthbook_hash_v2(seed, value, expected):
    assert bucket(seed, value) / 10_000 == expected


def test_bucket_matches_reference_on_many_ids():
    for unit in IDS[:2000]:
        assert bucket("exp-1", unit) == reference_bucket("exp-1", unit)


def test_buckets_are_uniform():
    counts = np.bincount([bucket("uniformity", u) for u in IDS], minlength=10_000)
    assert counts.sum() == len(IDS)
    assert chisquare(counts).pvalue > 0.001  # all 10000 buckets, 10 expected each
    assert chisquare(counts.reshape(100, 100).sum(axis=1)).pvalue > 0.001  # 1% slices


def test_different_salts_assign_independently():
    a = [bucket("salt-a", u) // 1000 for u in IDS]
    b = [bucket("salt-b", u) // 1000 for u in IDS]
    table = np.zeros((10, 10), dtype=int)
    np.add.at(table, (a, b), 1)
    assert chi2_contingency(table).pvalue > 0.001
    # and 50/50 splits: being in "treatment" of one says nothing about the other
    ea, eb = experiment("salt-a", 50, 50), experiment("salt-b", 50, 50)
    pairs = Counter((assign(ea, u).name, assign(eb, u).name) for u in IDS[:20_000])
    two_by_two = np.array(
        [[pairs["v0", "v0"], pairs["v0", "v1"]], [pairs["v1", "v0"], pairs["v1", "v1"]]]
    )
    assert chi2_contingency(two_by_two).pvalue > 0.001


def test_one_fnv_pass_would_correlate_experiments():
    # why bucket() hashes twice: with a single pass, two experiments' splits of sequential ids
    # are far from independent, even with unrelated salts
    def single(salt, unit):
        return fnv1a_32((salt + unit).encode()) % 10_000 // 1000

    table = np.zeros((10, 10), dtype=int)
    np.add.at(
        table, ([single("a1b2c3d4e5", u) for u in IDS], [single("f6e7d8c9b0", u) for u in IDS]), 1
    )
    assert chi2_contingency(table).pvalue < 1e-9


def test_variants_match_growthbook_bucket_ranges():
    # GrowthBook: ranges [cumulative, cumulative + weight) in order, summed in floating point;
    # the first range holding hash / 10000 wins. Only a bucket sitting exactly on a boundary may
    # differ (0.2 + 0.2 + 0.2 is 0.6000000000000001), one bucket in 10000 at most per boundary.
    for weights in ([50, 50], [10, 30, 60], [20, 20, 20, 40]):
        exp = experiment("gb-compat", *weights)
        starts = np.cumsum([0] + [w / 100 for w in weights[:-1]])
        ranges = [(s, s + w / 100) for s, w in zip(starts, weights, strict=True)]
        for b in range(10_000):
            gb = next(i for i, (lo, hi) in enumerate(ranges) if lo <= b / 10_000 < hi)
            ours = bisect.bisect_right(exp.bucket_ends, b)
            assert ours == gb or b in exp.bucket_ends, (weights, b)
        for unit in IDS[:1000]:
            assert (
                assign(exp, unit)
                is exp.variants[bisect.bisect_right(exp.bucket_ends, bucket("gb-compat", unit))]
            )


def test_weighted_split_proportions():
    exp = experiment("weighted", 10, 30, 60)
    counts = Counter(assign(exp, u).name for u in IDS)
    observed = [counts["v0"], counts["v1"], counts["v2"]]
    assert chisquare(observed, [10_000, 30_000, 60_000]).pvalue > 0.001
    for got, share in zip(observed, (0.1, 0.3, 0.6), strict=True):
        assert abs(got / len(IDS) - share) < 5 * (share * (1 - share) / len(IDS)) ** 0.5


def test_ranges_are_contiguous_in_config_order():
    exp = experiment("r", 33.33, 33.33, 33.34)
    ranges = exp.bucket_ranges()
    assert ranges == {"v0": range(0, 3333), "v1": range(3333, 6666), "v2": range(6666, 10_000)}
    for unit in IDS[:5000]:
        assert bucket("r", unit) in ranges[assign(exp, unit).name]


def test_assignment_is_sticky_and_salted():
    exp = experiment("sticky", 50, 50)
    first = [assign(exp, u).name for u in IDS[:1000]]
    assert first == [assign(exp, u).name for u in IDS[:1000]]
    other = [assign(experiment("another", 50, 50), u).name for u in IDS[:1000]]
    assert first != other


def test_assign_is_fast_enough_for_the_request_path():
    exp = experiment("speed", 50, 50)
    start = time.perf_counter()
    for unit in IDS[:20_000]:
        assign(exp, unit)
    assert time.perf_counter() - start < 1.0  # about 2 us each: a sanity bound, not a benchmark


def test_a_key_is_hashed_as_its_canonical_text():
    # an integer key arrives parsed (1) or as text ("1"): one unit, one bucket, one variant
    exp = experiment("canonical", 50, 50)
    for k in (1, 42, 2**40 + 3, 10**18):
        assert assign(exp, k) is assign(exp, str(k)) is assign(exp, SPEC.entity.canonical(k))
    integer = SPEC.entity.model_copy(update={"type": "integer"})
    assert assign(exp, integer.parse("0042")) is assign(exp, integer.parse(42)) is assign(exp, "42")
    # string keys are hashed as they are: the pinned vectors above still hold
    assert bucket("exp-1", SPEC.entity.canonical("u000123")) == 1185
