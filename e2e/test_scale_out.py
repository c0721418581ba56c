"""Replicas: one Envoy, two wasmxds behind its xDS cluster; losing one changes nothing."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import running_envoy
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until

pytestmark = pytest.mark.envoy


async def test_envoy_fails_over_to_another_replica(tmp_path, upstream, modules):
    """Kill the replica Envoy uses: it keeps its filter, moves to the other, and follows edits."""
    url = modules.url("header-filter.wasm")
    config = tmp_path / "config"
    config.mkdir()
    plugin = config / "p.yaml"
    plugin.write_text(plugin_yaml("header-filter", url, {"response_headers": {HEADER: "v1"}}))
    async with AsyncExitStack() as stack:
        replicas: list[WasmxdsProcess] = []
        for name in ("a", "b"):
            process = await stack.enter_async_context(
                running_wasmxds([config], tmp_path / f"cache-{name}")
            )
            replicas.append(process)
        ports = [await replica.port_of("xds.listening") for replica in replicas]
        bootstrap = ecds_bootstrap(xds_port=ports[0], upstream_port=upstream.port)
        xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "wasmxds")
        endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoints.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[1]}}
                }
            }
        )
        envoy = await stack.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        await envoy.wait_live()
        port = await envoy.wait_listener_port("ingress")
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))

        async def header(want: str) -> bool:
            return bool((await client.get(f"http://127.0.0.1:{port}/")).headers.get(HEADER) == want)

        await until(lambda: header("v1"), what="filter from the first replica")
        serving = next(
            r for r in replicas if any(e.get("event") == "xds.connected" for e in r.events)
        )
        other = replicas[1 - replicas.index(serving)]
        await serving.stop(signal.SIGKILL)
        for _ in range(5):
            assert await header("v1"), "the filter must survive the replica's death"
        reconnected = await other.wait_event("xds.connected", timeout=40)
        assert reconnected["node"] == "envoy-test"
        plugin.write_text(plugin_yaml("header-filter", url, {"response_headers": {HEADER: "v2"}}))
        await until(lambda: header("v2"), what="edit through the surviving replica")
