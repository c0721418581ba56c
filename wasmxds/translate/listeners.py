"""Listener mode: put every applicable WasmPlugin into a proxy's listeners, where istiod would.

Placement follows istiod (reference §3) relative to the template's own filters:

- HTTP plugins go into every HttpConnectionManager: AUTHN before the first
  authentication filter (jwt_authn, oauth2, basic_auth), AUTHZ before the first
  ALLOW/DENY rbac, STATS and then unspecified-phase plugins before the first
  stats filter (grpc_stats, istio.stats), else before the router. A CUSTOM
  ext_authz (and the shadow rbac right before it) comes first, as in istiod.
- NETWORK plugins go into every filter chain the same way: AUTHN and AUTHZ
  after a CUSTOM ext_authz and before the ALLOW/DENY rbac, STATS and
  unspecified before ``istio.stats``, all before the terminal filter.
- A phase whose anchor filter is missing takes the next phase's position, so
  the phase order holds in any template; a template marks filters of other
  types in ``spec.anchors`` (:mod:`wasmxds.translate.anchors`).
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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND, WasmPlugin
from wasmxds.api.proto import selector_pb2, wasm_pb2
from wasmxds.api.scope import UNSCOPED, PluginScope, plugin_scope
from wasmxds.api.templates import ListenerTemplate
from wasmxds.translate.anchors import http_classes, insert, network_classes
from wasmxds.translate.filters import FilterKind, StandIn, filter_kind, standin_config
from wasmxds.translate.routes import scope_routes, scoped_entries
from wasmxds.translate.typeurls import (
    HTTP_LUA,
    HTTP_RBAC,
    HTTP_WASM,
    NETWORK_RBAC,
    NETWORK_WASM,
    type_url,
)

__all__ = [
    "PlacedPlugin",
    "build_listener",
    "matches_listener",
    "order_plugins",
    "placed_plugin",
]

_HCM = type_url("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
_MIN_INT32 = -(2**31)
# Envoy would wait forever for an ECDS resource without this; after it, the
# plugin's fail-strategy default applies. wasmxds sends the resource at once,
# so the limit only matters when something is badly wrong.
_INITIAL_FETCH_TIMEOUT_SECONDS = 30
_PHASES = (wasm_pb2.AUTHN, wasm_pb2.AUTHZ, wasm_pb2.STATS, wasm_pb2.UNSPECIFIED_PHASE)


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
    scope: PluginScope = UNSCOPED
    """Which hosts/routes it runs on, with per-scope configs (wasmxds.translate.routes)."""
    lua_capable: bool = False
    """A TrafficExtension: its resource may be a Lua filter, so references list that type."""


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
        scope=plugin_scope(plugin.annotations),
        lua_capable=plugin.key.kind == TRAFFIC_EXTENSION_KIND,
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
        if plugin.lua_capable:
            discovery.type_urls.append(HTTP_LUA)
    return entry


def _http_entry(plugin: PlacedPlugin) -> hcm_pb2.HttpFilter:
    reference = _reference(plugin)
    entry = hcm_pb2.HttpFilter(name=reference.name)
    entry.config_discovery.CopyFrom(reference.config_discovery)
    return entry


def _with_http_plugins(
    typed: any_pb2.Any, phases: Sequence[list[PlacedPlugin]], marks: Mapping[str, str]
) -> any_pb2.Any:
    hcm = hcm_pb2.HttpConnectionManager()
    typed.Unpack(hcm)
    existing = list(hcm.http_filters)
    present = {f.name for f in existing}
    # A template that already names a plugin keeps its own entry for it.
    groups = [
        [e for p in phase if p.name not in present for e in scoped_entries(_http_entry(p), p.scope)]
        for phase in phases
    ]
    updated = insert(existing, http_classes(existing, marks), groups)
    del hcm.http_filters[:]
    hcm.http_filters.extend(updated)
    scope_routes(hcm, [(p.name, p.scope) for ps in phases for p in ps if p.name not in present])
    packed = any_pb2.Any()
    packed.Pack(hcm)
    return packed


def _with_plugins(
    chain: listener_components_pb2.FilterChain,
    http: Sequence[list[PlacedPlugin]],
    network: Sequence[list[PlacedPlugin]],
    marks: Mapping[str, str],
) -> None:
    filters = list(chain.filters)
    for network_filter in filters:
        if network_filter.typed_config.type_url == _HCM and any(http):
            network_filter.typed_config.CopyFrom(
                _with_http_plugins(network_filter.typed_config, http, marks)
            )
    if any(network):
        present = {f.name for f in filters}
        groups = [[_reference(p) for p in phase if p.name not in present] for phase in network]
        filters = insert(filters, network_classes(filters, marks), groups)
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
        _with_plugins(chain, http, network, template.anchors)
    if listener.HasField("default_filter_chain"):
        _with_plugins(listener.default_filter_chain, http, network, template.anchors)
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
