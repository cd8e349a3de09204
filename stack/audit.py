"""`make audit`: is it time to add complexity? Each trigger of the seed, measured on this project.

    python -m stack.audit [--json] [--model-dir DIR] [--runs CSV] [--compose YML] [--ab-config YML]
                          [--owners FILE] [--consumers FILE] [--pipeline PY] [--database-url URL]
                          [--skip-parity]

For each component the seed may outgrow, this counts the thing its README's "Replace this when"
section names, compares it with the threshold and says: "not yet", "watch" (at 70% of the
threshold or more) or "now", with the first migration step. It is advice: the exit status is
0 whatever the verdicts, and 2 only for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from features.spec import SPEC

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_PIPELINE = ROOT / "train" / "pipeline.py"
DEFAULT_OWNERS = ROOT / "train" / "OWNERS"
DEFAULT_CONSUMERS = ROOT / "features" / "CONSUMERS"

WATCH_FRACTION = 0.7  # "watch" from 70% of a threshold
PARITY_SAMPLE = 20
EXPERIMENT_WINDOW = timedelta(days=30)
DAYS_PER_MONTH = 30.44
SECTION = "#replace-this-when"

NOT_YET, WATCH, NOW = "not yet", "watch", "now"


@dataclass
class Finding:
    """One trigger: what was measured, against which threshold, the verdict and the next step."""

    trigger: str
    value: float | None  # the number compared with the threshold (None: could not measure)
    measured: str  # the value in words
    threshold: str
    verdict: str
    how: str  # what exactly was counted
    replace_with: str
    step: str  # the first migration step when the verdict is "now"
    readme: str  # relative path to the component's "Replace this when" section
    details: dict[str, Any] = field(default_factory=dict)


def verdict(value: float | None, threshold: float, *, strictly_above: bool = False) -> str:
    """'now' at the threshold (or strictly above it), 'watch' from 70% of it, else 'not yet'."""
    if value is None:
        return NOT_YET
    if value > threshold or (value == threshold and not strictly_above):
        return NOW
    return WATCH if value >= WATCH_FRACTION * threshold else NOT_YET


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _parse_time(text: str | None) -> datetime | None:
    """An ISO timestamp as aware UTC (naive values are taken as UTC); None when unparseable."""
    try:
        t = datetime.fromisoformat((text or "").strip())
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# -- serving platform ------------------------------------------------------------------------

def _size_class(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for limit, name in ((1e6, "<1 MB"), (1e7, "1-10 MB"), (1e8, "10-100 MB"), (1e9, "100 MB-1 GB")):
        if size < limit:
            return name
    return ">1 GB"


def _cadence_class(per_month: float) -> str:
    if per_month < 1:
        return "rarely"
    if per_month < 4:
        return "monthly"
    if per_month < 20:
        return "weekly"
    return "daily"


def audit_serving(model_dir: Path, ab_config: Path, now: datetime) -> Finding:
    """Models in service (current + A/B variants), grouped by resource needs and release cadence."""
    from ab.config import CURRENT, ConfigError, load_experiment
    from registry.store import Registry, RegistryError

    registry = Registry(model_dir)
    current = registry.current()
    problems: list[str] = []
    in_service: dict[str, str] = {}  # version -> where it is referenced
    if current:
        in_service[current] = "current"
    try:
        experiment = load_experiment(ab_config)
    except ConfigError as exc:
        experiment = None
        problems.append(f"A/B config unreadable: {exc}")
    for variant in experiment.variants if experiment else ():
        version = current if variant.model == CURRENT else variant.model
        if version:
            in_service.setdefault(version, f"A/B {experiment.name}/{variant.name}")

    def model_type(version: str) -> str | None:
        try:
            return registry.meta(version).model_type
        except RegistryError:  # not in the registry, or not a version id
            return None

    # Release cadence per model family (model_type): promotions in history.csv per month.
    promotions = [(row, _parse_time(row.get("at"))) for row in registry.history()
                  if row.get("action") == "promote"]
    promotions = [(row, t) for row, t in promotions if t is not None]
    months = 1.0
    if promotions:
        months = max(1.0, (now - min(t for _, t in promotions)).total_seconds() / 86400 / DAYS_PER_MONTH)
    per_family: dict[str, int] = {}
    for row, _ in promotions:
        family = model_type(row.get("to_version", "")) or "unknown"
        per_family[family] = per_family.get(family, 0) + 1

    models, profiles = [], set()
    for version, where in in_service.items():
        family = model_type(version)
        if family is None:
            problems.append(f"{version} ({where}) is not in {_shown(registry.versions_dir)}")
            continue
        artifact = registry.versions_dir / version / "model.joblib"
        size = artifact.stat().st_size if artifact.is_file() else None
        cadence = round(per_family.get(family, 0) / months, 1)
        profile = (family, _size_class(size), _cadence_class(cadence))
        profiles.add(profile)
        models.append({"version": version, "where": where, "model_type": family, "artifact_bytes": size,
                       "promotions_per_month": cadence, "profile": list(profile)})

    n = len(profiles)
    listing = "; ".join(f"{a}, {b}, released {c}" for a, b, c in sorted(profiles)) or "nothing deployed"
    how = (f"models in service = `current` plus every version the A/B config ({_shown(ab_config)}) pins; "
           f"each is profiled by its model_type (meta.json), artifact size (model.joblib) and its "
           f"family's release cadence (promotions per month in {_shown(registry.history_file)}); "
           f"the value is the number of distinct profiles: {listing}")
    if problems:
        how += ". Problems: " + "; ".join(problems)
    return Finding(
        trigger="serving platform",
        value=n,
        measured=f"{_plural(len(models), 'model')}, {_plural(n, 'profile')}",
        threshold="3+ models, different needs/cadences",
        verdict=verdict(n, 3),
        how=how,
        replace_with="KServe, BentoML or Ray Serve",
        step="Give each model its own deployment (a KServe InferenceService or a Bento per model) "
             "built from this image; keep the request schema, /ready self-check and metric names.",
        readme="serve/README.md" + SECTION,
        details={"models": models, "distinct_profiles": n, "promotions_per_family": per_family,
                 "history_months": round(months, 2), "problems": problems},
    )


# -- feature store ---------------------------------------------------------------------------

@dataclass
class Parity:
    """Batch (training) features vs online (serving) features for sampled entities."""

    status: str  # "ok" | "skew" | "unknown"
    checked: int = 0
    mismatches: int = 0
    as_of: str | None = None
    examples: list[str] = field(default_factory=list)
    reason: str = ""


def parity_check(database_url: str, sample: int = PARITY_SAMPLE,
                 progress: Callable[[str], None] | None = None) -> Parity:
    """Sample entities and compare build_online with build_training_frame at the newest as_of (features.build.parity).

    "unknown" when there is no reachable database with the app tables.
    """
    # No database file is the common laptop case: say so before importing pandas and SQLAlchemy.
    sqlite = re.match(r"^sqlite(?:\+\w+)?://(?:/([^?]*))?", database_url)
    if sqlite:
        path = sqlite.group(1) or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            return Parity("unknown", reason=f"no database file at {path or ':memory:'} (run `make seed`)")

    from sqlalchemy.exc import SQLAlchemyError

    from features import build
    from features.db import DatabaseError, check_connection, make_engine, redact

    t0 = time.perf_counter()
    engine = None
    try:
        engine = make_engine(database_url, pool_size=1, connect_timeout=3)
        check_connection(engine)
        with engine.connect() as conn:
            build.require_app_tables(conn)
        as_of = build.training_as_of_dates(engine, 1)[0]
        if progress:
            progress(f"audit: parity check on {redact(database_url)} as of {as_of:%Y-%m-%d} "
                     "(--skip-parity skips it) ...")
        checked, mismatches = build.parity(engine, as_of, sample)
        result = Parity("ok", as_of=f"{as_of:%Y-%m-%d}", checked=checked, mismatches=len(mismatches),
                        examples=mismatches[:5])
    except (DatabaseError, build.EmptyDataError, build.FeatureSQLError, SQLAlchemyError, OSError) as exc:
        return Parity("unknown", reason=str(exc).strip().splitlines()[0] if str(exc).strip() else
                      type(exc).__name__)
    finally:
        if engine is not None:
            engine.dispose()
    if result.mismatches:
        result.status = "skew"
    if progress:
        progress(f"audit: {result.checked} {SPEC.entity.name}s compared, {result.mismatches} differ "
                 f"({time.perf_counter() - t0:.1f}s)")
    return result


def _listed_names(path: Path) -> list[str]:
    """Non-comment lines of a plain list file (first word of each), e.g. features/CONSUMERS."""
    if not path.is_file():
        return []
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            names.append(words[0])
    return names


def audit_feature_store(model_dir: Path, ab_config: Path, consumers_file: Path,
                        parity: Parity) -> Finding:
    """Feature consumers (distinct schemas in service + declared consumers) and train/serve skew."""
    from ab.config import CURRENT, ConfigError, load_experiment
    from registry.store import Registry, RegistryError

    registry = Registry(model_dir)
    versions = {registry.current()}
    try:
        experiment = load_experiment(ab_config)
    except ConfigError:
        experiment = None
    for v in experiment.variants if experiment else ():
        versions.add(registry.current() if v.model == CURRENT else v.model)
    fingerprints = set()
    for version in sorted(filter(None, versions)):
        try:
            fingerprints.add(registry.meta(version).schema_fingerprint)
        except RegistryError:  # a pinned version that is not there: the serving trigger says so
            continue
    declared = _listed_names(consumers_file)
    consumers = len(fingerprints) + len(declared)

    if parity.status == "unknown":
        skew = f"skew unknown ({parity.reason})"
    else:
        skew = f"{parity.mismatches} of {parity.checked} {SPEC.entity.name}s skewed"
    now = parity.mismatches > 0 or consumers >= 2
    value_verdict = verdict(consumers, 2)
    how = (f"consumers = distinct feature schemas (schema_fingerprint in meta.json) among the "
           f"models in service ({len(fingerprints)}), plus the models or teams listed in "
           f"{_shown(consumers_file)} ({len(declared)}: other readers of features/); skew = {SPEC.entity.name}s whose "
           f"online features (features.build.build_online) differ from the training frame's "
           f"(build_training_frame) at the newest as_of, for {PARITY_SAMPLE} sampled {SPEC.entity.name}s")
    if parity.examples:
        how += "; e.g. " + "; ".join(parity.examples[:3])
    return Finding(
        trigger="feature store",
        value=consumers,
        measured=f"{_plural(consumers, 'consumer')}, {skew}",
        threshold="shared by 2+ models/teams, or skew",
        verdict=NOW if now else value_verdict,
        how=how,
        replace_with="Feast",
        step="Declare features/sql/*.sql as Feast feature views (offline: the app database; "
             "online: Redis), generate them from features/schema.py, and swap build_online for "
             "get_online_features behind the same function.",
        readme="features/README.md" + SECTION,
        details={"schema_fingerprints": sorted(fingerprints), "declared_consumers": declared,
                 "parity": asdict(parity)},
    )


# -- workflow orchestration ------------------------------------------------------------------

def pipeline_steps(path: Path) -> list[str]:
    """Named steps of run() in train/pipeline.py: a STEPS tuple if there is one, else step("name") calls."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    names: list[str] = []
    if tree is not None:
        calls: list[tuple[int, int, str]] = []
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "STEPS" for t in targets):
                    try:  # names, or (name, function) pairs
                        return [str(v if isinstance(v, str) else v[0]) for v in ast.literal_eval(node.value)]
                    except (ValueError, TypeError, SyntaxError, IndexError):
                        continue
        runs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
        for call in ast.walk(runs[0]) if runs else ():
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "step"
                    and call.args and isinstance(call.args[0], ast.Constant)
                    and isinstance(call.args[0].value, str)):
                calls.append((call.lineno, call.col_offset, call.args[0].value))
        names = [name for *_, name in sorted(calls)]
    if not names:  # not parseable as we expect: fall back to the text
        names = re.findall(r"""\bstep\(\s*["'](\w+)["']""", source)
    return list(dict.fromkeys(names))


def read_owners(path: Path) -> dict[str, list[str]]:
    """CODEOWNERS-style lines `<step, path or glob> <owner> [<owner> ...]`: pattern -> owners."""
    rules: dict[str, list[str]] = {}
    if not path.is_file():
        return rules
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            rules[words[0]] = words[1:]
    return rules


def audit_orchestration(pipeline: Path, owners_file: Path) -> Finding:
    """Interdependent training stages and the people who own them."""
    steps = pipeline_steps(pipeline) if pipeline.is_file() else []
    rules = read_owners(owners_file)
    owners = sorted({o for people in rules.values() for o in people})
    by_step = {s: sorted({o for pattern, people in rules.items() if fnmatch(s, pattern) for o in people})
               for s in steps}
    n_owners = len(owners) if owners else 1  # no OWNERS file: one team owns the whole pipeline
    gated = len(steps) > 3
    value = n_owners if gated else 0
    who = (f"{_plural(len(owners), 'owner')} in {_shown(owners_file)}" if owners
           else f"1 team (no {_shown(owners_file)})")
    return Finding(
        trigger="workflow orchestration",
        value=value,
        measured=f"{_plural(len(steps), 'stage')}, {_plural(n_owners, 'owner')}",
        threshold="> 3 stages owned by 2+ people",
        verdict=verdict(value, 2) if gated else NOT_YET,
        how=(f"stages = the named steps run() chains in {_shown(pipeline)} ({' -> '.join(steps) or 'none found'}; "
             f"each consumes the one before); owners = {who}"),
        replace_with="Airflow or Dagster",
        step="Make each step of train/pipeline.py a Dagster asset or an Airflow task (they are "
             "plain functions already), with its owner, and replace train/crontab with the "
             "scheduler; keep `python -m train` for laptops.",
        readme="train/README.md" + SECTION,
        details={"stages": steps, "owners": owners, "owners_by_stage": by_step,
                 "owners_file": str(owners_file) if rules else None},
    )


# -- experiment tracking ---------------------------------------------------------------------

def audit_experiments(runs_path: Path, now: datetime) -> Finding:
    """Training runs logged in the last 30 days."""
    from experiments.log import read_runs

    rows = read_runs(runs_path)
    since = now - EXPERIMENT_WINDOW
    times = [_parse_time(r.get("started_at")) for r in rows]
    recent = sum(1 for t in times if t is not None and since <= t <= now + timedelta(minutes=5))
    undated = sum(1 for t in times if t is None)
    how = (f"rows of {_shown(runs_path)} (experiments.log.read_runs) with started_at in the last "
           f"{EXPERIMENT_WINDOW.days} days, of {_plural(len(rows), 'run')} in all")
    if undated:
        how += f"; {undated} without a readable started_at were skipped"
    return Finding(
        trigger="experiment tracking",
        value=recent,
        measured=f"{_plural(recent, 'run')} in {EXPERIMENT_WINDOW.days} days",
        threshold="> 20 experiments in 30 days",
        verdict=verdict(recent, 20, strictly_above=True),
        how=how,
        replace_with="MLflow or W&B",
        step="Log each run to MLflow (params, metrics, the version folder as artifacts) next to "
             "experiments.log.append_run in the log step; import runs.csv once as history.",
        readme="experiments/README.md" + SECTION,
        details={"runs_30d": recent, "runs_total": len(rows), "undated": undated},
    )


# -- Kubernetes ------------------------------------------------------------------------------

def scaling_profile(service: dict[str, Any]) -> str:
    """A service's scaling needs: replicas and resources from `deploy` (and the legacy keys)."""
    deploy = service.get("deploy") or {}
    profile = {
        "replicas": deploy.get("replicas", service.get("scale")),
        "resources": deploy.get("resources") or {
            k: service[k] for k in ("cpus", "mem_limit", "mem_reservation") if k in service},
    }
    return json.dumps(profile, sort_keys=True, default=str)


def audit_kubernetes(compose_path: Path) -> Finding:
    """Long-running services in docker-compose.yml, grouped by their scaling needs."""
    if not compose_path.is_file():
        return Finding("Kubernetes", None, "no compose file", "> 10 services, different scaling",
                       NOT_YET, f"there is no {_shown(compose_path)} to count services in", "Kubernetes",
                       "", "deploy/README.md" + SECTION)
    doc = yaml.safe_load(compose_path.read_text(encoding="utf-8")) or {}
    services: dict[str, Any] = doc.get("services") or {}
    jobs = sorted(name for name, s in services.items()
                  if str((s or {}).get("restart", "")).strip().lower() in ("no", "false"))
    long_running = {name: s or {} for name, s in services.items() if name not in jobs}
    groups: dict[str, list[str]] = {}
    for name, service in long_running.items():
        groups.setdefault(scaling_profile(service), []).append(name)
    n = len(groups)
    listing = "; ".join("+".join(sorted(names)) for names in sorted(groups.values()))
    return Finding(
        trigger="Kubernetes",
        value=n,
        measured=f"{_plural(len(services), 'service')}, {_plural(n, 'scaling profile')}",
        threshold="> 10 services, different scaling",
        verdict=verdict(n, 10, strictly_above=True),
        how=(f"services in {_shown(compose_path)}, less one-shot jobs (restart: \"no\": "
             f"{', '.join(jobs) or 'none'}), grouped by deploy.replicas and deploy.resources; "
             f"services that scale alike count once: {listing}"),
        replace_with="Kubernetes",
        step="`kompose convert -f docker-compose.yml` for a first draft, then a Helm chart you "
             "own: serve -> Deployment + HPA, trainer -> CronJob, seed -> Job.",
        readme="deploy/README.md" + SECTION,
        details={"services": sorted(services), "jobs": jobs, "profiles": sorted(groups.values())},
    )


# -- output ----------------------------------------------------------------------------------

def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it, for shorter messages."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


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


def audit(model_dir: Path, runs: Path, compose: Path, ab_config: Path, pipeline: Path,
          owners: Path, consumers: Path, database_url: str | None,
          progress: Callable[[str], None] | None = None, now: datetime | None = None) -> list[Finding]:
    """Every trigger, measured; database_url None skips the parity check (skew "unknown")."""
    now = now or datetime.now(UTC)
    parity = (parity_check(database_url, progress=progress) if database_url
              else Parity("unknown", reason="parity check skipped"))
    return [
        audit_serving(model_dir, ab_config, now),
        audit_feature_store(model_dir, ab_config, consumers, parity),
        audit_orchestration(pipeline, owners),
        audit_experiments(runs, now),
        audit_kubernetes(compose),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    lines = __doc__.splitlines()
    p = argparse.ArgumentParser(prog="python -m stack.audit", description=lines[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(lines[5:]))
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--model-dir", type=Path, help="the registry (default: MODEL_DIR)")
    p.add_argument("--runs", type=Path, help="the experiment log (default: EXPERIMENTS_LOG)")
    p.add_argument("--compose", type=Path, help=f"default: {DEFAULT_COMPOSE.relative_to(ROOT)}")
    p.add_argument("--ab-config", type=Path, help="the A/B experiment config (default: AB_CONFIG)")
    p.add_argument("--pipeline", type=Path, help=f"default: {DEFAULT_PIPELINE.relative_to(ROOT)}")
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
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
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
