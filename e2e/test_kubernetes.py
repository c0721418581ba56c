"""Cluster mode end to end: WasmPlugins through a (fake) Kubernetes API → wasmxds → a real Envoy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import running_envoy
from e2e.harness.wasmxds import run_cli, running_wasmxds
from e2e.test_core import HEADER
from e2e.test_listener_mode import until
from tests.sources.kube.fakeapi import FakeKube, running_fake_kube, wasmplugin

pytestmark = pytest.mark.envoy

NAME = "header-filter"


def header_plugin(url: str, value: str) -> dict[str, Any]:
    return wasmplugin(NAME, url=url, config={"response_headers": {HEADER: value}})


def fetched_on_proxies(fake: FakeKube, proxies: int) -> bool:
    """Whether a status patch said the module is fetched and runs on ``proxies`` proxies."""
    for patch in fake.status_patches:
        status = patch.body.get("status", {})
        ready = status.get("conditions", [{}])[-1]
        if ready.get("reason") == "ModuleFetched" and status.get("proxies") == proxies:
            return True
    return False


async def test_plugin_lifecycle_through_the_api(tmp_path: Path, upstream, modules) -> None:
    """A WasmPlugin created, edited and deleted through the API server reaches Envoy each time."""
    url = modules.url("header-filter.wasm")
    async with running_fake_kube() as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        args = ["--kubernetes", "--kubeconfig", str(kubeconfig), "--write-status"]
        args += ["--fetch-retry-max", "500ms"]
        async with running_wasmxds([], tmp_path / "cache", extra_args=args) as control:
            xds_port = await control.port_of("xds.listening")
            await control.wait_event("kubernetes.synced")
            bootstrap = ecds_bootstrap(xds_port=xds_port, upstream_port=upstream.port)
            async with (
                running_envoy(bootstrap, tmp_path / "envoy") as envoy,
                httpx.AsyncClient(timeout=5) as client,
            ):
                await envoy.wait_live()
                port = await envoy.wait_listener_port("ingress")

                async def header() -> str:
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    assert response.status_code == 200, response.status_code
                    value: str = response.headers.get(HEADER, "<absent>")
                    return value

                async def shows(value: str) -> bool:
                    return await header() == value

                assert await header() == "<absent>"
                started = time.perf_counter()
                fake.apply(header_plugin(url, "created"))
                await until(lambda: shows("created"), what="plugin created")
                created_in = time.perf_counter() - started
                fake.apply(header_plugin(url, "edited"))
                await until(lambda: shows("edited"), what="plugin edited")

                await fake.wait_for(lambda: fetched_on_proxies(fake, 1), timeout=20)
                stored = fake.objects[("wasmplugins", "default", NAME)]
                ready = stored["status"]["conditions"][-1]
                assert ready["type"] == "Ready"
                assert ready["status"] == "True"
                assert ready["observedGeneration"] == stored["metadata"]["generation"] == 2
                patches = {p.content_type for p in fake.status_patches}
                assert patches == {"application/merge-patch+json"}

                fake.delete("WasmPlugin", NAME)
                await until(lambda: shows("<absent>"), what="plugin deleted")
            requests = fake.requests
            assert all(r.authorized for r in requests)
            watches = fake.watch_requests()
            assert watches
            assert all(r.query.get("allowWatchBookmarks") in ("true", "True") for r in watches)
            print(f"created → served by Envoy in {created_in * 1000:.0f} ms")


async def test_refuses_to_start_without_a_source(tmp_path: Path) -> None:
    """`serve` with neither --config-dir nor --kubernetes says what is missing."""
    code, _, err = await run_cli("serve", "--cache-dir", str(tmp_path))
    assert code == 2
    assert "--config-dir" in err
    assert "--kubernetes" in err
