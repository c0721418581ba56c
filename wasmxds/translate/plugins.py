"""A WasmPlugin plus the fate of its module → what proxies get under its resource name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from google.protobuf import struct_pb2

from wasmxds.api.configsecrets import SecretValue, with_values
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.errors import ModuleError, ModuleTooLargeError
from wasmxds.modules.types import Failed, LocalFile, Module, Ready
from wasmxds.translate.filters import (
    Code,
    FilterKind,
    InlineCode,
    LocalCode,
    RemoteCode,
    StandIn,
    filter_kind,
    lua_filter_config,
    standin_config,
    wasm_filter_config,
)

__all__ = [
    "Delivery",
    "InlineDelivery",
    "LocalDelivery",
    "PluginResources",
    "RemoteDelivery",
    "SecretConfigMemo",
    "lua_resources",
    "not_selected_config",
    "plugin_resources",
    "standin_resources",
]


@dataclass(frozen=True, slots=True)
class LocalDelivery:
    """Envoy reads cached modules from a shared directory.

    ``proxy_dir`` is the cache directory as the proxies see it; module paths are
    rebased from ``cache_dir`` onto it.
    """

    cache_dir: Path
    proxy_dir: Path

    def code(self, module: Module) -> Code:
        return LocalCode(str(self.proxy_dir / module.path.relative_to(self.cache_dir)))


@dataclass(frozen=True, slots=True)
class RemoteDelivery:
    """Envoy downloads ``<base_url>/modules/sha256/<hex>`` through ``cluster``."""

    base_url: str
    cluster: str

    def code(self, module: Module) -> Code:
        return RemoteCode(
            uri=f"{self.base_url.rstrip('/')}/modules/sha256/{module.digest}",
            cluster=self.cluster,
            sha256=module.digest,
        )


@dataclass(frozen=True, slots=True)
class InlineDelivery:
    """The module's bytes travel inside the resource; for small modules only.

    Translation stays pure: the reconcile stage loads the bytes of the modules
    it is about to translate into ``blobs`` (digest → bytes) beforehand.
    """

    max_size: int
    blobs: Mapping[str, bytes] = field(default_factory=dict)

    def code(self, module: Module) -> Code:
        if module.size > self.max_size:
            raise ModuleTooLargeError(
                f"module {module.digest[:12]} is {module.size} bytes; inline delivery takes at "
                f"most {self.max_size} (use --module-delivery local or remote for it)"
            )
        return InlineCode(self.blobs[module.digest])


Delivery = LocalDelivery | RemoteDelivery | InlineDelivery


@dataclass(frozen=True, slots=True)
class PluginResources:
    """What proxies the plugin applies to receive: its filter, or a stand-in and why.

    ``display`` is ``config`` with every value from a Secret masked, for debug
    pages; None when ``config`` holds no such value (it is shown as it is).
    """

    plugin: WasmPlugin
    kind: FilterKind
    config: extension_pb2.TypedExtensionConfig = field(repr=False)
    standin: StandIn | None = None
    reason: str = ""
    display: extension_pb2.TypedExtensionConfig | None = field(default=None, repr=False)

    @property
    def has_secret_values(self) -> bool:
        return self.display is not None


def standin_resources(plugin: WasmPlugin, reason: str) -> PluginResources:
    """The fail-strategy stand-in for ``plugin``, for ``reason`` (not about its module)."""
    return _failure_standin(plugin, filter_kind(plugin), reason)


def _failure_standin(plugin: WasmPlugin, kind: FilterKind, reason: str) -> PluginResources:
    """The fail-strategy stand-in: allow-all for FAIL_OPEN, deny-all otherwise."""
    standin = (
        StandIn.ALLOW_ALL if plugin.spec.fail_strategy == wasm_pb2.FAIL_OPEN else StandIn.DENY_ALL
    )
    return PluginResources(
        plugin=plugin,
        kind=kind,
        config=standin_config(plugin.resource_name, kind, standin),
        standin=standin,
        reason=reason,
    )


_MemoKey = tuple[str, str, Code, str]


class SecretConfigMemo:
    """A plugin's filter with values from Secrets, built once per (plugin fingerprint,
    Secret versions, code, runtime) and reused by later reconcile passes.

    Merging the values, rendering the real and the masked JSON, and then preparing
    (serializing and hashing) the resource cost time in proportion to the values;
    every pass rebuilding them stalled the event loop. A reused
    :class:`PluginResources` is the same object, so the snapshot's comparison with
    the previous one is an identity check and its prepared bytes are kept too.
    Entries not used by a pass are dropped after the next (:meth:`sweep`), so the
    memo holds at most two passes' plugins.
    """

    def __init__(self) -> None:
        self._kept: dict[_MemoKey, PluginResources] = {}
        self._used: dict[_MemoKey, PluginResources] = {}

    def get(self, key: _MemoKey) -> PluginResources | None:
        found = self._used.get(key) or self._kept.get(key)
        if found is not None:
            self._used[key] = found
        return found

    def put(self, key: _MemoKey, resources: PluginResources) -> None:
        self._used[key] = resources

    def sweep(self) -> None:
        """End of a reconcile pass: forget what neither this pass nor the last used."""
        self._kept, self._used = self._used, {}


def plugin_resources(
    plugin: WasmPlugin,
    outcome: Ready | Failed,
    delivery: Delivery,
    *,
    runtime: str,
    secret_values: Sequence[SecretValue] = (),
    values_version: str = "",
    memo: SecretConfigMemo | None = None,
) -> PluginResources:
    """The plugin's filter (``secret_values`` merged into its pluginConfig), or its stand-in.

    With ``memo`` and ``values_version`` (which changes exactly when the values may
    have), a filter with values from Secrets built earlier for the same plugin,
    values, code and runtime is returned again instead of being rebuilt.
    """
    kind = filter_kind(plugin)
    if isinstance(outcome, Failed):
        return _failure_standin(plugin, kind, str(outcome.error))
    module = outcome.module
    try:
        code = LocalCode(module.path) if isinstance(module, LocalFile) else delivery.code(module)
    except ModuleError as exc:
        return _failure_standin(plugin, kind, str(exc))
    if not secret_values:
        return PluginResources(
            plugin=plugin, kind=kind, config=wasm_filter_config(plugin, code, runtime=runtime)
        )
    key: _MemoKey | None = None
    if memo is not None and values_version:
        key = (plugin.fingerprint, values_version, code, runtime)
        found = memo.get(key)
        if found is not None:
            # Same content; the plugin object may be a new one (another origin, say).
            return found if found.plugin is plugin else dataclasses.replace(found, plugin=plugin)
    spec = plugin.spec
    base = spec.plugin_config if spec.HasField("plugin_config") else struct_pb2.Struct()
    real = with_values(base, [(item.ref.path, item.value) for item in secret_values])
    masked = with_values(base, [(item.ref.path, item.ref.masked) for item in secret_values])
    built = PluginResources(
        plugin=plugin,
        kind=kind,
        config=wasm_filter_config(plugin, code, runtime=runtime, configuration=real),
        display=wasm_filter_config(plugin, code, runtime=runtime, configuration=masked),
    )
    if memo is not None and key is not None:
        memo.put(key, built)
    return built


def lua_resources(plugin: WasmPlugin, code: str) -> PluginResources:
    """A Lua TrafficExtension's filter: always HTTP, nothing to fetch.

    Lua has no fail strategy and no stand-in: a body Envoy cannot load is
    NACKed by the proxy, which keeps what it ran before (the report says why).
    """
    return PluginResources(
        plugin=plugin, kind=FilterKind.HTTP, config=lua_filter_config(plugin, code)
    )


def not_selected_config(name: str, kind: FilterKind) -> extension_pb2.TypedExtensionConfig:
    """The no-op a proxy gets for a plugin that exists but does not apply to it."""
    return standin_config(name, kind, StandIn.NOT_SELECTED)
