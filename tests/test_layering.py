"""The stages import only what comes before them, so the folder list reads as the data flow.

sources → debounce → reconcile → rollout → modules → translate → xds → admin, with cli and
service on top. A stage may use the object model (``api``) and the shared helpers
(``errors``, ``log``, ``backoff``...); what it must not do is reach into a later
stage, or into one it only hands data to.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import wasmxds

PACKAGE = Path(wasmxds.__file__).parent

# (stage, what it must not import, why)
RULES = [
    (
        "wasmxds.sources",
        ("wasmxds.reconcile", "wasmxds.xds", "wasmxds.admin", "wasmxds.translate"),
        "sources only read desired state; what becomes of it is decided later",
    ),
    (
        "wasmxds.debounce",
        ("wasmxds.sources", "wasmxds.reconcile", "wasmxds.xds", "wasmxds.admin"),
        "the debouncer knows nothing of what it debounces",
    ),
    (
        "wasmxds.modules",
        (
            "wasmxds.reconcile",
            "wasmxds.rollout",
            "wasmxds.translate",
            "wasmxds.xds",
            "wasmxds.admin",
        ),
        "the module stage fetches what it is asked for, for whoever asks",
    ),
    (
        "wasmxds.rollout",
        ("wasmxds.sources", "wasmxds.reconcile", "wasmxds.admin", "wasmxds.xds.server"),
        "rollouts decide what reconcile serves; they read streams through a narrow protocol",
    ),
    (
        "wasmxds.translate",
        (
            "wasmxds.xds.server",
            "wasmxds.sources",
            "wasmxds.reconcile",
            "wasmxds.rollout",
            "wasmxds.admin",
        ),
        "translation builds resources from plugins and modules, not from streams",
    ),
    (
        "wasmxds.xds",
        (
            "wasmxds.translate",
            "wasmxds.api",
            "wasmxds.modules",
            "wasmxds.sources",
            "wasmxds.reconcile",
            "wasmxds.rollout",
            "wasmxds.metrics",
        ),
        "the xDS layer serves what translate built (metrics reach it through StreamEvents)",
    ),
    (
        "wasmxds.health",
        (
            "wasmxds.sources",
            "wasmxds.reconcile",
            "wasmxds.modules",
            "wasmxds.translate",
            "wasmxds.admin",
            "wasmxds.metrics",
            "wasmxds.cli",
        ),
        "health reads what proxies report and answers verdicts; acting on them is the rollout's",
    ),
    (
        "wasmxds.xds",
        ("wasmxds.health",),
        "the metrics service is registered on the xDS port from outside (XdsServer.add_service)",
    ),
    (
        "wasmxds.api",
        (
            "wasmxds.sources",
            "wasmxds.reconcile",
            "wasmxds.modules",
            "wasmxds.translate",
            "wasmxds.xds",
            "wasmxds.admin",
        ),
        "the object model is below every stage",
    ),
    (
        "wasmxds.maistra",
        ("wasmxds.api.parse",),
        "the loader dispatches ServiceMeshExtensions here; importing it back is a cycle",
    ),
    (
        "wasmxds.backoff",
        ("wasmxds.",),
        "both the module stage and the Kubernetes source own it",
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every name a module imports, late (in a function) or not, as dotted paths."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(prefix: str) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == prefix or name.startswith(prefix + "."):
            yield path


def _matches(name: str, forbidden: str) -> bool:
    if forbidden.endswith("."):
        return name.startswith(forbidden)
    return name == forbidden or name.startswith(forbidden + ".")


@pytest.mark.parametrize(("stage", "forbidden", "why"), RULES, ids=[rule[0] for rule in RULES])
def test_stage_imports_no_later_stage(stage: str, forbidden: tuple[str, ...], why: str) -> None:
    """A stage imports none of the stages it must not know about."""
    paths = list(_modules(stage))
    assert paths, f"{stage} has no modules: the rule is stale"
    found = {
        f"{_module_name(path)} imports {name}"
        for path in paths
        for name in _imports(path)
        if any(_matches(name, prefix) for prefix in forbidden)
    }
    assert not found, f"{why}: {sorted(found)}"


def test_no_import_cycles() -> None:
    """No wasmxds module reaches itself through its imports, late imports included."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {
        name: {imported for imported in _imports(path) if imported in modules and imported != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for imported in sorted(graph[name]):
            if state.get(imported) == 1:
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_folders_read_as_the_data_flow() -> None:
    """Every stage of the data flow is a folder (or module) of its own at the top of the package."""
    stages = [
        "sources",
        "debounce",
        "reconcile",
        "rollout",
        "modules",
        "translate",
        "xds",
        "admin",
        "cli",
    ]
    missing = [stage for stage in stages if not (PACKAGE / stage / "__init__.py").exists()]
    assert not missing, missing
    assert (PACKAGE / "service.py").exists()
