"""`python -m registry list | rollback [--to VERSION] [--reason TEXT]` (make rollback)."""

from __future__ import annotations

import argparse
import sys

from registry import open_registry
from registry.store import RegistryError
from stack.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry", description="Inspect the model registry; roll back.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions with their metrics; * marks current")
    rb = sub.add_parser("rollback", help="re-point current (default: the previously deployed version)")
    rb.add_argument("--to", default=None, help="version to deploy")
    rb.add_argument("--reason", default="", help="why (recorded in history.csv)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        registry = open_registry(settings.model_dir, settings.model_cache_dir)
        if args.command == "list":
            current = registry.current()
            for v in registry.versions():
                mark = "*" if v == current else " "
                try:
                    meta = registry.meta(v)
                except RegistryError as exc:
                    print(f"{mark} {v}  unreadable: {exc}")
                    continue
                auc = meta.metrics.get("roc_auc")
                print(f"{mark} {v}  {meta.model_type:9s}  roc_auc={auc if auc is None else f'{auc:.4f}'}")
            if not registry.versions():
                print(f"no model versions in {registry.versions_dir}: run `make train`")
        else:
            before, after = registry.rollback(args.to, args.reason)
            print(f"rollback: current {before} -> {after} (recorded in {registry.history_file})")
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
