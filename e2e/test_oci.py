"""OCI modules end to end: registry → wasmxds → ECDS → a real Envoy running the filter."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path

import pytest

from e2e.harness.images import (
    Image,
    OrasPusher,
    artifact_image,
    cncf_image,
    compat_image,
    index_image,
    maistra_image,
)
from e2e.harness.registry import running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import running_wasmxds
from e2e.test_core import HEADER, plugin_yaml, stack

pytestmark = pytest.mark.envoy

USER, PASSWORD = "puller", "e2e-Pa55word"
ARGS = ("--fetch-retry-max", "500ms", "--insecure-registry", "127.0.0.1")


@pytest.fixture(autouse=True)
def _no_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # wasmxds inherits the environment: never let it read the developer's docker config.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def _layouts(wasm: bytes) -> dict[str, Image]:
    return {
        "artifact": artifact_image(wasm),
        "cncf": cncf_image(wasm),
        "oci-compat": compat_image(wasm),
        "docker-compat": compat_image(wasm, docker=True),
        "maistra": maistra_image(wasm),
    }


@pytest.mark.parametrize("layout", ["artifact", "cncf", "oci-compat", "docker-compat", "maistra"])
async def test_envoy_runs_a_module_pulled_in_each_layout(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes, layout: str
) -> None:
    """Each image layout, pushed by oras-py, ends up running in Envoy."""
    async with running_registry(tmp_path / "registry") as registry:
        image = _layouts(header_filter_wasm)[layout]
        await asyncio.to_thread(OrasPusher(registry.host).push, "filters/header", "v1", image)
        url = registry.ref("filters/header")  # no scheme: means oci://, as in Istio
        files = {
            "p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: layout}})
        }
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.headers.get(HEADER) == layout)
            fetched = await s.wasmxds.wait_event("module.fetched")
            assert fetched["layout"] in {
                "wasm-artifact",
                "cncf-wasm",
                "oci-compat",
                "docker-compat",
                "maistra",
            }


async def test_index_with_pinned_digest(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """A multi-platform index pinned by @sha256: is resolved and run."""
    async with running_registry(tmp_path / "registry") as registry:
        child = compat_image(header_filter_wasm)
        index = index_image([(child, "linux", "amd64")])
        await asyncio.to_thread(OrasPusher(registry.host).push_index, "multi", "v1", [child], index)
        url = f"oci://{registry.host}/multi@sha256:{index.digest}"
        files = {"p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "idx"}})}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.headers.get(HEADER) == "idx")


def _secret_yaml(host: str, password: str) -> str:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    return (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        "metadata:\n  name: regcred\n  namespace: default\n"
        f"data:\n  .dockerconfigjson: {base64.b64encode(config.encode()).decode()}\n"
    )


async def test_private_registry_with_pull_secret_from_the_config_dir(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """Without its Secret the plugin is denied (403); adding the Secret file fixes it, live."""
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        pusher = OrasPusher(registry.host, basic=(USER, PASSWORD))
        await asyncio.to_thread(pusher.push, "private", "v1", artifact_image(header_filter_wasm))
        extra = "imagePullSecret: regcred\n"
        config = {"response_headers": {HEADER: "private"}}
        files = {
            "p.yaml": plugin_yaml("header-filter", registry.url("private"), config, extra=extra)
        }
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.status_code == 403)
            event = await s.wasmxds.wait_event("reconcile.standin")
            assert "image pull secret default/regcred not found" in event["error"]
            (s.config_dir / "secret.yaml").write_text(_secret_yaml(registry.host, PASSWORD))
            await s.eventually(lambda r: r.headers.get(HEADER) == "private", timeout=15.0)
            assert PASSWORD not in "\n".join(s.wasmxds.raw)
            assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in "\n".join(
                s.wasmxds.raw
            )


async def test_registry_outage_serves_standin_then_recovers(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """Registry down: the fail-close stand-in (403); registry back: the filter, no YAML change."""
    async with running_registry(tmp_path / "registry") as registry:
        await asyncio.to_thread(
            OrasPusher(registry.host).push, "flaky", "v1", cncf_image(header_filter_wasm)
        )
        await registry.stop()
        config = {"response_headers": {HEADER: "back"}}
        files = {"p.yaml": plugin_yaml("header-filter", registry.url("flaky"), config)}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.status_code == 403, timeout=20.0)
            await registry.start()
            await s.eventually(lambda r: r.headers.get(HEADER) == "back", timeout=20.0)


async def test_restart_with_warm_cache_and_registry_stopped(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """A restarted wasmxds serves the module from its cache index while the registry is down."""
    async with running_registry(tmp_path / "registry") as registry:
        await asyncio.to_thread(
            OrasPusher(registry.host).push, "warm", "v1", maistra_image(header_filter_wasm)
        )
        config = {"response_headers": {HEADER: "warm"}}
        files = {"p.yaml": plugin_yaml("header-filter", registry.url("warm"), config)}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.headers.get(HEADER) == "warm")
            xds_port = await s.wasmxds.port_of("xds.listening")
            await registry.stop()
            assert await s.wasmxds.stop(signal.SIGTERM) == 0
            # New config (a new value) so the restarted server must push, from its cache alone.
            (s.config_dir / "p.yaml").write_text(
                plugin_yaml(
                    "header-filter", registry.url("warm"), {"response_headers": {HEADER: "again"}}
                )
            )
            async with running_wasmxds(
                [s.config_dir], tmp_path / "cache", xds_port=xds_port, extra_args=ARGS
            ) as again:
                s.wasmxds = again
                await s.eventually(lambda r: r.headers.get(HEADER) == "again", timeout=40.0)
                assert not [e for e in again.events if e.get("event") == "module.fetch_failed"]
