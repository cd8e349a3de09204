"""Deterministic, sticky variant assignment: an FNV-1a bucket of salt + unit id, weighted ranges.

bucket = fnv1a_32(str(fnv1a_32(utf8(salt + unit_id)))) % 10000, GrowthBook's "hash version 2".
The second pass matters: one FNV-1a pass over sequential ids ("u000123") correlates the
assignments of experiments with different salts (see tests/ab and ab/README.md).

A unit is an entity key (features/spec.yml `entity`) in its type; assign() hashes its one
canonical text form, SPEC.entity.canonical(key), so the integer 1 and the text "1" of an
integer key are one unit, and ab_exposures.unit_id stores the same text.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache

from ab.config import BUCKETS, Experiment, Variant
from features.spec import SPEC

FNV32_OFFSET_BASIS = 0x811C9DC5  # 2166136261
FNV32_PRIME = 0x01000193  # 16777619


def fnv1a_32(data: bytes, state: int = FNV32_OFFSET_BASIS) -> int:
    """32-bit FNV-1a: h = 2166136261; for each byte: h ^= byte; h = (h * 16777619) mod 2**32."""
    h = state
    for byte in data:
        h = ((h ^ byte) * FNV32_PRIME) & 0xFFFFFFFF
    return h


@lru_cache(maxsize=64)
def _salt_state(salt: str) -> int:
    # FNV-1a reads a byte stream, so hashing the salt once and continuing with the id is exact
    return fnv1a_32(salt.encode("utf-8"))


def bucket(salt: str, unit_id: str) -> int:
    """Bucket 0..9999: fnv1a_32(str(fnv1a_32((salt + unit_id).encode("utf-8"))).encode()) % 10000.

    The salt comes first, with no separator; the inner hash is written as a decimal string
    and hashed again. bucket / 10000 equals GrowthBook's hash(seed=salt, value=unit_id, v2).
    """
    inner = fnv1a_32(unit_id.encode("utf-8"), _salt_state(salt))
    return fnv1a_32(str(inner).encode("ascii")) % BUCKETS


def assign(experiment: Experiment, unit_id: str | int) -> Variant:
    """The unit's variant: the one whose contiguous bucket range (weights in config order) holds its bucket.

    `unit_id` is a key in its type (as SPEC.entity.parse returns it); its canonical text is hashed.
    """
    return experiment.variants[
        bisect_right(
            experiment.bucket_ends, bucket(experiment.salt, SPEC.entity.canonical(unit_id))
        )
    ]
