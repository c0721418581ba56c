"""The ECDS resources a WasmPlugin becomes: its Wasm filter, and the RBAC stand-ins.

The Wasm filter mirrors what istiod emits (reference §2.2) after istio-agent
has rewritten the code source to a local file: ``PluginConfig.name`` is
``<ns>.<name>``, ``root_id`` is ``pluginName``, ``configuration`` is a
StringValue holding the compact JSON of ``pluginConfig``, ``failure_policy``
follows ``failStrategy`` and ``vmConfig.env`` becomes ``environment_variables``.

Stand-ins (reference §5.7) keep the same resource name so a listener that
references the plugin keeps working; Envoy accepts them because listeners list
the RBAC type next to the Wasm type in ``type_urls``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2 as envoy_wasm_pb2
from google.protobuf import any_pb2, message, struct_pb2, wrappers_pb2

from wasmxds.api.json import compact_json
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.proto import wasm_pb2

__all__ = [
    "Code",
    "FilterKind",
    "InlineCode",
    "LocalCode",
    "RemoteCode",
    "StandIn",
    "filter_kind",
    "lua_filter_config",
    "standin_config",
    "wasm_filter_config",
]


class FilterKind(enum.Enum):
    """Where a plugin's filter lives: the HTTP filter chain or the network filter chain."""

    HTTP = "http"
    NETWORK = "network"


class StandIn(enum.Enum):
    """RBAC filters served in place of a Wasm filter, and why.

    The value is the stat prefix Envoy reports them under.
    """

    DENY_ALL = "wasm-default-deny"
    """The module is unavailable and the plugin fails closed (FAIL_CLOSE, FAIL_RELOAD)."""
    ALLOW_ALL = "wasm-default-allow"
    """The module is unavailable and the plugin fails open."""
    NOT_SELECTED = "wasmxds-not-selected"
    """The proxy asked for a plugin that does not apply to it: a no-op."""


_FAILURE_POLICY = {
    wasm_pb2.FAIL_CLOSE: envoy_wasm_pb2.FAIL_CLOSED,
    wasm_pb2.FAIL_OPEN: envoy_wasm_pb2.FAIL_OPEN,
    wasm_pb2.FAIL_RELOAD: envoy_wasm_pb2.FAIL_RELOAD,
}


def filter_kind(plugin: WasmPlugin) -> FilterKind:
    return FilterKind.NETWORK if plugin.spec.type == wasm_pb2.NETWORK else FilterKind.HTTP


def _pack(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _environment(plugin: WasmPlugin) -> envoy_wasm_pb2.EnvironmentVariables | None:
    env = plugin.spec.vm_config.env
    if not env:
        return None
    result = envoy_wasm_pb2.EnvironmentVariables()
    for var in env:
        if var.value_from == wasm_pb2.HOST:
            result.host_env_keys.append(var.name)
        else:
            result.key_values[var.name] = var.value
    return result


@dataclass(frozen=True, slots=True)
class LocalCode:
    """Envoy reads the module from this path on its own filesystem."""

    filename: str


@dataclass(frozen=True, slots=True)
class RemoteCode:
    """Envoy downloads the module over HTTP through ``cluster`` and checks ``sha256``."""

    uri: str
    cluster: str
    sha256: str
    timeout_seconds: int = 30


@dataclass(frozen=True, slots=True)
class InlineCode:
    """The module travels inside the resource."""

    data: bytes


Code = LocalCode | RemoteCode | InlineCode


def _code_source(code: Code) -> base_pb2.AsyncDataSource:
    source = base_pb2.AsyncDataSource()
    match code:
        case LocalCode(filename):
            source.local.filename = filename
        case InlineCode(data):
            source.local.inline_bytes = data
        case RemoteCode(uri, cluster, sha256, timeout_seconds):
            source.remote.http_uri.uri = uri
            source.remote.http_uri.cluster = cluster
            source.remote.http_uri.timeout.seconds = timeout_seconds
            source.remote.sha256 = sha256
            # Envoy's default is a single retry; the control plane is close by and
            # a lost download otherwise leaves the filter failed until the next change.
            source.remote.retry_policy.num_retries.value = 5
    return source


def wasm_filter_config(
    plugin: WasmPlugin,
    code: Code,
    *,
    runtime: str,
    configuration: struct_pb2.Struct | None = None,
) -> extension_pb2.TypedExtensionConfig:
    """The plugin's real filter, as an ECDS ``TypedExtensionConfig``.

    ``configuration`` replaces ``pluginConfig`` (with values from Secrets merged in).
    """
    spec = plugin.spec
    config = configuration
    if config is None and spec.HasField("plugin_config"):
        config = spec.plugin_config
    plugin_config = envoy_wasm_pb2.PluginConfig(
        name=plugin.resource_name,
        root_id=spec.plugin_name,
        failure_policy=_FAILURE_POLICY[spec.fail_strategy],
    )
    # Istio sends an empty Any when pluginConfig is empty; leaving the field unset
    # gives the module the same empty configuration without an untyped Any.
    if config is not None and config.fields:
        plugin_config.configuration.CopyFrom(
            _pack(wrappers_pb2.StringValue(value=compact_json(config)))
        )
    vm = plugin_config.vm_config
    vm.runtime = runtime
    vm.code.CopyFrom(_code_source(code))
    environment = _environment(plugin)
    if environment is not None:
        vm.environment_variables.CopyFrom(environment)

    typed: message.Message
    if filter_kind(plugin) is FilterKind.NETWORK:
        typed = network_wasm_pb2.Wasm(config=plugin_config)
    else:
        typed = http_wasm_pb2.Wasm(config=plugin_config)
    return extension_pb2.TypedExtensionConfig(name=plugin.resource_name, typed_config=_pack(typed))


def lua_filter_config(plugin: WasmPlugin, code: str) -> extension_pb2.TypedExtensionConfig:
    """A TrafficExtension's Lua filter, as istiod builds it (inline source code)."""
    typed = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=code))
    return extension_pb2.TypedExtensionConfig(name=plugin.resource_name, typed_config=_pack(typed))


def standin_config(
    name: str, kind: FilterKind, standin: StandIn
) -> extension_pb2.TypedExtensionConfig:
    """An RBAC filter under the plugin's resource name: deny-all or allow-all."""
    deny = standin is StandIn.DENY_ALL
    typed: message.Message
    if kind is FilterKind.NETWORK:
        # stat_prefix is required for the network filter (Istio #53363 fixed a missing one).
        network = network_rbac_pb2.RBAC(stat_prefix=standin.value)
        if deny:
            network.rules.SetInParent()
        typed = network
    else:
        http = http_rbac_pb2.RBAC(rules_stat_prefix=standin.value)
        if deny:
            # An empty ALLOW policy set matches nothing, so every request is denied (403).
            http.rules.SetInParent()
        typed = http
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=_pack(typed))
