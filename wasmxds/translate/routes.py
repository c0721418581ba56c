"""Per-host and per-route scoping (:mod:`wasmxds.api.scope`) with Envoy's own route mechanisms.

Envoy 1.40's Wasm filter has no per-route configuration ("The filter ... doesn't
support virtual host or route specific configurations"), so, as Envoy's Wasm
maintainers advise (envoy#26440), each configuration is its own filter instance
and routes choose which one runs with ``envoy.config.route.v3.FilterConfig``:

- A plugin scoped by hosts/routes/path-prefixes goes into the HTTP chain with
  ``disabled: true``; every route in scope enables it with
  ``FilterConfig{config: {}}`` under the plugin's filter name
  (``typed_per_filter_config``; an empty ``config`` is Envoy's "enabled here").
  A request to any other route never enters the filter.
- Each override ``<label>`` is a second ECDS resource and filter entry,
  ``<ns>.<name>~<label>`` (right after the plugin's own, disabled by default),
  whose configuration is ``pluginConfig`` merged with the override's patch. On
  a route the override selects, it is enabled and the plugin's own entry
  disabled, so exactly one of them runs there.
- A route (or virtual host) that already names the filter in its
  ``typed_per_filter_config`` keeps its own entry: the template decides there.

Only routes inside the HttpConnectionManager's own ``route_config`` can be
scoped here; routes served by RDS (or ECDS mode, where the user owns the
routes) need the same entries written by their owner (docs/route-scoping.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2, wrappers_pb2

from wasmxds.api.json import compact_json
from wasmxds.api.scope import PluginScope, ScopeOverride, merge_patch, plugin_scope
from wasmxds.translate.plugins import PluginResources

__all__ = [
    "OVERRIDE_SEPARATOR",
    "base_name",
    "override_name",
    "override_resources",
    "scope_routes",
    "scoped_entries",
]

OVERRIDE_SEPARATOR = "~"
ScopedPlugin = tuple[str, PluginScope]


def override_name(name: str, label: str) -> str:
    """The ECDS resource and filter name of an override (``~`` is not allowed in object names,
    so it cannot collide with a plugin's own ``<ns>.<name>``)."""
    return f"{name}{OVERRIDE_SEPARATOR}{label}"


def base_name(name: str) -> str:
    """The plugin's resource name for an override's name (a plugin's own name unchanged)."""
    return name.partition(OVERRIDE_SEPARATOR)[0]


def scoped_entries(entry: hcm_pb2.HttpFilter, scope: PluginScope) -> list[hcm_pb2.HttpFilter]:
    """The plugin's HTTP filter entry (disabled when scoped) and one per override after it."""
    if not scope.scoped:
        return [entry]
    own = hcm_pb2.HttpFilter()
    own.CopyFrom(entry)
    own.disabled = not scope.selector.everywhere
    entries = [own]
    for override in scope.overrides:
        extra = hcm_pb2.HttpFilter()
        extra.CopyFrom(entry)
        extra.name = override_name(entry.name, override.label)
        extra.disabled = True
        entries.append(extra)
    return entries


def _literal_path(match: route_components_pb2.RouteMatch) -> str | None:
    kind = match.WhichOneof("path_specifier")
    if kind in ("prefix", "path", "path_separated_prefix"):
        return str(getattr(match, kind))
    return None


def _chosen(
    scope: PluginScope, hosts: tuple[bool, ...], route: route_components_pb2.Route
) -> ScopeOverride | bool:
    """The override that runs on ``route``, else whether the plugin's own entry runs.
    ``hosts``: whether the virtual host matches the plugin's selector, then each override's."""
    path = _literal_path(route.match)
    if not (hosts[0] and scope.selector.route_matches(route.name, path)):
        return False
    for override, host_ok in zip(scope.overrides, hosts[1:], strict=True):
        if host_ok and override.selector.route_matches(route.name, path):
            return override
    return True


def _host_matches(scope: PluginScope, domains: tuple[str, ...]) -> tuple[bool, ...]:
    # Once per virtual host, not per route: host patterns are the costly part of matching.
    selectors = (scope.selector, *(override.selector for override in scope.overrides))
    return tuple(selector.host_matches(domains) for selector in selectors)


def _set(route: route_components_pb2.Route, name: str, *, disabled: bool) -> None:
    if name in route.typed_per_filter_config:
        return
    entry = route_components_pb2.FilterConfig(disabled=disabled)
    if not disabled:
        # Envoy enables a disabled-by-default filter only with an empty ``config``; a
        # FilterConfig without one is refused ("Empty route/virtual host per filter ...").
        entry.config.SetInParent()
    route.typed_per_filter_config[name].Pack(entry)


def scope_routes(hcm: hcm_pb2.HttpConnectionManager, plugins: Sequence[ScopedPlugin]) -> None:
    """Enable each scoped plugin (or its override) on the routes in its scope, in place."""
    scoped = [(name, scope) for name, scope in plugins if scope.scoped]
    if not scoped or not hcm.HasField("route_config"):
        return
    for vhost in hcm.route_config.virtual_hosts:
        domains = tuple(vhost.domains)
        hosts = {name: _host_matches(scope, domains) for name, scope in scoped}
        for route in vhost.routes:
            for name, scope in scoped:
                if name in vhost.typed_per_filter_config:
                    continue
                chosen = _chosen(scope, hosts[name], route)
                if isinstance(chosen, ScopeOverride):
                    _set(route, override_name(name, chosen.label), disabled=False)
                    if scope.selector.everywhere:
                        _set(route, name, disabled=True)
                elif chosen and not scope.selector.everywhere:
                    _set(route, name, disabled=False)


def _patched(
    config: extension_pb2.TypedExtensionConfig, name: str, override: ScopeOverride
) -> extension_pb2.TypedExtensionConfig:
    """``config`` renamed to ``name`` with the override's patch merged into its configuration
    (a stand-in is only renamed: it has no configuration)."""
    result = extension_pb2.TypedExtensionConfig()
    result.CopyFrom(config)
    result.name = name
    wasm = http_wasm_pb2.Wasm()
    if not result.typed_config.Unpack(wasm):
        return result
    text = wrappers_pb2.StringValue()
    plugin_config = wasm.config
    current: Any = {}
    if plugin_config.HasField("configuration") and plugin_config.configuration.Unpack(text):
        current = json.loads(text.value) if text.value else {}
    merged = struct_pb2.Struct()
    merged.update(merge_patch(current, dict(override.patch)))
    if merged.fields:
        plugin_config.configuration.Pack(wrappers_pb2.StringValue(value=compact_json(merged)))
    else:
        plugin_config.ClearField("configuration")
    result.typed_config.Pack(wasm)
    return result


def override_resources(source: PluginResources) -> dict[str, PluginResources]:
    """One ECDS resource per override of ``source``'s plugin, by its name."""
    scope = plugin_scope(source.plugin.annotations)
    result: dict[str, PluginResources] = {}
    for override in scope.overrides:
        name = override_name(source.plugin.resource_name, override.label)
        display = source.display
        result[name] = replace(
            source,
            config=_patched(source.config, name, override),
            display=None if display is None else _patched(display, name, override),
        )
    return result
