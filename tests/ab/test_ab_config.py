"""Experiment config: the committed files, and every validation error names its problem."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from ab.config import ConfigError, check_models, load_experiment, parse_config

AB_DIR = Path(__file__).resolve().parents[2] / "ab"
PINNED = "20261128T191500Z-a1b2c3"
GOOD = {
    "experiment": {
        "name": "ranker-v2",
        "salt": "ranker-v2-1",
        "variants": [
            {"name": "control", "weight": 50, "model": "current"},
            {"name": "challenger", "weight": 50, "model": PINNED},
        ],
    }
}


def with_changes(**changes) -> dict:
    """GOOD with experiment keys replaced (None deletes the key)."""
    doc = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            del doc["experiment"][key]
        else:
            doc["experiment"][key] = value
    return doc


def variant(name="v", weight=50, model="current") -> dict:
    """One variant mapping."""
    return {"name": name, "weight": weight, "model": model}


def test_committed_default_has_no_experiment():
    assert load_experiment(AB_DIR / "experiment.yml") is None


def test_committed_example_is_a_valid_50_50_experiment():
    exp = load_experiment(AB_DIR / "experiment.example.yml")
    assert exp is not None
    assert [(v.weight, v.model) for v in exp.variants] == [(50, "current"), (50, PINNED)]
    assert exp.control.name == "control"
    assert exp.started_at == datetime(2026, 11, 28, 19, 15)  # naive UTC


@pytest.mark.parametrize("text", ["", "# nothing running\n", "experiment: null\n", "experiment:\n"])
def test_no_experiment(tmp_path, text):
    path = tmp_path / "ab.yml"
    path.write_text(text)
    assert load_experiment(path) is None


def test_missing_file_means_no_experiment(tmp_path):
    assert load_experiment(tmp_path / "absent.yml") is None


def test_valid_config_round_trip(tmp_path):
    path = tmp_path / "ab.yml"
    path.write_text(yaml.safe_dump(GOOD))
    exp = load_experiment(path, available={PINNED})
    assert exp.name == "ranker-v2" and exp.salt == "ranker-v2-1"
    assert exp.bucket_ranges() == {"control": range(0, 5000), "challenger": range(5000, 10_000)}


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ([1, 2], ["mapping", "[1, 2]"]),
        ({"experiment": GOOD["experiment"], "extra": 1}, ["unknown top-level key", "extra"]),
        ({"experiment": "on"}, ["'experiment' must be a mapping", "'on'"]),
        (with_changes(wieght=3), ["unknown key", "wieght"]),
        (with_changes(name=None), ["experiment name", "None"]),
        (with_changes(name="has space"), ["experiment name", "'has space'"]),
        (with_changes(salt=""), ["salt", "non-empty", "''"]),
        (with_changes(salt="   "), ["salt", "'   '"]),
        (with_changes(salt=None), ["salt", "None"]),
        (with_changes(variants=[variant("only", 100)]), ["at least 2 variants"]),
        (with_changes(variants="control"), ["at least 2 variants", "'control'"]),
        (with_changes(variants=[variant("a", 50), "b"]), ["variant #2", "mapping", "'b'"]),
        (
            with_changes(variants=[variant("a", 50), variant("a", 50)]),
            ["duplicate variant name", "'a'"],
        ),
        (
            with_changes(variants=[variant("a", 60), variant("b", 50)]),
            ["sum to 100", "110", "'a': 60"],
        ),
        (with_changes(variants=[variant("a", 0.5), variant("b", 0.5)]), ["sum to 100", "1"]),
        (
            with_changes(variants=[variant("a", 100), variant("b", 0)]),
            ["'b'", "at least 0.01", "0"],
        ),
        (
            with_changes(variants=[variant("a", 150), variant("b", -50)]),
            ["'b'", "at least 0.01", "-50"],
        ),
        (
            with_changes(variants=[variant("a", "50"), variant("b", 50)]),
            ["'a'", "weight", "number", "'50'"],
        ),
        (with_changes(variants=[variant("a", True), variant("b", 50)]), ["'a'", "weight", "True"]),
        (
            with_changes(variants=[variant("a", 50, "latest"), variant("b", 50)]),
            ["'a'", "model", "'latest'"],
        ),
        (
            with_changes(variants=[variant("a", 50, None), variant("b", 50)]),
            ["'a'", "model", "None"],
        ),
        (
            with_changes(
                variants=[{"name": "a", "weight": 50, "model": "current", "x": 1}, variant("b")]
            ),
            ["variant #1", "unknown key", "x"],
        ),
        (with_changes(started_at="yesterday"), ["started_at", "'yesterday'"]),
    ],
)
def test_validation_errors_name_the_problem(doc, needles):
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    for needle in needles:
        assert needle in str(err.value)


def test_unknown_model_version_is_named(tmp_path):
    path = tmp_path / "ab.yml"
    path.write_text(yaml.safe_dump(GOOD))
    with pytest.raises(ConfigError) as err:
        load_experiment(path, available={"20261101T000000Z-000000"})
    message = str(err.value)
    assert str(path) in message and PINNED in message and "'challenger'" in message
    assert "20261101T000000Z-000000" in message  # what is there instead
    check_models(parse_config(GOOD), {PINNED})  # no error when present


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "ab.yml"
    path.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_fractional_weights_cover_every_bucket():
    doc = with_changes(variants=[variant("a", 33.33), variant("b", 33.33), variant("c", 33.34)])
    ranges = parse_config(doc).bucket_ranges()
    assert [len(r) for r in ranges.values()] == [3333, 3333, 3334]
