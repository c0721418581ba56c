"""Istio's HTTP chain with a CUSTOM ext_authz, on a real Envoy: plugins run where istiod puts them.

The template is the chain of istio/istio ``gateway_test.go``
``TestBuildGatewayListenersFilters`` "HTTP RBAC, WASM, TrafficExtension, and
Stats": a CUSTOM action's shadow RBAC and ext_authz, an ALLOW RBAC, grpc_stats
and the router. AUTHN and AUTHZ plugins must land after the ext_authz and before
the ALLOW RBAC (which lets the request through only because the AUTHZ plugin
marked it), STATS and phase-less plugins before grpc_stats. Envoy accepts the
chain, and the upstream sees the plugins' headers in that order.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from e2e.harness.listeners import cluster_template, free_port, http_listener_template
from e2e.harness.modules import ModuleServer
from e2e.harness.upstream import EchoUpstream
from e2e.test_core import upstream_headers
from e2e.test_listener_mode import (
    RBAC_FILTER,
    STATS_FILTER,
    control_plane,
    listener_filter_names,
    order_plugin,
    proxy,
    until,
)

pytestmark = pytest.mark.envoy

SHADOW_RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": {}},
        "shadow_rules_stat_prefix": "istio_ext_authz_",
    },
}
EXT_AUTHZ = {
    "name": "envoy.filters.http.ext_authz",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "ext-authz"}},
        # The authorization server is not running; the chain's order is what is tested.
        "failure_mode_allow": True,
    },
}


async def test_custom_ext_authz_chain_runs_plugins_in_istio_order(
    tmp_path: Path, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """AUTHN/AUTHZ after the CUSTOM pair, before the ALLOW RBAC; STATS/no phase before stats."""
    url = modules.url("header-filter.wasm")
    port = free_port()
    plugins = {
        "plain.yaml": order_plugin("plain", url),
        "stats.yaml": order_plugin("stats", url, extra="phase: STATS\n"),
        "authz.yaml": order_plugin(
            "authz", url, extra="phase: AUTHZ\n",
            config={"request_headers": {"x-order": "authz", "x-authz-mark": "yes"}},
        ),
        "authn.yaml": order_plugin("authn", url, extra="phase: AUTHN\n"),
    }  # fmt: skip
    templates = [
        http_listener_template(
            "main", port, http_filters=[SHADOW_RBAC, EXT_AUTHZ, RBAC_FILTER, STATS_FILTER]
        ),
        cluster_template("upstream", upstream.host, upstream.port),
        cluster_template("ext-authz", "127.0.0.1", free_port()),
    ]
    async with (
        control_plane(tmp_path, plugins, templates) as (wasmxds, _, _),
        AsyncExitStack() as stack,
    ):
        envoy = await stack.enter_async_context(
            proxy(tmp_path, await wasmxds.port_of("xds.listening"), "gw")
        )
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))

        async def ordered() -> httpx.Response | None:
            response = await client.get(f"http://127.0.0.1:{port}/x")
            if response.status_code != 200:
                return None
            return response if len(upstream_headers(response, "x-order")) == 4 else None

        response = await until(ordered, what="all four plugins running", timeout=30)
        assert upstream_headers(response, "x-order") == ["authn", "authz", "stats", "plain"]
        assert await listener_filter_names(envoy, "main") == [
            "envoy.filters.http.rbac", "envoy.filters.http.ext_authz",
            "default.authn", "default.authz", "envoy.filters.http.rbac",
            "default.stats", "default.plain", "envoy.filters.http.grpc_stats",
            "envoy.filters.http.router",
        ]  # fmt: skip
