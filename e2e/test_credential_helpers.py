"""Docker credential helpers under the real ``wasmxds serve``: allowed, not allowed, hanging.

The server's docker config (``$DOCKER_CONFIG/config.json``) names a helper for
a real htpasswd ``docker-registry``; the helper is a small script of ours on
PATH that answers the registry's password. The password must never show up in
the server's log or on its debug pages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.images import OrasPusher, artifact_image
from e2e.harness.modules import ModuleServer
from e2e.harness.registry import Registry, running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml, stack
from e2e.test_listener_mode import until
from tests.modules.oci.helperscripts import HelperScripts, path_with

pytestmark = pytest.mark.envoy

USER, PASSWORD = "puller", "helper-e2e-Pa55word"
ARGS = ("--fetch-retry-max", "500ms", "--insecure-registry", "127.0.0.1")
DEBUG_PAGES = ("/debug/plugins", "/debug/syncz", "/debug/config_dump")


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperScripts:
    # wasmxds inherits the environment: PATH finds our helpers first.
    found = HelperScripts(tmp_path / "bin")
    monkeypatch.setenv("PATH", path_with(found.path_entry))
    return found


def use_docker_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, helpers: dict[str, str]
) -> None:
    directory = tmp_path / "docker-config"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"credHelpers": helpers}))
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


async def private_registry(registry: Registry, wasm: bytes) -> None:
    pusher = OrasPusher(registry.host, basic=(USER, PASSWORD))
    await asyncio.to_thread(pusher.push, "private", "v1", artifact_image(wasm))


async def debug_pages(wasmxds: WasmxdsProcess) -> dict[str, str]:
    admin = await wasmxds.port_of("admin.listening")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=5) as client:
        return {path: (await client.get(path)).text for path in DEBUG_PAGES}


async def plugin_entries(wasmxds: WasmxdsProcess) -> dict[str, dict[str, Any]]:
    admin = await wasmxds.port_of("admin.listening")
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{admin}/debug/plugins")
    response.raise_for_status()
    return {entry["resource"]: entry for entry in response.json()}


def assert_no_password(*texts: str) -> None:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in texts:
        assert PASSWORD not in text
        assert basic not in text


async def test_allowed_helper_credentials_reach_the_registry_and_nowhere_else(
    tmp_path: Path,
    upstream: EchoUpstream,
    header_filter_wasm: bytes,
    scripts: HelperScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --credential-helpers, Envoy runs the private module; the password is in no log
    line and on no debug page, and one helper run served the pull."""
    scripts.answering("vault", USER, PASSWORD)
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        await private_registry(registry, header_filter_wasm)
        use_docker_config(monkeypatch, tmp_path, {registry.host: "vault"})
        config = {"response_headers": {HEADER: "from-helper"}}
        files = {"p.yaml": plugin_yaml("header-filter", registry.url("private"), config)}
        args = (*ARGS, "--credential-helpers", "vault")
        async with stack(tmp_path, upstream, files, wasmxds_args=args) as s:
            await s.eventually(lambda r: r.headers.get(HEADER) == "from-helper", timeout=20.0)
            entry = (await plugin_entries(s.wasmxds))["default.header-filter"]
            assert entry["module"]["state"] == "ready"
            pages = await debug_pages(s.wasmxds)
            assert_no_password(s.wasmxds.log_text(), "\n".join(s.wasmxds.raw), *pages.values())
            run = await s.wasmxds.wait_event("oci.credential_helper")
            assert run["helper"] == "vault"
            assert run["found"] is True
        print(f"helper runs: {len(scripts.calls('vault'))}")
        assert scripts.calls("vault") == [registry.host]


async def test_helper_not_allowed_is_not_run_and_the_failure_names_the_flag(
    tmp_path: Path,
    upstream: EchoUpstream,
    header_filter_wasm: bytes,
    scripts: HelperScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the flag: the fail-close stand-in, and /debug/plugins says which flag to set."""
    scripts.answering("vault", USER, PASSWORD)
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        await private_registry(registry, header_filter_wasm)
        use_docker_config(monkeypatch, tmp_path, {registry.host: "vault"})
        files = {"p.yaml": plugin_yaml("header-filter", registry.url("private"))}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.status_code == 403)

            async def failed() -> dict[str, Any] | None:
                entry = (await plugin_entries(s.wasmxds)).get("default.header-filter")
                return entry if entry and entry["module"]["state"] == "failed" else None

            entry = await until(failed, what="the module fetch failed")
            assert "--credential-helpers vault" in entry["module"]["error"]
            assert entry["module"]["reason"] == "auth_failed"
            assert_no_password("\n".join(s.wasmxds.raw))
        assert scripts.calls("vault") == []


async def test_hanging_helper_fails_only_the_pulls_that_need_it(
    tmp_path: Path,
    modules: ModuleServer,
    header_filter_wasm: bytes,
    scripts: HelperScripts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A helper that never answers fails its registry's plugin (retryable, after the 10 s
    deadline, naming the helper) while a plugin from elsewhere is fetched at once."""
    scripts.hanging("stuck")
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        await private_registry(registry, header_filter_wasm)
        use_docker_config(monkeypatch, tmp_path, {registry.host: "stuck"})
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        (config_dir / "a.yaml").write_text(plugin_yaml("private", registry.url("private")))
        (config_dir / "b.yaml").write_text(plugin_yaml("public", modules.url("header-filter.wasm")))
        args = (*ARGS, "--credential-helpers", "stuck")
        started = time.monotonic()
        async with running_wasmxds([config_dir], tmp_path / "cache", extra_args=args) as wasmxds:

            async def public_ready() -> bool:
                entry = (await plugin_entries(wasmxds)).get("default.public")
                return bool(entry and entry["module"]["state"] == "ready")

            await until(public_ready, what="the plugin that needs no helper is fetched")
            public_after = time.monotonic() - started

            async def private_failed() -> dict[str, Any] | None:
                entry = (await plugin_entries(wasmxds)).get("default.private")
                return entry if entry and entry["module"]["state"] == "failed" else None

            entry = await until(private_failed, timeout=30.0, what="the helper's deadline")
            private_after = time.monotonic() - started
            error = entry["module"]["error"]
            assert "docker-credential-stuck did not answer within 10 s" in error
            assert entry["module"]["reason"] == "credential_helper_failed"
        print(
            f"plugin without a helper ready after {public_after:.2f} s;"
            f" hanging helper reported after {private_after:.2f} s"
        )
        assert public_after < private_after
