"""Workflow orchestration's trigger (train/README.md, "Replace this when"): more than three
interdependent stages owned by different people. `make audit` gathers it.

The stages are the ones the pipeline declares in `STEPS` (train/pipeline.py); the owners come from
a CODEOWNERS-style file (train/OWNERS, when a team writes one).
"""

from __future__ import annotations

import importlib.util
import sys
from fnmatch import fnmatch
from pathlib import Path

from stack.findings import NOT_YET, SECTION, Finding, plural, shown, verdict

PIPELINE = Path(__file__).resolve().with_name("pipeline.py")


def pipeline_steps(path: Path = PIPELINE) -> list[str]:
    """The steps a pipeline module declares in `STEPS` (names, or (name, function) pairs), in order.

    train/pipeline.py is imported as `train.pipeline`; another file (`make audit ARGS="--pipeline
    PY"`) is imported from its path, so it runs like any module of yours. ImportError, naming
    the file, when it does not import.
    """
    if Path(path).resolve() == PIPELINE:
        # imported here, not at the top: it pulls in scikit-learn and LightGBM (seconds)
        from train import pipeline as module
    else:
        spec = importlib.util.spec_from_file_location(f"_audited_pipeline_{Path(path).stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{shown(path)}: not a Python module, so it declares no STEPS")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as `import` does: dataclasses and pickling look it up
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # whatever the file raises, say which file it was
            del sys.modules[spec.name]
            raise ImportError(f"{shown(path)} does not import, so its STEPS cannot be read: "
                              f"{type(exc).__name__}: {exc}") from exc
    declared = getattr(module, "STEPS", ())
    return list(dict.fromkeys(str(v if isinstance(v, str) else v[0]) for v in declared))


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


def audit_orchestration(owners_file: Path, pipeline: Path = PIPELINE) -> Finding:
    """Interdependent training stages (the pipeline's STEPS) and the people who own them."""
    steps = pipeline_steps(pipeline) if Path(pipeline).is_file() else []
    rules = read_owners(owners_file)
    owners = sorted({o for people in rules.values() for o in people})
    by_step = {s: sorted({o for pattern, people in rules.items() if fnmatch(s, pattern) for o in people})
               for s in steps}
    n_owners = len(owners) if owners else 1  # no OWNERS file: one team owns the whole pipeline
    gated = len(steps) > 3
    value = n_owners if gated else 0
    who = (f"{plural(len(owners), 'owner')} in {shown(owners_file)}" if owners
           else f"1 team (no {shown(owners_file)})")
    return Finding(
        trigger="workflow orchestration",
        value=value,
        measured=f"{plural(len(steps), 'stage')}, {plural(n_owners, 'owner')}",
        threshold="> 3 stages owned by 2+ people",
        verdict=verdict(value, 2) if gated else NOT_YET,
        how=(f"stages = the steps {shown(pipeline)} declares in STEPS ({' -> '.join(steps) or 'none declared'}; "
             f"run() chains them, each consumes the one before); owners = {who}"),
        replace_with="Airflow or Dagster",
        step="Make each step of train/pipeline.py a Dagster asset or an Airflow task (they are "
             "plain functions already), with its owner, and replace train/crontab with the "
             "scheduler; keep `python -m train` for laptops.",
        readme="train/README.md" + SECTION,
        details={"stages": steps, "owners": owners, "owners_by_stage": by_step,
                 "owners_file": str(owners_file) if rules else None},
    )
