"""The imports run one way: entrypoints on top, then the components, then the contracts.

contracts   features (the domain spec and its rules), registry (the model artifact), stack.settings,
            stack.findings (what a trigger measurement returns)
components  train, serve, monitoring, ab, experiments, loadtest, deploy
entrypoints every `__main__`, the demos and benchmarks, stack.audit, stack.local

A module may import its own layer or a lower one, never a higher one, and serve imports nothing
from train. Function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {"features", "registry", "stack.settings", "stack.findings"}
COMPONENTS = {"train", "serve", "monitoring", "ab", "experiments", "loadtest", "deploy"}
ENTRYPOINTS = {"stack.audit", "stack.local", "ab.demo", "serve.bench", "serve.peers", "loadtest.locustfile"}
PACKAGES = ("features", "registry", "stack", *sorted(COMPONENTS))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    """0 contracts, 1 components, 2 entrypoints."""
    if module.split(".")[-1] == "__main__" or module in ENTRYPOINTS:
        return 2
    if module.split(".")[0] in COMPONENTS:
        return 1
    if module in CONTRACTS or module.split(".")[0] in CONTRACTS or module == "stack":
        return 0
    return 2  # stack.audit, stack.local and anything else under stack/


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def resolve(name: str) -> str | None:
    """The project module `name` refers to (a `from x import y` may name a function)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        base = ROOT.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return candidate
        parts.pop()
    return None


SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                 if "test_" not in p.name)


def violations() -> list[str]:
    out = []
    for path in SOURCES:
        importer = module_name(path)
        for name in sorted(imports(path)):
            target = resolve(name)
            if target is None or target == importer or target.startswith(importer + "."):
                continue
            if layer(target) > layer(importer):
                out.append(f"{importer} (layer {layer(importer)}) imports {target} (layer {layer(target)})")
            if importer.split(".")[0] == "serve" and target.split(".")[0] == "train":
                out.append(f"{importer} imports {target}: serve must not depend on training code")
    return sorted(set(out))


def test_imports_run_one_way():
    assert violations() == []


@pytest.mark.parametrize("module, expected", [
    ("features.spec", 0), ("registry.store", 0), ("stack.settings", 0), ("stack.findings", 0), ("serve.app", 1),
    ("train.pipeline", 1), ("train.__main__", 2), ("stack.audit", 2), ("ab.demo", 2),
])
def test_the_layers_are_what_the_docstring_says(module, expected):
    assert layer(module) == expected
