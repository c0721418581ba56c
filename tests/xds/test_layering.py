"""The xDS layer serves what the translate stage built; it imports no stage before it."""

from __future__ import annotations

import ast
from pathlib import Path

import wasmxds.xds

XDS = Path(wasmxds.xds.__file__).parent
# Stages before xds (and the metrics backend, reached through StreamEvents).
UPSTREAM = (
    "wasmxds.translate",
    "wasmxds.api",
    "wasmxds.modules",
    "wasmxds.sources",
    "wasmxds.reconcile",
    "wasmxds.metrics",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_xds_imports_no_earlier_stage():
    """No module of wasmxds.xds imports translate, api, modules, sources, reconcile or metrics."""
    found = {
        f"{path.name}: {name}"
        for path in sorted(XDS.glob("*.py"))
        for name in _imports(path)
        if name.startswith(UPSTREAM)
    }
    assert not found, found
