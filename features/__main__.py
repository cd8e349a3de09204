"""`python -m features`: what the domain spec says, in forms people paste.

    python -m features example          a POST /predict body (the curl examples use it)
    python -m features example --batch  a POST /predict/batch body
    python -m features example --columns  the same batch as columns
    python -m features key              the spec's example entity key (for /predict/user/{key})
    python -m features table            the feature table (markdown)
"""

from __future__ import annotations

import argparse
import json
import sys

from features.schema import example_features, example_request, markdown_table
from features.spec import SPEC


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m features", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    example = sub.add_parser("example", help="a valid request body built from features/spec.yml")
    example.add_argument("--batch", action="store_true", help="a /predict/batch body of two rows")
    example.add_argument("--columns", action="store_true", help="the same two rows as a columnar batch")
    sub.add_parser("key", help="the example entity key of features/spec.yml")
    sub.add_parser("table", help="the feature table (markdown)")
    args = p.parse_args(argv)
    if args.command == "table":
        print(markdown_table())
    elif args.command == "key":
        print(SPEC.entity.example)
    elif args.columns:
        from features.codec import as_columns  # numpy and pandas: only for this command

        print(json.dumps({"columns": as_columns([example_features(), example_features()])}))
    elif args.batch:
        print(json.dumps({"rows": [example_features(), example_features()]}))
    else:
        print(json.dumps(example_request()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
