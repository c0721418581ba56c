"""`wasmxds pull` and `push` with `--credential-helpers`, against a real htpasswd registry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from e2e.harness.images import artifact_image
from e2e.harness.registry import Registry
from e2e.harness.wasmxds import run_cli
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher
from tests.modules.oci.helperscripts import HelperScripts, path_with


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperScripts:
    found = HelperScripts(tmp_path / "bin")
    found.answering("vault", USER, PASSWORD)
    monkeypatch.setenv("PATH", path_with(found.path_entry))
    return found


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth_registry: Registry) -> Path:
    directory = tmp_path / "docker"
    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"credHelpers": {auth_registry.host: "vault"}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory / "config.json"


async def test_pull_runs_the_helper_only_with_the_flag(
    scripts: HelperScripts, docker_config: Path, auth_registry: Registry, tmp_path: Path
) -> None:
    """Without --credential-helpers the pull fails naming it; with it, the helper answers."""
    push = pusher(auth_registry, basic=(USER, PASSWORD)).push
    await asyncio.to_thread(push, "priv", "v1", artifact_image(WASM))
    args = ["pull", auth_registry.url("priv"), "--cache-dir", str(tmp_path / "c")]
    args += ["--insecure-registry", "*"]
    code, out, err = await run_cli(*args)
    assert code == 1
    assert "--credential-helpers vault" in err
    assert scripts.calls("vault") == []
    code, out, err = await run_cli(*args, "--credential-helpers", "vault")
    assert code == 0, err
    assert scripts.calls("vault") == [auth_registry.host]
    assert PASSWORD not in out + err


async def test_push_runs_the_helper_with_the_flag(
    scripts: HelperScripts, docker_config: Path, auth_registry: Registry, tmp_path: Path
) -> None:
    """push takes the same flag and pushes with the helper's credentials."""
    wasm_file = tmp_path / "filter.wasm"
    wasm_file.write_bytes(WASM)
    code, out, err = await run_cli(
        "push",
        str(wasm_file),
        auth_registry.url("pushed"),
        "--insecure-registry",
        "*",
        "--credential-helpers",
        "*",
    )
    assert code == 0, err
    assert "pushed:" in out
    assert scripts.calls("vault") == [auth_registry.host]


async def test_secret_file_naming_a_helper_is_refused(
    scripts: HelperScripts, auth_registry: Registry, tmp_path: Path
) -> None:
    """A Kubernetes Secret given with --secret never runs its helper, even under '*'."""
    secret = tmp_path / "secret.yaml"
    config = json.dumps({"credHelpers": {auth_registry.host: "vault"}})
    secret.write_text(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata:\n  name: s\n"
        f"stringData:\n  .dockerconfigjson: '{config}'\n"
    )
    code, _, err = await run_cli(
        "pull",
        auth_registry.url("priv"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--secret",
        str(secret),
        "--credential-helpers",
        "*",
    )
    assert code == 1
    assert "never runs a helper named in a Secret" in err
    assert scripts.calls("vault") == []


async def test_secret_in_json_is_read_as_a_secret_not_as_a_docker_config(
    scripts: HelperScripts, auth_registry: Registry, tmp_path: Path
) -> None:
    """A Secret as `kubectl get secret -o json` prints it is read as a Secret (its credentials
    are used), not as the user's own docker config."""
    push = pusher(auth_registry, basic=(USER, PASSWORD)).push
    await asyncio.to_thread(push, "kube-json", "v1", artifact_image(WASM))
    config = {"auths": {auth_registry.host: {"username": USER, "password": PASSWORD}}}
    secret = tmp_path / "secret.json"
    secret.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": "s"},
                "stringData": {".dockerconfigjson": json.dumps(config)},
            }
        )
    )
    code, _, err = await run_cli(
        "pull",
        auth_registry.url("kube-json"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--insecure-registry",
        "*",
        "--secret",
        str(secret),
        "--credential-helpers",
        "*",
    )
    assert code == 0, err
    assert scripts.calls("vault") == []


async def test_helper_name_that_is_a_path_is_a_usage_error(tmp_path: Path) -> None:
    """--credential-helpers refuses names with path separators before anything runs."""
    code, _, err = await run_cli(
        "pull", "oci://127.0.0.1:1/x:v1", "--credential-helpers", "../bin/sh"
    )
    assert code == 2
    assert "--credential-helpers '../bin/sh'" in err


async def test_secret_file_that_is_a_docker_config_may_run_its_helper(
    scripts: HelperScripts, auth_registry: Registry, tmp_path: Path
) -> None:
    """A config.json given with --secret is the user's own: its helper runs with the flag."""
    push = pusher(auth_registry, basic=(USER, PASSWORD)).push
    await asyncio.to_thread(push, "own", "v1", artifact_image(WASM))
    own = tmp_path / "config.json"
    own.write_text(json.dumps({"credHelpers": {auth_registry.host: "vault"}}))
    code, out, err = await run_cli(
        "pull",
        auth_registry.url("own"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--insecure-registry",
        "*",
        "--secret",
        str(own),
        "--credential-helpers",
        "vault",
    )
    assert code == 0, err
    assert scripts.calls("vault") == [auth_registry.host]
    assert PASSWORD not in out + err
