"""The feature store's trigger (features/README.md, "Replace this when"): features read by a second
model or team, or train/serve skew. `make audit` gathers it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from features.spec import SPEC
from registry import open_registry
from registry.store import RegistryError
from stack.findings import NOW, SECTION, Finding, plural, shown, verdict

PARITY_SAMPLE = 20


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
    from features.db import DatabaseError, check_connection, first_line, make_engine, redact

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
        return Parity("unknown", reason=first_line(exc))
    finally:
        if engine is not None:
            engine.dispose()
    if result.mismatches:
        result.status = "skew"
    if progress:
        progress(f"audit: {result.checked} {SPEC.entity.name}s compared, {result.mismatches} differ "
                 f"({time.perf_counter() - t0:.1f}s)")
    return result


def listed_names(path: Path) -> list[str]:
    """Non-comment lines of a plain list file (first word of each), e.g. features/CONSUMERS."""
    if not path.is_file():
        return []
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            names.append(words[0])
    return names


def audit_feature_store(model_dir: Path | str, in_service: Iterable[str], consumers_file: Path,
                        parity: Parity) -> Finding:
    """Feature consumers (distinct schemas among the versions in service + declared consumers) and
    train/serve skew. `in_service`: the versions serving traffic (serve.trigger.models_in_service)."""
    registry = open_registry(model_dir)
    fingerprints = set()
    for version in sorted(set(filter(None, in_service))):
        try:
            fingerprints.add(registry.meta(version).schema_fingerprint)
        except RegistryError:  # a pinned version that is not there: the serving trigger says so
            continue
    declared = listed_names(consumers_file)
    consumers = len(fingerprints) + len(declared)

    if parity.status == "unknown":
        skew = f"skew unknown ({parity.reason})"
    else:
        skew = f"{parity.mismatches} of {parity.checked} {SPEC.entity.name}s skewed"
    now = parity.mismatches > 0 or consumers >= 2
    value_verdict = verdict(consumers, 2)
    how = (f"consumers = distinct feature schemas (schema_fingerprint in meta.json) among the "
           f"models in service ({len(fingerprints)}), plus the models or teams listed in "
           f"{shown(consumers_file)} ({len(declared)}: other readers of features/); skew = {SPEC.entity.name}s whose "
           f"online features (features.build.build_online) differ from the training frame's "
           f"(build_training_frame) at the newest as_of, for {PARITY_SAMPLE} sampled {SPEC.entity.name}s")
    if parity.examples:
        how += "; e.g. " + "; ".join(parity.examples[:3])
    return Finding(
        trigger="feature store",
        value=consumers,
        measured=f"{plural(consumers, 'consumer')}, {skew}",
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
