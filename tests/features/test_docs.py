"""The features README shows the schema as it is."""

from features.schema import markdown_table
from tests.conftest import ROOT


def test_readme_table_is_the_schema():
    assert markdown_table() in (ROOT / "features/README.md").read_text(), (
        "features/README.md is out of date: paste the output of "
        "`python -c 'from features.schema import markdown_table; print(markdown_table())'`")
