"""`wasmxds pull` and `wasmxds push` as users run them, against a real registry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import pytest

from e2e.harness.images import WASM_LAYER, artifact_image
from e2e.harness.registry import Registry
from e2e.harness.wasmxds import run_cli
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher
from wasmxds.modules.index import INDEX_FILE, ModuleIndex

MODULE_DIGEST = hashlib.sha256(WASM).hexdigest()


@pytest.fixture(autouse=True)
def _no_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def fields(out: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in out.splitlines())
    }


async def test_pull_prints_digest_size_layout_and_fills_the_cache(
    registry: Registry, tmp_path: Path
) -> None:
    """pull prints what it fetched, and the module lands in the cache and its index."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(registry).push, "cli", "v1", image)
    cache = tmp_path / "cache"
    code, out, err = await run_cli(
        "pull", registry.ref("cli"), "--cache-dir", str(cache), "--insecure-registry", registry.host
    )
    assert code == 0, err
    found = fields(out)
    assert found["digest"] == f"sha256:{MODULE_DIGEST}"
    assert found["size"] == str(len(WASM))
    assert found["layout"] == "wasm-artifact"
    assert found["manifest"] == f"sha256:{image.digest}"
    assert Path(found["path"]).read_bytes() == WASM
    index = ModuleIndex.load(cache / INDEX_FILE)
    assert index.manifest_module(image.digest) == MODULE_DIGEST


async def test_pull_failure_exits_nonzero_with_the_error(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """Without credentials the pull fails with a clear error; with --secret it works."""
    await asyncio.to_thread(
        pusher(auth_registry, basic=(USER, PASSWORD)).push, "priv", "v1", artifact_image(WASM)
    )
    args = [
        "pull",
        auth_registry.url("priv"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--insecure-registry",
        "*",
    ]
    code, out, err = await run_cli(*args)
    assert code == 1
    assert out == ""
    assert "requires a username and password" in err
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    secret = tmp_path / "secret.yaml"
    config = json.dumps({"auths": {auth_registry.host: {"auth": auth}}})
    secret.write_text(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nmetadata:\n  name: s\n"
        f"stringData:\n  .dockerconfigjson: '{config}'\n"
    )
    code, out, err = await run_cli(*args, "--secret", str(secret))
    assert code == 0, err
    assert PASSWORD not in out + err


async def test_pull_checks_sha256(registry: Registry, tmp_path: Path) -> None:
    """--sha256 that matches neither digest fails the pull."""
    await asyncio.to_thread(pusher(registry).push, "sum", "v1", artifact_image(WASM))
    code, _, err = await run_cli(
        "pull",
        registry.url("sum"),
        "--sha256",
        "0" * 64,
        "--cache-dir",
        str(tmp_path),
        "--insecure-registry",
        "*",
    )
    assert code == 1
    assert "matches neither" in err


@pytest.mark.parametrize(
    ("layout", "expected"), [("artifact", "wasm-artifact"), ("compat", "oci-compat")]
)
async def test_push_then_pull_round_trip(
    registry: Registry, tmp_path: Path, layout: str, expected: str
) -> None:
    """push packages the module; oras-py sees a proper image; pull gets the same bytes back."""
    wasm_file = tmp_path / "filter.wasm"
    wasm_file.write_bytes(WASM)
    code, out, err = await run_cli(
        "push",
        str(wasm_file),
        registry.url("pushed", layout),
        "--layout",
        layout,
        "--insecure-registry",
        "*",
    )
    assert code == 0, err
    digest = fields(out)["digest"].removeprefix("sha256:")
    oras = pusher(registry)
    manifest = await asyncio.to_thread(oras.manifest, "pushed", layout)
    if layout == "artifact":
        assert manifest["layers"][0]["mediaType"] == WASM_LAYER
        assert len(manifest["layers"]) == 2  # the form Istio requires
        blob = await asyncio.to_thread(
            oras.blob, "pushed", manifest["layers"][0]["digest"].removeprefix("sha256:")
        )
        assert blob == WASM
    code, out, err = await run_cli(
        "pull",
        registry.url("pushed", layout),
        "--cache-dir",
        str(tmp_path / "c"),
        "--insecure-registry",
        "*",
    )
    assert code == 0, err
    pulled = fields(out)
    assert (pulled["digest"], pulled["layout"], pulled["manifest"]) == (
        f"sha256:{MODULE_DIGEST}",
        expected,
        f"sha256:{digest}",
    )
    # Reproducible: pushing the same module again gives the same digest.
    code, again, _ = await run_cli(
        "push",
        str(wasm_file),
        registry.url("pushed", "again"),
        "--layout",
        layout,
        "--insecure-registry",
        "*",
    )
    assert fields(again)["digest"] == f"sha256:{digest}"


async def test_push_refuses_non_wasm(registry: Registry, tmp_path: Path) -> None:
    """Pushing a file that is not Wasm is a usage error before any network traffic."""
    junk = tmp_path / "x.wasm"
    junk.write_bytes(b"hello")
    code, _, err = await run_cli("push", str(junk), registry.url("x"), "--insecure-registry", "*")
    assert code == 2
    assert "not a Wasm module" in err
