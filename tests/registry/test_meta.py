"""registry/meta.py: meta.json is typed; a wrong file is refused naming the field."""

from __future__ import annotations

import json

import pytest

from registry.meta import (
    PINNED_LIBRARIES,
    MetaError,
    ModelMeta,
    installed_versions,
    recorded_versions,
)


def full_meta(**overrides) -> dict:
    meta = {
        "version": "20260101T000000Z-abcdef", "created_at": "2024-05-01T12:00:00Z", "model_type": "lightgbm",
        "git_commit": "abc", "git_dirty": False, "data_fingerprint": "f", "rows": {"train": 10, "holdout": 5},
        "as_of_dates": ["2024-04-01"], "library_versions": recorded_versions(), "feature_schema": [],
        "schema_fingerprint": "s", "params": {}, "metrics": {"roc_auc": 0.8},
        "score_baseline": {"edges": [i / 10 for i in range(11)], "fractions": [0.1] * 10},
        "self_check": [{"features": {"a": 1.0}, "expected": 0.5}], "notes": "",
    }
    meta.update(overrides)
    return meta


def parse(meta: dict) -> ModelMeta:
    return ModelMeta.from_json(json.dumps(meta), "meta.json of v")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"score_baseline": None}, "score_baseline"),
        ({"score_baseline": {"edges": [0.0, 1.0]}}, "score_baseline.fractions: Field required"),
        ({"score_baseline": {"edges": [0.0, 0.5, 1.0], "fractions": [1.0]}}, "one more edge"),
        ({"score_baseline": {"edges": [0.0, 0.7, 0.5, 1.0], "fractions": [0.3, 0.3, 0.4]}}, "ascending"),
        ({"score_baseline": {"edges": [0.0, 0.5, 1.0], "fractions": [0.5, 0.6]}}, "sum to 1"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": None}, "created_at"),
        ({"library_versions": None}, "library_versions"),
        ({"self_check": []}, "self_check"),
        ({"rows": {"train": -1, "holdout": 1}}, "rows.train"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_an_unusable_meta_is_refused_naming_the_field(overrides, message):
    with pytest.raises(MetaError) as refused:
        parse(full_meta(**overrides))
    assert message in str(refused.value) and str(refused.value).startswith("meta.json of v: ")


def test_a_meta_that_is_not_an_object_is_refused():
    for text in ("[]", "null", "not json"):
        with pytest.raises(MetaError, match="meta.json of v"):
            ModelMeta.from_json(text, "meta.json of v")


def test_written_and_read_by_the_same_code():
    meta = parse(full_meta())
    again = ModelMeta.from_json(meta.to_json(), "again")
    assert again == meta and again.created_at.tzinfo is not None
    assert parse(full_meta(created_at="2024-05-01T12:00:00")).trained_at == "2024-05-01T12:00:00Z"


def test_one_list_of_pinned_libraries_is_recorded_and_checked():
    assert set(PINNED_LIBRARIES) <= set(recorded_versions())
    assert parse(full_meta()).library_mismatches() == {}
    old = full_meta(library_versions={**recorded_versions(), "lightgbm": "3.0.0"})
    assert parse(old).library_mismatches() == {"lightgbm": ("3.0.0", installed_versions()["lightgbm"])}
