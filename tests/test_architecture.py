"""The import graph: layers point down (service → sweeps → gradreg), no module-level import
circles, and the modules that cross processes stay free of torch, Ray and MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gradreg", "sweeps", "service")
FORBIDDEN = {
    # ivon-opt (import ivon) is GPLv3+: a test oracle only, gradreg implements IVON itself.
    "gradreg": ("sweeps", "service", "ray", "mlflow", "optuna", "fastapi", "sqlalchemy", "ivon"),
    "sweeps": ("service", "fastapi", "uvicorn"),
}
LIGHT_MODULES = (
    "gradreg.methods",
    "gradreg.names",
    "gradreg.user_code",  # the API checks an entry point's syntax with it
    "sweeps.records",
    "sweeps.code",  # the API checks a bundle, the service client packs one
    "sweeps.mlflow_ui",
    "service.statuses",
)
HEAVY = ("torch", "ray", "mlflow", "sqlalchemy", "fastapi")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = ast.parse(path.read_text(), str(path))
    return found


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's `_EXPORTS = {name: module}`: what `from package import name` loads."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return {k: v for k, v in value.items() if v is not None}
    return {}


def import_time_edges(name: str, tree: ast.Module, known: dict[str, ast.Module]) -> set[str]:
    """Modules ``name`` imports when it is imported (not in functions or TYPE_CHECKING)."""
    edges: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            exports = lazy_exports(known[node.module]) if node.module in known else {}
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    edges.add(submodule)
                else:
                    edges.add(exports.get(alias.name, node.module))
    return edges


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: import_time_edges(name, tree, known) for name, tree in known.items()}


def every_import(tree: ast.Module) -> set[str]:
    """Every module ``tree`` may import, in functions too: a lazy import is still a layer's."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_layers_point_down():
    bad = [
        f"{module} imports {target}"
        for module, tree in modules().items()
        for target in every_import(tree)
        for forbidden in FORBIDDEN.get(module.split(".")[0], ())
        if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert bad == []


def test_no_module_level_import_circles():
    edges = {m: {t for t in ts if t.split(".")[0] in PACKAGES} for m, ts in graph().items()}
    cycles = []
    for start in edges:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt not in seen and nxt in edges:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_the_modules_that_cross_processes_import_nothing_heavy():
    check = (
        f"import sys; import {', '.join(LIGHT_MODULES)}; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"
