"""The feature list is written once (spec.yml); `python -m features` shows it to people."""

import json
import subprocess
import sys

from features.codec import CODEC
from features.schema import FEATURES
from tests.conftest import ROOT


def _features(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "features", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_the_table_lists_every_feature_of_the_spec():
    table = _features("table")
    for f in FEATURES:
        assert f"| `{f.name}` | {f.kind} |" in table and f.description in table


def test_the_example_request_is_valid_by_the_servers_rules():
    body = json.loads(_features("example"))
    assert CODEC.row(body["features"]) is not None
    batch = json.loads(_features("example", "--batch"))
    assert CODEC.matrix(batch["rows"]) is not None
    columns = json.loads(_features("example", "--columns"))
    assert (CODEC.columns(columns["columns"]) == CODEC.matrix(batch["rows"])).all()


def test_no_readme_copies_the_feature_table():
    readme = (ROOT / "features/README.md").read_text()
    assert "| feature | kind |" not in readme


def test_the_example_key_is_the_specs():
    from features.spec import SPEC

    assert SPEC.entity.parse(_features("key").strip()) == SPEC.entity.parse(SPEC.entity.example)
