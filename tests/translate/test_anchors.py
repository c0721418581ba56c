"""Placement against Istio's own listener tests: the same chains, the same order.

The chains are those istiod builds in istio/istio ``pilot/pkg/networking/core/
gateway_test.go`` ``TestBuildGatewayListenersFilters``, cases "mTLS, RBAC, WASM,
TrafficExtension, and Stats" (network) and "HTTP RBAC, WASM, TrafficExtension,
and Stats" (HTTP), written as templates with Istio's filter names and Envoy
types; the plugins are the same phases and types, as WasmPlugins. Istio-specific
filters with no Envoy type here (metadata exchange, alpn, istio.stats) carry a
stand-in type under Istio's name, which is what placement reads for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.factories import make_plugin
from tests.translate.test_listeners import HCM, ROOT, _template, build, http_filter_names
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.templates import Direction, ListenerTemplate


def typed(name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{name}", **fields}


SHADOW = {"shadow_rules": {"action": "DENY"}, "shadow_rules_stat_prefix": "istio_ext_authz_"}
NET_RBAC = "envoy.extensions.filters.network.rbac.v3.RBAC"
NET_EXT_AUTHZ = typed(
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
    stat_prefix="ext_authz",
    grpc_service={"envoy_grpc": {"cluster_name": "ext-authz"}},
)
HTTP_RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"
HTTP_EXT_AUTHZ = typed(
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    grpc_service={"envoy_grpc": {"cluster_name": "ext-authz"}},
)
# Stand-in types for istio-proxy's own filters (not in upstream Envoy).
NET_PLACEHOLDER = typed(
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit", stat_prefix="x"
)
HTTP_PLACEHOLDER = typed("envoy.extensions.filters.http.header_to_metadata.v3.Config")
TCP_PROXY = typed(
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", stat_prefix="tcp", cluster="up"
)


def chain(*filters: tuple[str, dict[str, Any]], port: int = 100) -> dict[str, Any]:
    return {
        "name": "gw",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": name, "typed_config": config} for name, config in filters]}
        ],
    }


def network_names(listener: listener_pb2.Listener) -> list[str]:
    return [f.name for f in listener.filter_chains[0].filters]


def extensions(kind: str, *phases: tuple[str, str | None]) -> list[WasmPlugin]:
    """One plugin per (name, phase), in the root namespace as in Istio's test."""
    made = []
    for name, phase in phases:
        spec: dict[str, Any] = {"type": kind}
        if phase:
            spec["phase"] = phase
        made.append(make_plugin(name, ROOT, **spec))
    return made


NETWORK_PLUGINS = extensions(
    "NETWORK",
    ("extension-wasm-network-authz", "AUTHZ"),
    ("extension-wasm-network-authn", "AUTHN"),
    ("extension-wasm-network-stats", "STATS"),
    ("extension-wasm-unspecified", None),
)


def test_istio_network_chain_with_custom_authz_and_stats() -> None:
    """gateway_test "mTLS, RBAC, WASM, TrafficExtension, and Stats": STATS and phase-less
    plugins go before istio.stats; AUTHN/AUTHZ after the CUSTOM pair, before ALLOW RBAC."""
    template = _template(
        chain(
            ("istio.metadata_exchange", NET_PLACEHOLDER),
            ("envoy.filters.network.rbac", typed(NET_RBAC, stat_prefix="tcp.", **SHADOW)),
            ("envoy.filters.network.ext_authz", NET_EXT_AUTHZ),
            ("envoy.filters.network.rbac", typed(NET_RBAC, stat_prefix="tcp.", rules={})),
            ("istio.stats", NET_PLACEHOLDER),
            ("envoy.filters.network.tcp_proxy", TCP_PROXY),
        ),
        Direction.GATEWAY,
    )
    assert network_names(build(template, *NETWORK_PLUGINS)) == [
        "istio.metadata_exchange",
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
        f"{ROOT}.extension-wasm-network-authn",
        f"{ROOT}.extension-wasm-network-authz",
        "envoy.filters.network.rbac",
        f"{ROOT}.extension-wasm-network-stats",
        f"{ROOT}.extension-wasm-unspecified",
        "istio.stats",
        "envoy.filters.network.tcp_proxy",
    ]


GRPC_STATS = typed("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig")
HTTP_FILTERS = [
    ("istio.metadata_exchange", HTTP_PLACEHOLDER),
    ("envoy.filters.http.rbac", typed(HTTP_RBAC, **SHADOW)),
    ("envoy.filters.http.ext_authz", HTTP_EXT_AUTHZ),
    ("envoy.filters.http.rbac", typed(HTTP_RBAC, rules={})),
    ("envoy.filters.http.grpc_stats", GRPC_STATS),
    ("istio.alpn", HTTP_PLACEHOLDER),
    ("envoy.filters.http.fault", typed("envoy.extensions.filters.http.fault.v3.HTTPFault")),
    ("envoy.filters.http.cors", typed("envoy.extensions.filters.http.cors.v3.Cors")),
    ("istio.stats", HTTP_PLACEHOLDER),
    ("envoy.filters.http.router", typed("envoy.extensions.filters.http.router.v3.Router")),
]  # fmt: skip


def http_gateway(http_filters: list[tuple[str, dict[str, Any]]]) -> ListenerTemplate:
    hcm = typed(
        HCM.removeprefix("type.googleapis.com/"),
        stat_prefix="gw",
        http_filters=[{"name": n, "typed_config": c} for n, c in http_filters],
    )
    return _template(
        chain(("envoy.filters.network.http_connection_manager", hcm), port=200),
        Direction.GATEWAY,
    )


def test_istio_http_chain_with_custom_authz_and_stats() -> None:
    """gateway_test "HTTP RBAC, WASM, TrafficExtension, and Stats": HTTP AUTHN/AUTHZ after
    the CUSTOM shadow RBAC and ext_authz, before the ALLOW RBAC; STATS before grpc_stats;
    network plugins before the HCM."""
    http_plugins = extensions(
        "HTTP",
        ("extension-wasm-authz", "AUTHZ"),
        ("extension-wasm-authn", "AUTHN"),
        ("extension-wasm-stats", "STATS"),
    )
    network_plugins = [p for p in NETWORK_PLUGINS if p.key.name != "extension-wasm-unspecified"]
    network_plugins += extensions("NETWORK", ("extension-wasm-network-unspecified", None))
    listener = build(http_gateway(HTTP_FILTERS), *http_plugins, *network_plugins)
    assert network_names(listener) == [
        f"{ROOT}.extension-wasm-network-authn",
        f"{ROOT}.extension-wasm-network-authz",
        f"{ROOT}.extension-wasm-network-stats",
        f"{ROOT}.extension-wasm-network-unspecified",
        "envoy.filters.network.http_connection_manager",
    ]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    assert [f.name for f in hcm.http_filters] == [
        "istio.metadata_exchange",
        "envoy.filters.http.rbac",
        "envoy.filters.http.ext_authz",
        f"{ROOT}.extension-wasm-authn",
        f"{ROOT}.extension-wasm-authz",
        "envoy.filters.http.rbac",
        f"{ROOT}.extension-wasm-stats",
        "envoy.filters.http.grpc_stats",
        "istio.alpn",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "istio.stats",
        "envoy.filters.http.router",
    ]


def test_phase_less_http_plugin_follows_stats_plugins() -> None:
    """listener_builder.go appends UNSPECIFIED right after STATS: before grpc_stats, not last."""
    plugins = extensions("HTTP", ("unspecified", None), ("stats", "STATS"))
    names = http_filter_names(build(http_gateway(HTTP_FILTERS), *plugins))
    at = names.index("envoy.filters.http.grpc_stats")
    assert names[at - 2 : at] == [f"{ROOT}.stats", f"{ROOT}.unspecified"]


def test_marked_anchors_place_plugins_around_filters_of_other_types() -> None:
    """spec.anchors gives Lua and Wasm filters the roles their types cannot tell."""
    lua = typed(
        "envoy.extensions.filters.http.lua.v3.Lua",
        default_source_code={"inline_string": "function envoy_on_request(h) end"},
    )
    filters = [
        ("shadow", typed(HTTP_RBAC, **SHADOW)),
        ("lua-ext-check", lua),
        ("lua-login", lua),
        ("policy", typed(HTTP_RBAC, rules={})),
        ("my-stats", typed("envoy.extensions.filters.http.wasm.v3.Wasm")),
        ("envoy.filters.http.router", typed("envoy.extensions.filters.http.router.v3.Router")),
    ]
    plugins = extensions("HTTP", ("n", "AUTHN"), ("z", "AUTHZ"), ("s", "STATS"), ("u", None))
    template = http_gateway(filters)
    assert http_filter_names(build(template, *plugins)) == [
        f"{ROOT}.n", f"{ROOT}.z", "shadow", "lua-ext-check", "lua-login", "policy", "my-stats",
        f"{ROOT}.s", f"{ROOT}.u", "envoy.filters.http.router",
    ]  # fmt: skip
    marks = {"shadow": "custom", "lua-ext-check": "custom", "lua-login": "authn"}
    marked = dataclasses.replace(template, anchors={**marks, "my-stats": "stats"})
    assert http_filter_names(build(marked, *plugins)) == [
        "shadow", "lua-ext-check", f"{ROOT}.n", "lua-login", f"{ROOT}.z", "policy",
        f"{ROOT}.s", f"{ROOT}.u", "my-stats", "envoy.filters.http.router",
    ]  # fmt: skip


def test_an_rbac_not_followed_by_ext_authz_is_an_authz_anchor() -> None:
    """Only the RBAC right before an ext_authz is CUSTOM's shadow; an ext_authz alone is CUSTOM."""
    plugins = extensions("HTTP", ("z", "AUTHZ"))
    filters = [
        ("envoy.filters.http.ext_authz", HTTP_EXT_AUTHZ),
        ("allow", typed(HTTP_RBAC, rules={})),
        ("envoy.filters.http.router", typed("envoy.extensions.filters.http.router.v3.Router")),
    ]
    assert http_filter_names(build(http_gateway(filters), *plugins)) == [
        "envoy.filters.http.ext_authz",
        f"{ROOT}.z",
        "allow",
        "envoy.filters.http.router",
    ]
