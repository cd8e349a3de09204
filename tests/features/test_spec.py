"""features/spec.yml is checked at load: a mistake names its key, and what to do."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from features.spec import SPEC, SPEC_FILE, SQL_DIR, SpecError, load_spec


def write(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(SPEC_FILE.read_text())
    change(raw)
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def first_numeric(raw: dict) -> dict:
    return next(f for f in raw["features"] if f["kind"] == "numeric")


CASES = [
    ("unknown key", lambda r: r.update(windos=[7]), "windos: Extra inputs are not permitted"),
    ("key type", lambda r: r["entity"].update(type="uuid"), "entity.type: Input should be 'string' or 'integer'"),
    ("label rule", lambda r: r["label"].update(positive="count > 1"), "label.positive"),
    ("no range", lambda r: first_numeric(r).pop("range"), "give its valid `range: [low, high]`"),
    ("bad derivation", lambda r: first_numeric(r).update({"from": {"avg": "x"}}), "unknown derivation 'avg'"),
    ("twice", lambda r: r["features"].append(dict(r["features"][0])), "features listed twice"),
    ("window twice", lambda r: r.update(windows=[7, 7]), "lists a window twice"),
    ("data_end", lambda r: r.update(data_end=["ts"]), "must be table.column"),
    ("categorical without values", lambda r: next(f for f in r["features"] if f["kind"] == "categorical").pop("values"),
     "list its `values`"),
    ("missing sql file", lambda r: r.update(sql=[*r["sql"], "nope"]), "sql/nope.sql"),
    ("integer example", lambda r: r["entity"].update(type="integer", example="u1"), "must be an integer"),
]


@pytest.mark.parametrize("name, change, message", CASES, ids=[c[0] for c in CASES])
def test_a_wrong_spec_names_the_key(tmp_path, name, change, message):
    with pytest.raises(SpecError) as refused:
        load_spec(write(tmp_path, change), SQL_DIR)
    assert message in str(refused.value), str(refused.value)
    assert "spec.yml" in str(refused.value)


def test_a_feature_error_says_which_feature(tmp_path):
    def change(raw):
        first_numeric(raw).pop("range")

    with pytest.raises(SpecError, match=r"features\[\d+\] \(\w+\)"):
        load_spec(write(tmp_path, change), SQL_DIR)


def test_the_repo_spec_loads_and_gives_the_window_parameters():
    params = SPEC.window_params(datetime(2026, 1, 31))
    assert params["label_end"] == datetime(2026, 1, 31) + SPEC.label.horizon
    assert {f"since_{d}d" for d in SPEC.windows} | {"as_of", "label_end"} == set(params)


def test_keys_parse_to_their_type():
    from features.spec import Entity

    ints = Entity(name="host", key="host_id", type="integer", table="hosts", example=1)
    assert ints.parse("42") == 42 and ints.parse(42) == 42 and ints.canonical(ints.parse(" 007")) == "7"
    deep: list = []
    for _ in range(5000):  # a JSON body's user_id may be any value: the message quotes it short and shallow
        deep = [deep]
    for bad in ("4x", "1.5", "", True, 2**70, "9" * 30, deep, "x" * 10_000, 1.5):
        with pytest.raises(ValueError, match="integer host id") as refused:
            ints.parse(bad)
        assert len(str(refused.value)) < 200
    text = Entity(name="user", key="user_id", type="string", table="users", example="u1")
    assert text.parse("u1") == "u1" and text.parse(7) == "7"
    for bad in ("", "x" * 65, None, ["u1"]):
        with pytest.raises(ValueError, match="1-64 characters"):
            text.parse(bad)
