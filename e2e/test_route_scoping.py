"""Per-host and per-route scoping on a real Envoy: two virtual hosts, two routes each.

``scoped`` (the example header filter) runs on the host ``api.example.com``
only, with a per-scope configuration on its ``/checkout`` route; ``guard`` (a
fail-closed plugin whose module is missing, so its deny-all stand-in is served
under its name) runs on the route ``web-checkout`` only. Envoy's RBAC stats
count every request that enters ``guard``: it must be exactly the requests to
that route.
"""

from __future__ import annotations

import asyncio
import copy
import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import Envoy, running_envoy
from e2e.harness.listeners import (
    cluster_template,
    free_port,
    http_listener_template,
    listeners_bootstrap,
    write_templates,
)
from e2e.harness.modules import ModuleServer
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import running_wasmxds

pytestmark = pytest.mark.envoy

FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
HEADER = "x-scoped"
# (host, path) → (status, x-scoped header or None) when the plugins are in place.
EXPECTED = {
    ("api.example.com", "/checkout/pay"): (200, "strict"),
    ("api.example.com", "/items"): (200, "base"),
    ("shop.example.org", "/checkout/pay"): (403, None),
    ("shop.example.org", "/items"): (200, None),
}
ROUNDS = 5
# The deny-all stand-in's RBAC stats (its stat_prefix is wasm-default-deny).
STANDIN_STATS = r"rbac\.wasm-default-deny\.(denied|allowed)$"
STRICT_PATCH = json.dumps({"response_headers": {HEADER: "strict"}})


def plugins_yaml(modules: ModuleServer) -> str:
    config = {"response_headers": {HEADER: "base"}, "config_header": "x-scoped-config"}
    return textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: scoped
          namespace: default
          annotations:
            scope.wasmxds.io/hosts: "api.example.com"
            scope.wasmxds.io/override.strict.path-prefixes: "/checkout"
            scope.wasmxds.io/override.strict.config: '{STRICT_PATCH}'
        spec:
          url: {modules.url("header-filter.wasm")}
          pluginConfig: {json.dumps(config)}
        ---
        apiVersion: extensions.istio.io/v1alpha1
        kind: WasmPlugin
        metadata:
          name: guard
          namespace: default
          annotations:
            scope.wasmxds.io/routes: "web-checkout"
        spec:
          url: {modules.url("missing.wasm")}
          phase: AUTHZ
        """
    )


def route_config(cluster: str = "upstream") -> dict[str, Any]:
    def route(name: str, prefix: str) -> dict[str, Any]:
        return {"name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster}}

    return {
        "virtual_hosts": [
            {
                "name": "api",
                "domains": ["api.example.com"],
                "routes": [route("checkout", "/checkout"), route("catalog", "/")],
            },
            {
                "name": "web",
                "domains": ["*"],
                "routes": [route("web-checkout", "/checkout"), route("web-root", "/")],
            },
        ]
    }


def enable(*, disabled: bool = False) -> dict[str, Any]:
    # Envoy enables a filter on a route only with an empty ``config`` (not an empty FilterConfig).
    return (
        {"@type": FILTER_CONFIG, "disabled": True}
        if disabled
        else {"@type": FILTER_CONFIG, "config": {}}
    )


def user_route_config() -> dict[str, Any]:
    """What an ECDS-mode user writes (docs/route-scoping.md): the same entries wasmxds writes."""
    routes = route_config()
    api, web = routes["virtual_hosts"]
    api["typed_per_filter_config"] = {"default.scoped": enable()}
    api["routes"][0]["typed_per_filter_config"] = {
        "default.scoped": enable(disabled=True),
        "default.scoped~strict": enable(),
    }
    web["routes"][0]["typed_per_filter_config"] = {"default.guard": enable()}
    return routes


async def requests_as_expected(client: httpx.AsyncClient, port: int) -> str:
    """'' when every (host, path) answers as EXPECTED, else what differed."""
    for (host, path), (status, value) in EXPECTED.items():
        try:
            response = await client.get(f"http://127.0.0.1:{port}{path}", headers={"host": host})
        except httpx.HTTPError as exc:
            return f"{host}{path}: {exc!r}"
        if response.status_code != status or response.headers.get(HEADER) != value:
            return f"{host}{path}: {response.status_code} {response.headers.get(HEADER)!r}"
    return ""


async def check_scoping(envoy: Envoy, port: int, logs: str) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        last = "not tried"
        try:
            async with asyncio.timeout(20):
                while last := await requests_as_expected(client, port):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"scoping not in place: {last}\n{logs}\n{envoy.log_text()[-3000:]}"
            ) from None
        before = await envoy.stats(STANDIN_STATS)
        for _ in range(ROUNDS):
            assert await requests_as_expected(client, port) == ""
        after = await envoy.stats(STANDIN_STATS)
        # The configuration the override instance received: pluginConfig with the patch merged.
        response = await client.get(
            f"http://127.0.0.1:{port}/checkout/x", headers={"host": "api.example.com"}
        )
        merged = json.loads(response.headers["x-scoped-config"])
    entered = {name: after[name] - before.get(name, 0) for name in after}
    print(f"RBAC stats over {ROUNDS} rounds of {len(EXPECTED)} requests: {entered}")
    # Only the ROUNDS requests to web-checkout entered guard's filter.
    assert entered == {
        "http.ingress.rbac.wasm-default-deny.denied": ROUNDS,
        "http.ingress.rbac.wasm-default-deny.allowed": 0,
    }
    assert merged == {"response_headers": {HEADER: "strict"}, "config_header": "x-scoped-config"}


@asynccontextmanager
async def control_plane(
    tmp_path: Path, modules: ModuleServer, *args: str
) -> AsyncIterator[tuple[Any, int]]:
    config_dir = tmp_path / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "plugins.yaml").write_text(plugins_yaml(modules))
    extra = ("--fetch-retry-max", "500ms", *args)
    async with running_wasmxds([config_dir], tmp_path / "cache", extra_args=extra) as wasmxds:
        yield wasmxds, await wasmxds.port_of("xds.listening")


async def test_listener_mode_scopes_plugins_to_hosts_and_routes(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """In listener mode wasmxds writes the per-route entries: each plugin runs only in scope."""
    port = free_port()
    listener = http_listener_template("ingress", port)
    hcm = listener["spec"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "ingress"
    hcm["route_config"] = route_config()
    write_templates(
        tmp_path / "templates",
        listener,
        cluster_template("upstream", upstream.host, upstream.port),
    )
    args = ("--listeners", str(tmp_path / "templates"))
    async with AsyncExitStack() as exits:
        wasmxds, xds_port = await exits.enter_async_context(control_plane(tmp_path, modules, *args))
        bootstrap = listeners_bootstrap(xds_port=xds_port, node_id="scoped-listeners")
        envoy = await exits.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        await envoy.wait_live()
        await check_scoping(envoy, port, wasmxds.log_text()[-3000:])


async def test_ecds_mode_user_routes_scope_plugins(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """In ECDS mode the documented route entries scope the plugins and select the override."""
    async with AsyncExitStack() as exits:
        wasmxds, xds_port = await exits.enter_async_context(control_plane(tmp_path, modules))
        bootstrap = ecds_bootstrap(
            xds_port=xds_port,
            upstream_port=upstream.port,
            filters=("default.guard", "default.scoped", "default.scoped~strict"),
        )
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ]
        for entry in hcm["http_filters"][:-1]:
            entry["disabled"] = True
        hcm["route_config"] = user_route_config()
        envoy = await exits.enter_async_context(
            running_envoy(copy.deepcopy(bootstrap), tmp_path / "envoy")
        )
        await envoy.wait_live()
        port = await envoy.wait_listener_port("ingress")
        await check_scoping(envoy, port, wasmxds.log_text()[-3000:])
