"""A WasmPlugin plus the fate of its module → what proxies get under its resource name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.core.v3 import extension_pb2

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
    standin_config,
    wasm_filter_config,
)

__all__ = [
    "Delivery",
    "InlineDelivery",
    "LocalDelivery",
    "PluginResources",
    "RemoteDelivery",
    "not_selected_config",
    "plugin_resources",
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
    """What proxies the plugin applies to receive: its filter, or a stand-in and why."""

    plugin: WasmPlugin
    kind: FilterKind
    config: extension_pb2.TypedExtensionConfig
    standin: StandIn | None = None
    reason: str = ""


def _failure_standin(plugin: WasmPlugin, kind: FilterKind, error: ModuleError) -> PluginResources:
    """The fail-strategy stand-in: allow-all for FAIL_OPEN, deny-all otherwise."""
    standin = (
        StandIn.ALLOW_ALL if plugin.spec.fail_strategy == wasm_pb2.FAIL_OPEN else StandIn.DENY_ALL
    )
    return PluginResources(
        plugin=plugin,
        kind=kind,
        config=standin_config(plugin.resource_name, kind, standin),
        standin=standin,
        reason=str(error),
    )


def plugin_resources(
    plugin: WasmPlugin, outcome: Ready | Failed, delivery: Delivery, *, runtime: str
) -> PluginResources:
    kind = filter_kind(plugin)
    if isinstance(outcome, Failed):
        return _failure_standin(plugin, kind, outcome.error)
    module = outcome.module
    try:
        code = LocalCode(module.path) if isinstance(module, LocalFile) else delivery.code(module)
    except ModuleError as exc:
        return _failure_standin(plugin, kind, exc)
    return PluginResources(
        plugin=plugin,
        kind=kind,
        config=wasm_filter_config(plugin, code, runtime=runtime),
    )


def not_selected_config(name: str, kind: FilterKind) -> extension_pb2.TypedExtensionConfig:
    """The no-op a proxy gets for a plugin that exists but does not apply to it."""
    return standin_config(name, kind, StandIn.NOT_SELECTED)
