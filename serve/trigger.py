"""The serving platform's trigger (serve/README.md, "Replace this when"): models in service with
different needs and release cadences. `make audit` gathers it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ab.config import CURRENT, ConfigError, load_experiment
from registry import open_registry
from registry.store import Registry, RegistryError
from stack.findings import SECTION, Finding, parse_time, plural, shown, verdict

DAYS_PER_MONTH = 30.44


def models_in_service(registry: Registry, ab_config: Path) -> tuple[dict[str, str], list[str]]:
    """`current` plus every version the A/B config pins: version -> where it is referenced, and
    the problems met reading the config."""
    current = registry.current()
    problems: list[str] = []
    in_service: dict[str, str] = {}
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
    return in_service, problems


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


def _shown(where: Path | str) -> str:
    return shown(where) if isinstance(where, Path) else where  # an s3:// URL is shown as it is


def audit_serving(model_dir: Path | str, ab_config: Path, now: datetime) -> Finding:
    """Models in service (current + A/B variants), grouped by resource needs and release cadence."""
    registry = open_registry(model_dir)
    in_service, problems = models_in_service(registry, ab_config)

    def model_type(version: str) -> str | None:
        try:
            return registry.meta(version).model_type
        except RegistryError:  # not in the registry, or not a version id
            return None

    # Release cadence per model family (model_type): promotions in history.csv per month.
    promotions = [(row, parse_time(row.get("at"))) for row in registry.history()
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
        size = registry.artifact_bytes(version)
        cadence = round(per_family.get(family, 0) / months, 1)
        profile = (family, _size_class(size), _cadence_class(cadence))
        profiles.add(profile)
        models.append({"version": version, "where": where, "model_type": family, "artifact_bytes": size,
                       "promotions_per_month": cadence, "profile": list(profile)})

    n = len(profiles)
    listing = "; ".join(f"{a}, {b}, released {c}" for a, b, c in sorted(profiles)) or "nothing deployed"
    how = (f"models in service = `current` plus every version the A/B config ({shown(ab_config)}) pins; "
           f"each is profiled by its model_type (meta.json), artifact size (model.joblib) and its "
           f"family's release cadence (promotions per month in {_shown(registry.history_file)}); "
           f"the value is the number of distinct profiles: {listing}")
    if problems:
        how += ". Problems: " + "; ".join(problems)
    return Finding(
        trigger="serving platform",
        value=n,
        measured=f"{plural(len(models), 'model')}, {plural(n, 'profile')}",
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
