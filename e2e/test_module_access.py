"""Module access per namespace, end to end: a private module cached for team-a is not team-b's.

Real ``wasmxds serve`` (with an empty ``DOCKER_CONFIG``: the server itself has
no credentials), a real ``docker-registry`` with htpasswd, and a real Envoy in
each namespace. team-a pulls a private module with its own pull secret; team-b
names the same digest (by ``sha256:`` and by an ``@sha256:`` URL) with no
secret and with a wrong one, and gets the fail-close stand-in and the reason;
team-a keeps its filter; team-b with a secret of its own that can read the
module gets it. A registry team-b controls that serves a copy of team-a's
manifest (no secret in it: anyone who knows the module's digest and size can
write it) but none of its layers gets team-b nothing either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.copycat import running_copycat
from e2e.harness.envoy import running_envoy
from e2e.harness.images import OrasPusher, artifact_image
from e2e.harness.registry import running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml

pytestmark = pytest.mark.envoy

USER, PASSWORD = "team-a-puller", "e2e-Acc3ss-word"
ARGS = ("--fetch-retry-max", "500ms", "--insecure-registry", "127.0.0.1")


@pytest.fixture(autouse=True)
def _empty_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The server has no credentials of its own: plugins without a secret are anonymous.
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


def secret_yaml(namespace: str, name: str, host: str, password: str) -> str:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    return (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"data:\n  .dockerconfigjson: {base64.b64encode(config.encode()).decode()}\n"
    )


class Proxy:
    """One Envoy in one namespace, reached through its listener."""

    def __init__(self, port: int, client: httpx.AsyncClient, name: str) -> None:
        self.port, self.client, self.name = port, client, name

    async def eventually(
        self, check: Callable[[httpx.Response], bool], what: str, timeout: float = 20.0
    ) -> httpx.Response:
        last: httpx.Response | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await self.client.get(f"http://127.0.0.1:{self.port}/anything")
                    if check(last):
                        return last
                    await asyncio.sleep(0.05)
        except TimeoutError:
            shown = f"{last.status_code} {dict(last.headers)}" if last else "none"
            raise AssertionError(f"{self.name}: {what} not seen; last: {shown}") from None


@asynccontextmanager
async def proxy(
    tmp_path: Path, wasmxds: WasmxdsProcess, upstream: EchoUpstream, namespace: str, name: str
) -> AsyncIterator[Proxy]:
    xds_port = await wasmxds.port_of("xds.listening")
    bootstrap = ecds_bootstrap(
        xds_port=xds_port,
        upstream_port=upstream.port,
        filters=(f"{namespace}.{name}",),
        node_id=f"envoy-{namespace}",
        namespace=namespace,
    )
    async with (
        running_envoy(bootstrap, tmp_path / f"envoy-{namespace}") as envoy,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        await envoy.wait_live()
        yield Proxy(await envoy.wait_listener_port("ingress"), client, f"envoy in {namespace}")


async def debug_plugins(wasmxds: WasmxdsProcess) -> dict[str, dict[str, Any]]:
    admin = await wasmxds.port_of("admin.listening")
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{admin}/debug/plugins")
    response.raise_for_status()
    return {entry["resource"]: entry for entry in response.json()}


async def metric(wasmxds: WasmxdsProcess, result: str) -> float:
    admin = await wasmxds.port_of("admin.listening")
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{admin}/metrics")).text
    pattern = rf'^wasmxds_module_fetches_total\{{result="{result}",scheme="oci"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def until_refused(wasmxds: WasmxdsProcess, resources: list[str]) -> dict[str, Any]:
    """Wait until /debug/plugins shows every resource refused; returns the entries."""
    plugins: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(20.0):
            while True:
                plugins = await debug_plugins(wasmxds)
                if all(
                    plugins.get(name, {}).get("module", {}).get("reason") == "module_access_denied"
                    for name in resources
                ):
                    return plugins
                await asyncio.sleep(0.1)
    except TimeoutError:
        states = {
            name: (plugins.get(name, {}).get("module"), plugins.get(name, {}).get("served"))
            for name in resources
        }
        raise AssertionError(f"not refused: {states}") from None


async def test_a_cached_private_digest_is_not_another_namespaces(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """team-b gets nothing from team-a's cached private module until its own secret can read it."""
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        image = artifact_image(header_filter_wasm)
        pusher = OrasPusher(registry.host, basic=(USER, PASSWORD))
        await asyncio.to_thread(pusher.push, "team-a/filter", "v1", image)
        tag = registry.url("team-a/filter")
        pinned = f"oci://{registry.host}/team-a/filter@sha256:{image.digest}"
        config = tmp_path / "config"
        config.mkdir()
        files = {
            "team-a.yaml": plugin_yaml(
                "filter",
                tag,
                {"response_headers": {HEADER: "team-a"}},
                namespace="team-a",
                extra="imagePullSecret: regcred\n",
            )
            + "---\n"
            + secret_yaml("team-a", "regcred", registry.host, PASSWORD),
            "team-b.yaml": "---\n".join(
                [
                    plugin_yaml(
                        "by-sha",
                        tag,
                        {"response_headers": {HEADER: "team-b"}},
                        namespace="team-b",
                        extra=f"sha256: {image.digest}\n",
                    ),
                    plugin_yaml(
                        "by-digest",
                        pinned,
                        {"response_headers": {HEADER: "team-b"}},
                        namespace="team-b",
                    ),
                    plugin_yaml(
                        "wrong-secret",
                        pinned,
                        {"response_headers": {HEADER: "team-b"}},
                        namespace="team-b",
                        extra="imagePullSecret: regcred\n",
                    ),
                    secret_yaml("team-b", "regcred", registry.host, "a-wrong-password"),
                ]
            ),
        }
        # team-a first, so team-b's plugins find its module in the cache.
        (config / "team-a.yaml").write_text(files["team-a.yaml"])
        async with (
            running_wasmxds([config], tmp_path / "cache", extra_args=ARGS) as wasmxds,
            proxy(tmp_path, wasmxds, upstream, "team-a", "filter") as team_a,
        ):
            await team_a.eventually(lambda r: r.headers.get(HEADER) == "team-a", "filter")
            (config / "team-b.yaml").write_text(files["team-b.yaml"])
            refused = ["team-b.by-sha", "team-b.by-digest", "team-b.wrong-secret"]
            plugins = await until_refused(wasmxds, refused)
            async with proxy(tmp_path, wasmxds, upstream, "team-b", "wrong-secret") as team_b:
                # FAIL_CLOSE stand-in: denied, never team-a's module.
                await team_b.eventually(lambda r: r.status_code == 403, "the stand-in")
                await team_a.eventually(lambda r: r.headers.get(HEADER) == "team-a", "kept")
                for name in refused:
                    entry = plugins[name]
                    print(f"{name}: {entry['served']}: {entry['module']['error']}")
                    assert entry["served"] == "stand-in"
                    assert entry["module"]["state"] == "failed"
                    assert "this plugin may not use it" in entry["module"]["error"]
                    assert f"team-a/filter@sha256:{image.digest}" in entry["module"]["error"]
                wrong = plugins["team-b.wrong-secret"]["module"]["error"]
                assert "pull secret team-b/regcred" in wrong
                anonymous = plugins["team-b.by-digest"]["module"]["error"]
                assert "no pull secret" in anonymous
                assert await metric(wasmxds, "module_access_denied") >= 3
                logs = "\n".join(wasmxds.raw)
                assert PASSWORD not in logs
                assert "a-wrong-password" not in logs
                # team-b's own secret that can read the module: now it may use it.
                wrong_secret = secret_yaml("team-b", "regcred", registry.host, "a-wrong-password")
                right_secret = secret_yaml("team-b", "regcred", registry.host, PASSWORD)
                (config / "team-b.yaml").write_text(
                    files["team-b.yaml"].replace(wrong_secret, right_secret)
                )
                await team_b.eventually(
                    lambda r: r.headers.get(HEADER) == "team-b", "team-b's own filter"
                )
                # Those without a secret that can read it still get nothing.
                after = await debug_plugins(wasmxds)
                for name in ("team-b.by-sha", "team-b.by-digest"):
                    assert after[name]["module"]["reason"] == "module_access_denied"
                    assert after[name]["served"] == "stand-in"
                await team_a.eventually(lambda r: r.headers.get(HEADER) == "team-a", "kept")
        blobs = registry.log_text().count("GET /v2/team-a/filter/blobs/")
        print(f"layer downloads from the registry over the whole test: {blobs}")
        assert blobs == 1  # team-b was re-authorised by manifest, never downloaded again


async def until_failed(wasmxds: WasmxdsProcess, resources: list[str]) -> dict[str, Any]:
    """Wait until /debug/plugins shows every resource's module failed; returns the entries."""
    plugins: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(20.0):
            while True:
                plugins = await debug_plugins(wasmxds)
                states = [
                    plugins.get(name, {}).get("module", {}).get("state") for name in resources
                ]
                if all(state == "failed" for state in states):
                    return plugins
                assert "ready" not in states, plugins
                await asyncio.sleep(0.1)
    except TimeoutError:
        shown = {name: plugins.get(name) for name in resources}
        raise AssertionError(f"not failed: {shown}") from None


async def test_a_registry_that_copies_the_manifest_gets_nothing(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """team-b's registry serving team-a's manifest (no layers) gets the stand-in, not the module."""
    module_digest = hashlib.sha256(header_filter_wasm).hexdigest()
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        image = artifact_image(header_filter_wasm)
        pusher = OrasPusher(registry.host, basic=(USER, PASSWORD))
        await asyncio.to_thread(pusher.push, "team-a/filter", "v1", image)
        config = tmp_path / "config"
        config.mkdir()
        (config / "team-a.yaml").write_text(
            plugin_yaml(
                "filter",
                registry.url("team-a/filter"),
                {"response_headers": {HEADER: "team-a"}},
                namespace="team-a",
                extra="imagePullSecret: regcred\n",
            )
            + "---\n"
            + secret_yaml("team-a", "regcred", registry.host, PASSWORD)
        )
        async with (
            running_copycat([image]) as copycat,
            running_wasmxds([config], tmp_path / "cache", extra_args=ARGS) as wasmxds,
            proxy(tmp_path, wasmxds, upstream, "team-a", "filter") as team_a,
        ):
            await team_a.eventually(lambda r: r.headers.get(HEADER) == "team-a", "filter")
            # The module's digest with the copycat's URL, and the copycat's tag alone.
            (config / "team-b.yaml").write_text(
                "---\n".join(
                    [
                        plugin_yaml(
                            "by-module",
                            copycat.url("team-b/filter"),
                            {"response_headers": {HEADER: "team-b"}},
                            namespace="team-b",
                            extra=f"sha256: {module_digest}\n",
                        ),
                        plugin_yaml(
                            "by-tag",
                            copycat.url("team-b/other", "v2"),
                            {"response_headers": {HEADER: "team-b"}},
                            namespace="team-b",
                        ),
                    ]
                )
            )
            names = ["team-b.by-module", "team-b.by-tag"]
            plugins = await until_failed(wasmxds, names)
            async with proxy(tmp_path, wasmxds, upstream, "team-b", "by-module") as team_b:
                await team_b.eventually(lambda r: r.status_code == 403, "the stand-in")
                await team_a.eventually(lambda r: r.headers.get(HEADER) == "team-a", "kept")
            for name in names:
                entry = plugins[name]
                print(f"{name}: {entry['served']}: {entry['module']['error']}")
                assert entry["served"] == "stand-in"
            after = await debug_plugins(wasmxds)
            assert all(after[name]["module"]["state"] != "ready" for name in names)
            # A full pull was asked of the copycat (layers it lacks); team-a's manifest
            # digest, which the server knows, was never handed to it.
            print(f"copycat: {len(copycat.requests)} requests, {copycat.blob_requests} for blobs")
            assert copycat.blob_requests >= 2
            assert not copycat.asked_for(image.digest)
