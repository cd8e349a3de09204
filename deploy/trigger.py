"""Kubernetes' trigger (deploy/README.md, "Replace this when"): more than 10 services with
different scaling needs in docker-compose.yml. `make audit` gathers it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from stack.findings import NOT_YET, SECTION, Finding, plural, shown, verdict


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
                       NOT_YET, f"there is no {shown(compose_path)} to count services in", "Kubernetes",
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
        measured=f"{plural(len(services), 'service')}, {plural(n, 'scaling profile')}",
        threshold="> 10 services, different scaling",
        verdict=verdict(n, 10, strictly_above=True),
        how=(f"services in {shown(compose_path)}, less one-shot jobs (restart: \"no\": "
             f"{', '.join(jobs) or 'none'}), grouped by deploy.replicas and deploy.resources; "
             f"services that scale alike count once: {listing}"),
        replace_with="Kubernetes",
        step="`kompose convert -f docker-compose.yml` for a first draft, then a Helm chart you "
             "own: serve -> Deployment + HPA, trainer -> CronJob, seed -> Job.",
        readme="deploy/README.md" + SECTION,
        details={"services": sorted(services), "jobs": jobs, "profiles": sorted(groups.values())},
    )
