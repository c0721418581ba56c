"""The stage between sources and the xDS server.

On every debounced change it takes the sources' desired state, resolves each
plugin's module through the cache, translates, and publishes one new snapshot.
A plugin whose module is not settled yet is never referenced half-ready:

- a new plugin stays out of the snapshot (proxies get nothing for it yet);
- an edited plugin keeps serving its previous version until the new module is
  ready (make before break);
- a failed module is served as the fail-strategy stand-in while the resolver
  retries in the background; each settled fetch triggers another reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.types import (
    Failed,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
)
from wasmxds.sources.state import SourceState
from wasmxds.translate.plugins import Delivery, PluginResources, plugin_resources
from wasmxds.xds.snapshot import Snapshot, build_snapshot

__all__ = ["ModuleSource", "PluginStatus", "Reconciler", "module_request"]

log = structlog.get_logger(__name__)


class ModuleSource(Protocol):
    """What reconcile needs from the module stage (a :class:`ModuleResolver` in production)."""

    def resolve(self, request: ModuleRequest) -> ModuleOutcome: ...

    def retain(self, requests: Iterable[ModuleRequest]) -> None: ...


def _with_scheme(url: str) -> str:
    # Istio: a URL without a scheme is an OCI reference.
    return url if "://" in url else f"oci://{url}"


def _pull_policy(spec: wasm_pb2.WasmPlugin, url: str) -> PullPolicy:
    if spec.image_pull_policy == wasm_pb2.Always:
        return PullPolicy.ALWAYS
    if spec.image_pull_policy == wasm_pb2.IfNotPresent:
        return PullPolicy.IF_NOT_PRESENT
    # Istio: unspecified means Always only for an OCI reference tagged :latest.
    if url.startswith("oci://") and url.endswith(":latest"):
        return PullPolicy.ALWAYS
    return PullPolicy.IF_NOT_PRESENT


def module_request(plugin: WasmPlugin) -> ModuleRequest:
    """What a plugin asks of the module stage."""
    url = _with_scheme(plugin.spec.url)
    return ModuleRequest(
        url=url,
        sha256=plugin.spec.sha256,
        pull_policy=_pull_policy(plugin.spec, url),
        generation=plugin.fingerprint,
    )


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """What the last reconcile decided for one plugin (for logs, debug and status)."""

    plugin: WasmPlugin
    request: ModuleRequest
    outcome: ModuleOutcome
    served: PluginResources | None


class Reconciler:
    """Turns source state into published snapshots (see module docstring)."""

    def __init__(
        self,
        *,
        sources: Sequence[Callable[[], SourceState]],
        resolver: ModuleSource,
        delivery: Delivery,
        runtime: str,
        publish: Callable[[Snapshot], int],
        root_namespace: str,
    ) -> None:
        self._sources = sources
        self._resolver = resolver
        self._delivery = delivery
        self._runtime = runtime
        self._publish = publish
        self._snapshot = Snapshot.empty(root_namespace)
        self._served: dict[str, PluginResources] = {}
        self._published = False
        self.status: dict[ObjectKey, PluginStatus] = {}
        self.problems: tuple[Problem, ...] = ()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _desired(self) -> dict[ObjectKey, WasmPlugin]:
        plugins: dict[ObjectKey, WasmPlugin] = {}
        problems: list[Problem] = []
        for source in self._sources:
            state = source()
            problems.extend(state.problems)
            for key, plugin in state.plugins.items():
                plugins.setdefault(key, plugin)
        self.problems = tuple(problems)
        return plugins

    async def reconcile(self) -> None:
        started = time.perf_counter()
        desired = self._desired()
        requests = {key: module_request(plugin) for key, plugin in desired.items()}
        self._resolver.retain(requests.values())

        served: dict[str, PluginResources] = {}
        pending: list[str] = []
        status: dict[ObjectKey, PluginStatus] = {}
        for key, plugin in sorted(desired.items()):
            request = requests[key]
            outcome = self._resolver.resolve(request)
            name = plugin.resource_name
            if isinstance(outcome, Pending):
                previous = self._served.get(name)
                if previous is not None:
                    served[name] = previous
                else:
                    pending.append(name)
            else:
                served[name] = plugin_resources(
                    plugin, outcome, self._delivery, runtime=self._runtime
                )
                standin = served[name].standin
                if isinstance(outcome, Failed) and standin is not None:
                    log.warning(
                        "reconcile.standin",
                        plugin=str(key),
                        url=request.display_url,
                        standin=standin.value,
                        error=str(outcome.error),
                        retry_in=round(outcome.next_retry_in, 1),
                    )
            status[key] = PluginStatus(plugin, request, outcome, served.get(name))

        snapshot = build_snapshot(served.values(), pending=pending, previous=self._snapshot)
        self._served = served
        self.status = status
        if self._published and snapshot.version == self._snapshot.version:
            return
        self._published = True
        self._snapshot = snapshot
        woken = self._publish(snapshot)
        log.info(
            "reconcile.pushed",
            version=snapshot.version,
            plugins=len(served),
            pending=len(pending),
            streams=woken,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
