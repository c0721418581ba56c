"""Listener mode: put every applicable WasmPlugin into a proxy's listeners, where istiod would.

Placement follows istiod (reference §3) relative to the template's own filters:

- HTTP plugins go into every HttpConnectionManager: AUTHN before the first
  authentication filter (jwt_authn, oauth2, basic_auth), AUTHZ before the first
  authorization filter (rbac, ext_authz), STATS before the first stats filter
  (grpc_stats, istio.stats), and unspecified-phase plugins last, right before
  the router. A phase whose anchor filter is missing takes the next phase's
  position, so the phase order holds in any template.
- NETWORK plugins go into every filter chain, before the terminal filter, with
  AUTHN and AUTHZ before the first network rbac/ext_authz filter.
- Within a phase, higher ``priority`` runs first and an unset priority sorts
  after every set one (Istio uses MinInt32). Ties keep Istio's order: plugins of
  the proxy's namespace before root-namespace ones, then creationTimestamp,
  name and namespace.
- ``match`` is evaluated per listener: the template's direction gives the
  workload mode (INBOUND is SERVER; OUTBOUND and GATEWAY are CLIENT) and the
  listener's port is the port.

Each inserted filter references the plugin's ECDS resource through ADS and
carries the plugin's fail-strategy stand-in as ``default_config``: if the
proxy cannot get or rejects the Wasm filter, it behaves as failStrategy says
(deny-all or allow-all) instead of answering 500 (Istio #38313).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from wasmxds.api.objects import WasmPlugin
from wasmxds.api.proto import selector_pb2, wasm_pb2
from wasmxds.api.templates import ListenerTemplate
from wasmxds.translate.filters import FilterKind, StandIn, filter_kind, standin_config
from wasmxds.translate.typeurls import HTTP_RBAC, HTTP_WASM, NETWORK_RBAC, NETWORK_WASM, type_url

__all__ = [
    "PlacedPlugin",
    "build_listener",
    "matches_listener",
    "order_plugins",
    "placed_plugin",
]

_HCM = type_url("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
_ROUTER = type_url("envoy.extensions.filters.http.router.v3.Router")
_HTTP_AUTHN = frozenset(
    type_url(name)
    for name in (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "envoy.extensions.filters.http.oauth2.v3.OAuth2",
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
    )
)
_HTTP_AUTHZ = frozenset(
    type_url(name)
    for name in (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    )
)
_HTTP_STATS = frozenset({type_url("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig")})
_STATS_NAMES = frozenset({"istio.stats", "envoy.filters.http.grpc_stats"})
_NETWORK_AUTHZ = frozenset(
    type_url(name)
    for name in (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
    )
)
_MIN_INT32 = -(2**31)
# Envoy would wait forever for an ECDS resource without this; after it, the
# plugin's fail-strategy default applies. wasmxds sends the resource at once,
# so the limit only matters when something is badly wrong.
_INITIAL_FETCH_TIMEOUT_SECONDS = 30
_PHASES = (wasm_pb2.AUTHN, wasm_pb2.AUTHZ, wasm_pb2.STATS, wasm_pb2.UNSPECIFIED_PHASE)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TrafficMatch:
    mode: int
    ports: frozenset[int]


@dataclass(frozen=True, slots=True)
class PlacedPlugin:
    """What listener building needs to know about one plugin (nothing module-related)."""

    name: str
    namespace: str
    kind: FilterKind
    phase: int
    priority: int | None
    match: tuple[TrafficMatch, ...]
    fail_open: bool
    tie_break: tuple[str, str, str]


def placed_plugin(plugin: WasmPlugin) -> PlacedPlugin:
    spec = plugin.spec
    return PlacedPlugin(
        name=plugin.resource_name,
        namespace=plugin.key.namespace,
        kind=filter_kind(plugin),
        phase=spec.phase,
        priority=spec.priority.value if spec.HasField("priority") else None,
        match=tuple(
            TrafficMatch(selector.mode, frozenset(port.number for port in selector.ports))
            for selector in spec.match
        ),
        fail_open=spec.fail_strategy == wasm_pb2.FAIL_OPEN,
        tie_break=(plugin.creation_timestamp, plugin.key.name, plugin.key.namespace),
    )


def order_plugins(
    plugins: Iterable[PlacedPlugin], node_namespace: str, root_namespace: str
) -> dict[int, list[PlacedPlugin]]:
    """Plugins per phase in execution order (see module docstring)."""
    by_age = sorted(plugins, key=lambda p: p.tie_break)
    # Istio visits the proxy's namespace first, then the root namespace.
    ordered = [p for p in by_age if p.namespace == node_namespace]
    ordered += [p for p in by_age if p.namespace != node_namespace]
    phases: dict[int, list[PlacedPlugin]] = {phase: [] for phase in _PHASES}
    for plugin in ordered:
        phases[plugin.phase].append(plugin)
    for members in phases.values():
        members.sort(key=lambda p: -(p.priority if p.priority is not None else _MIN_INT32))
    return phases


def matches_listener(plugin: PlacedPlugin, *, server: bool, port: int) -> bool:
    """Istio's MatchListener: any selector matching mode and port (none means all)."""
    if not plugin.match:
        return True
    wanted_mode = selector_pb2.SERVER if server else selector_pb2.CLIENT
    for selector in plugin.match:
        mode_ok = selector.mode in (
            selector_pb2.UNDEFINED,
            selector_pb2.CLIENT_AND_SERVER,
            wanted_mode,
        )
        if mode_ok and (not selector.ports or port in selector.ports):
            return True
    return False


def _reference(plugin: PlacedPlugin) -> listener_components_pb2.Filter:
    """The config_discovery entry, built as a network Filter (HttpFilter shares the fields)."""
    standin = StandIn.ALLOW_ALL if plugin.fail_open else StandIn.DENY_ALL
    default = standin_config(plugin.name, plugin.kind, standin).typed_config
    entry = listener_components_pb2.Filter(name=plugin.name)
    discovery = entry.config_discovery
    discovery.config_source.ads.SetInParent()
    discovery.config_source.resource_api_version = 2  # V3
    discovery.config_source.initial_fetch_timeout.seconds = _INITIAL_FETCH_TIMEOUT_SECONDS
    discovery.default_config.CopyFrom(default)
    if plugin.kind is FilterKind.NETWORK:
        discovery.type_urls.extend((NETWORK_WASM, NETWORK_RBAC))
    else:
        discovery.type_urls.extend((HTTP_WASM, HTTP_RBAC))
    return entry


def _anchors(classes: Sequence[str | None]) -> tuple[int, int, int, int]:
    """Insertion index for AUTHN, AUTHZ, STATS and unspecified plugins, in that order.

    Each phase goes before its first anchor filter; a phase without one takes
    the next phase's index, so the four never cross.
    """

    def first(kind: str, limit: int) -> int:
        found = next((i for i, k in enumerate(classes) if k == kind), None)
        return limit if found is None else min(found, limit)

    unspecified = first("terminal", len(classes))
    stats = first("stats", unspecified)
    authz = first("authz", stats)
    return first("authn", authz), authz, stats, unspecified


def _insert(
    existing: Sequence[T], classes: Sequence[str | None], groups: Sequence[list[T]]
) -> list[T]:
    result: list[T] = []
    start = 0
    for anchor, group in zip(_anchors(classes), groups, strict=True):
        result.extend(existing[start:anchor])
        result.extend(group)
        start = anchor
    result.extend(existing[start:])
    return result


def _http_class(http_filter: hcm_pb2.HttpFilter) -> str | None:
    kind = http_filter.typed_config.type_url if http_filter.HasField("typed_config") else ""
    if kind == _ROUTER:
        return "terminal"
    if kind in _HTTP_AUTHN:
        return "authn"
    if kind in _HTTP_AUTHZ:
        return "authz"
    if kind in _HTTP_STATS or http_filter.name in _STATS_NAMES:
        return "stats"
    return None


def _http_entry(plugin: PlacedPlugin) -> hcm_pb2.HttpFilter:
    reference = _reference(plugin)
    entry = hcm_pb2.HttpFilter(name=reference.name)
    entry.config_discovery.CopyFrom(reference.config_discovery)
    return entry


def _with_http_plugins(typed: any_pb2.Any, phases: Sequence[list[PlacedPlugin]]) -> any_pb2.Any:
    hcm = hcm_pb2.HttpConnectionManager()
    typed.Unpack(hcm)
    existing = list(hcm.http_filters)
    present = {f.name for f in existing}
    # A template that already names a plugin keeps its own entry for it.
    groups = [[_http_entry(p) for p in phase if p.name not in present] for phase in phases]
    updated = _insert(existing, [_http_class(f) for f in existing], groups)
    del hcm.http_filters[:]
    hcm.http_filters.extend(updated)
    packed = any_pb2.Any()
    packed.Pack(hcm)
    return packed


def _with_plugins(
    chain: listener_components_pb2.FilterChain,
    http: Sequence[list[PlacedPlugin]],
    network: Sequence[list[PlacedPlugin]],
) -> None:
    filters = list(chain.filters)
    for network_filter in filters:
        if network_filter.typed_config.type_url == _HCM and any(http):
            network_filter.typed_config.CopyFrom(
                _with_http_plugins(network_filter.typed_config, http)
            )
    if any(network):
        classes: list[str | None] = [
            "authz" if f.typed_config.type_url in _NETWORK_AUTHZ else None for f in filters
        ]
        if classes:
            classes[-1] = "terminal"
        present = {f.name for f in filters}
        groups = [[_reference(p) for p in phase if p.name not in present] for phase in network]
        filters = _insert(filters, classes, groups)
    del chain.filters[:]
    chain.filters.extend(filters)


def build_listener(
    template: ListenerTemplate, phases: dict[int, list[PlacedPlugin]]
) -> listener_pb2.Listener:
    """The template's listener with the plugins of ``phases`` that match it inserted."""
    listener = listener_pb2.Listener()
    listener.CopyFrom(template.listener)
    server, port = template.direction.is_server, template.port

    def select(kind: FilterKind) -> list[list[PlacedPlugin]]:
        return [
            [
                p
                for p in phases[phase]
                if p.kind is kind and matches_listener(p, server=server, port=port)
            ]
            for phase in _PHASES
        ]

    http, network = select(FilterKind.HTTP), select(FilterKind.NETWORK)
    if not any(http) and not any(network):
        return listener
    for chain in listener.filter_chains:
        _with_plugins(chain, http, network)
    if listener.HasField("default_filter_chain"):
        _with_plugins(listener.default_filter_chain, http, network)
    return listener


def referenced_names(listener: listener_pb2.Listener) -> frozenset[str]:
    """ECDS names a built listener references (for ordering removals after LDS)."""
    names: set[str] = set()
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.HasField("config_discovery"):
                names.add(network_filter.name)
            if network_filter.typed_config.type_url == _HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                names.update(f.name for f in hcm.http_filters if f.HasField("config_discovery"))
    return frozenset(names)
