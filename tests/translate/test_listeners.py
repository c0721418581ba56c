"""Listener mode placement: phases around the template's own filters, priorities, match, types."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tests.factories import make_plugin
from wasmxds.api.envoy_types import ensure_types
from wasmxds.api.objects import Origin
from wasmxds.api.templates import Direction, ListenerTemplate, NodeSelector
from wasmxds.translate.listeners import (
    build_listener,
    order_plugins,
    placed_plugin,
    referenced_names,
)

ROOT = "istio-system"
HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
JWT = {"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"}
RBAC = {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}
STATS = {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"}
ROUTER = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
TCP_PROXY = {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "stat_prefix": "tcp",
    "cluster": "upstream",
}
NET_RBAC = {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
    "stat_prefix": "rbac",
}


def http_template(
    *filters: tuple[str, dict[str, Any]],
    direction: Direction = Direction.GATEWAY,
    port: int = 8080,
) -> ListenerTemplate:
    listener: dict[str, Any] = {
        "name": "main",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "hcm",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "main",
                            "http_filters": [
                                {"name": name, "typed_config": config} for name, config in filters
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return _template(listener, direction)


def tcp_template(*filters: tuple[str, dict[str, Any]], port: int = 9000) -> ListenerTemplate:
    listener = {
        "name": "tcp",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": name, "typed_config": config} for name, config in filters]}
        ],
    }
    return _template(listener, Direction.INBOUND)


def _template(listener: dict[str, Any], direction: Direction) -> ListenerTemplate:
    ensure_types(listener)
    proto = json_format.ParseDict(listener, listener_pb2.Listener())
    return ListenerTemplate("t", direction, NodeSelector(), proto, Origin("t.yaml", 1), "x")


def http_filter_names(listener: listener_pb2.Listener) -> list[str]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def build(template: ListenerTemplate, *plugins: Any, node_namespace: str = "default"):
    phases = order_plugins([placed_plugin(p) for p in plugins], node_namespace, ROOT)
    return build_listener(template, phases)


FULL = http_template(("jwt", JWT), ("rbac", RBAC), ("stats", STATS), ("router", ROUTER))


def test_phases_wrap_the_templates_own_filters():
    """AUTHN before jwt_authn, AUTHZ before rbac, STATS then unspecified before stats (istiod)."""
    plugins = [
        make_plugin("u"),
        make_plugin("s", phase="STATS"),
        make_plugin("z", phase="AUTHZ"),
        make_plugin("n", phase="AUTHN"),
    ]
    names = http_filter_names(build(FULL, *plugins))
    assert names == [
        "default.n", "jwt", "default.z", "rbac", "default.s", "default.u", "stats", "router",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("template_filters", "expected"),
    [
        pytest.param(
            [("router", ROUTER)],
            ["default.n", "default.z", "default.s", "default.u", "router"],
            id="no-anchors-all-before-router",
        ),
        pytest.param(
            [("rbac", RBAC), ("router", ROUTER)],
            ["default.n", "default.z", "rbac", "default.s", "default.u", "router"],
            id="authn-takes-authz-position",
        ),
        pytest.param(
            [("rbac", RBAC), ("jwt", JWT), ("router", ROUTER)],
            ["default.n", "default.z", "rbac", "jwt", "default.s", "default.u", "router"],
            id="odd-template-order-keeps-phase-order",
        ),
        pytest.param(
            [("stats", STATS), ("jwt", JWT), ("router", ROUTER)],
            ["default.n", "default.z", "default.s", "default.u", "stats", "jwt", "router"],
            id="anchors-never-cross",
        ),
    ],
)
def test_missing_or_unusual_anchors(template_filters, expected):
    """Each phase falls back to the next phase's position; phases never reorder."""
    plugins = [
        make_plugin("u"),
        make_plugin("s", phase="STATS"),
        make_plugin("z", phase="AUTHZ"),
        make_plugin("n", phase="AUTHN"),
    ]
    assert http_filter_names(build(http_template(*template_filters), *plugins)) == expected


def test_priority_descending_and_unset_last():
    """Within a phase higher priority runs first; an unset priority sorts after negative ones."""
    plugins = [
        make_plugin("unset", phase="AUTHZ"),
        make_plugin("low", phase="AUTHZ", priority=-5),
        make_plugin("high", phase="AUTHZ", priority=10),
        make_plugin("mid", phase="AUTHZ", priority=5),
    ]
    names = http_filter_names(build(http_template(("router", ROUTER)), *plugins))
    assert names == ["default.high", "default.mid", "default.low", "default.unset", "router"]


def test_ties_follow_istio_order():
    """Equal priority: the proxy's namespace before the root namespace, then by name."""
    plugins = [
        make_plugin("b", ROOT, priority=1),
        make_plugin("a", ROOT, priority=1),
        make_plugin("d", "edge", priority=1),
        make_plugin("c", "edge", priority=1),
    ]
    names = http_filter_names(
        build(http_template(("router", ROUTER)), *plugins, node_namespace="edge")
    )
    assert names == ["edge.c", "edge.d", f"{ROOT}.a", f"{ROOT}.b", "router"]


def test_creation_timestamp_breaks_ties_before_name():
    """Older plugins come first among equals (Istio's configCompareByCreationTime)."""
    older = make_plugin("zz", priority=1)
    newer = make_plugin("aa", priority=1)
    object.__setattr__(older, "creation_timestamp", "2020-01-01T00:00:00Z")
    object.__setattr__(newer, "creation_timestamp", "2024-01-01T00:00:00Z")
    names = http_filter_names(build(http_template(("router", ROUTER)), newer, older))
    assert names == ["default.zz", "default.aa", "router"]


@pytest.mark.parametrize(
    ("match", "direction", "port", "applies"),
    [
        pytest.param([], Direction.INBOUND, 80, True, id="no-match-applies"),
        pytest.param([{"mode": "SERVER"}], Direction.INBOUND, 80, True, id="server-inbound"),
        pytest.param([{"mode": "SERVER"}], Direction.GATEWAY, 80, False, id="server-not-gateway"),
        pytest.param([{"mode": "CLIENT"}], Direction.GATEWAY, 80, True, id="client-gateway"),
        pytest.param([{"mode": "CLIENT"}], Direction.OUTBOUND, 80, True, id="client-outbound"),
        pytest.param([{"mode": "CLIENT"}], Direction.INBOUND, 80, False, id="client-not-inbound"),
        pytest.param([{"mode": "CLIENT_AND_SERVER"}], Direction.INBOUND, 80, True, id="both"),
        pytest.param([{"ports": [{"number": 80}]}], Direction.INBOUND, 80, True, id="port-match"),
        pytest.param([{"ports": [{"number": 81}]}], Direction.INBOUND, 80, False, id="port-miss"),
        pytest.param(
            [{"mode": "CLIENT", "ports": [{"number": 80}]}, {"mode": "SERVER"}],
            Direction.INBOUND,
            80,
            True,
            id="any-selector-matches",
        ),
        pytest.param(
            [{"mode": "SERVER", "ports": [{"number": 81}]}],
            Direction.INBOUND,
            80,
            False,
            id="mode-and-port-both-needed",
        ),
    ],
)
def test_match_per_listener(match, direction, port, applies):
    """match.mode and match.ports are evaluated against the listener's direction and port."""
    template = http_template(("router", ROUTER), direction=direction, port=port)
    names = http_filter_names(build(template, make_plugin("p", match=match)))
    assert ("default.p" in names) is applies


def test_network_plugins_go_before_terminal_and_authz():
    """NETWORK plugins: AUTHN/AUTHZ before network rbac, the rest before tcp_proxy."""
    template = tcp_template(("rbac", NET_RBAC), ("tcp", TCP_PROXY))
    plugins = [
        make_plugin("n", type="NETWORK", phase="AUTHZ"),
        make_plugin("u", type="NETWORK"),
        make_plugin("h"),  # an HTTP plugin has nowhere to go on a TCP listener
    ]
    listener = build(template, *plugins)
    assert [f.name for f in listener.filter_chains[0].filters] == [
        "default.n",
        "rbac",
        "default.u",
        "tcp",
    ]


def test_network_plugins_also_precede_the_hcm():
    """On HTTP chains NETWORK plugins are network filters before the HttpConnectionManager."""
    listener = build(http_template(("router", ROUTER)), make_plugin("n", type="NETWORK"))
    assert [f.name for f in listener.filter_chains[0].filters] == ["default.n", "hcm"]


@pytest.mark.parametrize(("strategy", "denies"), [("FAIL_CLOSE", True), ("FAIL_OPEN", False)])
def test_reference_has_ads_source_and_fail_strategy_default(strategy, denies):
    """References use ADS, allow Wasm and RBAC, and default to the fail-strategy stand-in."""
    listener = build(http_template(("router", ROUTER)), make_plugin("p", failStrategy=strategy))
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    discovery = hcm.http_filters[0].config_discovery
    assert discovery.config_source.HasField("ads")
    assert list(discovery.type_urls) == [
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    ]
    rbac = rbac_pb2.RBAC()
    assert discovery.default_config.Unpack(rbac)
    assert rbac.HasField("rules") is denies


def test_template_untouched_and_names_reported():
    """Building never mutates the template; referenced_names lists the inserted references."""
    before = FULL.listener.SerializeToString(deterministic=True)
    listener = build(FULL, make_plugin("a"), make_plugin("b", type="NETWORK"))
    assert FULL.listener.SerializeToString(deterministic=True) == before
    assert referenced_names(listener) == {"default.a", "default.b"}


def test_existing_reference_is_not_duplicated():
    """A template that already names a plugin keeps its own entry for it."""
    template = http_template(("default.p", RBAC), ("router", ROUTER))
    assert http_filter_names(build(template, make_plugin("p"))) == ["default.p", "router"]


def test_no_plugins_leaves_listener_identical():
    """Without applicable plugins the listener is the template, byte for byte."""
    assert build(FULL).SerializeToString(deterministic=True) == FULL.listener.SerializeToString(
        deterministic=True
    )
