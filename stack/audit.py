"""`make audit`: is it time to add complexity? Each trigger of the seed, measured on this project.

    python -m stack.audit [--json] [--model-dir DIR] [--runs CSV] [--compose YML] [--ab-config YML]
                          [--owners FILE] [--consumers FILE] [--pipeline PY] [--database-url URL]
                          [--skip-parity]

For each component the seed may outgrow, its trigger module (serve/trigger.py, features/,
train/, experiments/, deploy/trigger.py) counts the thing its README's "Replace this when"
section names, compares it with the threshold and says: "not yet", "watch" (at 70% of the
threshold or more) or "now", with the first migration step; this command gathers and prints
them. It is advice: the exit status is 0 whatever the verdicts, and 2 only for bad arguments or
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import yaml

from deploy.trigger import audit_kubernetes
from experiments.trigger import audit_experiments
from features.trigger import Parity, audit_feature_store, parity_check
from registry import open_registry, parse_model_dir
from serve.trigger import audit_serving, models_in_service
from stack.findings import NOW, Finding
from train.trigger import audit_orchestration

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_PIPELINE = ROOT / "train" / "pipeline.py"
DEFAULT_OWNERS = ROOT / "train" / "OWNERS"
DEFAULT_CONSUMERS = ROOT / "features" / "CONSUMERS"


# -- output ----------------------------------------------------------------------------------

def table(findings: Iterable[Finding], width: int = 100) -> str:
    """An aligned text table, then how each value was measured and the next step."""
    findings = list(findings)
    header = ["trigger", "measured", "threshold", "verdict", "read"]
    rows = [[f.trigger, f.measured, f.threshold, f.verdict, f.readme] for f in findings]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def render(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [render(header), "  ".join("-" * w for w in widths), *(render(r) for r in rows)]
    for f in findings:
        lines += ["", f"{f.trigger}: {f.verdict}"]
        lines += textwrap.wrap(f"measured: {f.how}.", width, initial_indent="  ",
                               subsequent_indent="    ")
        lines += textwrap.wrap(f"{'now' if f.verdict == NOW else 'when it says now'}: "
                               f"{f.replace_with}. {f.step}", width,
                               initial_indent="  ", subsequent_indent="    ")
    lines += ["", "'watch' = at 70% of a threshold or more. Each README's \"Replace this when\"",
              "section has the whole migration path."]
    return "\n".join(lines)


def audit(model_dir: Path | str, runs: Path, compose: Path, ab_config: Path, pipeline: Path,
          owners: Path, consumers: Path, database_url: str | None,
          progress: Callable[[str], None] | None = None, now: datetime | None = None) -> list[Finding]:
    """Every component's trigger, measured by the component; database_url None skips the parity
    check (skew "unknown")."""
    now = now or datetime.now(UTC)
    parity = (parity_check(database_url, progress=progress) if database_url
              else Parity("unknown", reason="parity check skipped"))
    in_service, _ = models_in_service(open_registry(model_dir), ab_config)  # problems: the serving finding says them
    return [
        audit_serving(model_dir, ab_config, now),
        audit_feature_store(model_dir, in_service, consumers, parity),
        audit_orchestration(owners, pipeline),
        audit_experiments(runs, now),
        audit_kubernetes(compose),
    ]


def _model_dir(value: str) -> Path | str:
    try:
        return parse_model_dir(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    lines = __doc__.splitlines()
    p = argparse.ArgumentParser(prog="python -m stack.audit", description=lines[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(lines[5:]))
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--model-dir", type=_model_dir, help="the registry: a folder or s3://bucket/prefix "
                   "(default: MODEL_DIR)")
    p.add_argument("--runs", type=Path, help="the experiment log (default: EXPERIMENTS_LOG)")
    p.add_argument("--compose", type=Path, help=f"default: {DEFAULT_COMPOSE.relative_to(ROOT)}")
    p.add_argument("--ab-config", type=Path, help="the A/B experiment config (default: AB_CONFIG)")
    p.add_argument("--pipeline", type=Path, help=f"the module whose STEPS are the stages "
                   f"(default: {DEFAULT_PIPELINE.relative_to(ROOT)})")
    p.add_argument("--owners", type=Path, help=f"CODEOWNERS-style step owners (default: "
                   f"{DEFAULT_OWNERS.relative_to(ROOT)}, when present)")
    p.add_argument("--consumers", type=Path, help=f"other models/teams reading features/, one a line "
                   f"(default: {DEFAULT_CONSUMERS.relative_to(ROOT)}, when present)")
    p.add_argument("--database-url", help="for the parity check (default: DATABASE_URL)")
    p.add_argument("--skip-parity", action="store_true", help="do not touch the database (skew: unknown)")
    args = p.parse_args(argv)
    # A path named on the command line must exist: a typo would otherwise read as "nothing yet".
    for option, kind in (("model_dir", "dir"), ("runs", "file"), ("compose", "file"),
                         ("ab_config", "file"), ("pipeline", "file"), ("owners", "file"),
                         ("consumers", "file")):
        path = getattr(args, option)
        if isinstance(path, str):  # an s3:// registry: the registry itself says when it is not there
            continue
        if path is not None and not (path.is_dir() if kind == "dir" else path.is_file()):
            p.error(f"--{option.replace('_', '-')} {path}: no such {'directory' if kind == 'dir' else 'file'}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from stack.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    try:
        findings = audit(
            model_dir=args.model_dir or settings.model_dir,
            runs=args.runs or settings.experiments_log,
            compose=args.compose or DEFAULT_COMPOSE,
            ab_config=args.ab_config or settings.ab_config,
            pipeline=args.pipeline or DEFAULT_PIPELINE,
            owners=args.owners or DEFAULT_OWNERS,
            consumers=args.consumers or DEFAULT_CONSUMERS,
            database_url=None if args.skip_parity else (args.database_url or settings.database_url),
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (OSError, ImportError, yaml.YAMLError, UnicodeDecodeError) as exc:
        print(f"audit: cannot read an input: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2, default=str))
    else:
        print(f"make audit: is it time to add complexity? ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n")
        print(table(findings), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
