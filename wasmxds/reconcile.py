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

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.secrets import PullSecret
from wasmxds.metrics import Metrics
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.types import (
    Failed,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
    Ready,
)
from wasmxds.sources.state import SourceState, TemplateState
from wasmxds.translate.plugins import (
    Delivery,
    InlineDelivery,
    PluginResources,
    plugin_resources,
)
from wasmxds.xds.snapshot import Snapshot, build_snapshot

__all__ = ["ModuleSource", "PluginStatus", "Reconciler", "module_request"]

log = structlog.get_logger(__name__)


class ModuleSource(Protocol):
    """What reconcile needs from the module stage (a :class:`ModuleResolver` in production)."""

    def resolve(self, request: ModuleRequest) -> ModuleOutcome: ...

    def retain(self, requests: Iterable[ModuleRequest], in_use: Iterable[Module] = ()) -> None: ...


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
    """What a plugin asks of the module stage.

    The pull secret travels by reference only, in the plugin's namespace (Istio
    forces it there), and only for OCI (http(s) fetches send no credentials).
    """
    url = _with_scheme(plugin.spec.url)
    secret = plugin.spec.image_pull_secret
    return ModuleRequest(
        url=url,
        sha256=plugin.spec.sha256,
        pull_policy=_pull_policy(plugin.spec, url),
        generation=plugin.fingerprint,
        pull_secret=(
            ObjectKey(plugin.key.namespace, secret)
            if secret and url.lower().startswith("oci://")
            else None
        ),
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
        templates: Callable[[], TemplateState] | None = None,
        initial_wait: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        pull_secrets: PullSecrets | None = None,
        change_seen: Callable[[], float | None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._sources = sources
        self._resolver = resolver
        self._delivery = delivery
        self._runtime = runtime
        self._publish = publish
        self._templates = templates
        self._snapshot = Snapshot.empty(root_namespace)
        self._served: dict[str, PluginResources] = {}
        # The module behind each served resource, so the purge never deletes one in use.
        self._served_modules: dict[str, Module] = {}
        self._pull_secrets = pull_secrets
        self._published = False
        self._clock = clock
        self._first_deadline = clock() + initial_wait
        self._change_seen = change_seen
        self._metrics = metrics
        self.status: dict[ObjectKey, PluginStatus] = {}
        self.problems: tuple[Problem, ...] = ()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def published(self) -> bool:
        return self._published

    def _desired(self) -> dict[ObjectKey, WasmPlugin]:
        plugins: dict[ObjectKey, WasmPlugin] = {}
        secrets: dict[ObjectKey, PullSecret] = {}
        problems: list[Problem] = []
        for source in self._sources:
            state = source()
            problems.extend(state.problems)
            for key, plugin in state.plugins.items():
                plugins.setdefault(key, plugin)
            for key, secret in state.secrets.items():
                secrets.setdefault(key, secret)
        if self._pull_secrets is not None and self._pull_secrets.update(secrets):
            log.info("reconcile.pull_secrets", secrets=len(secrets))
        self.problems = tuple(problems)
        return plugins

    async def _prepare_delivery(self, outcomes: Iterable[ModuleOutcome]) -> Delivery:
        """For inline delivery, load the bytes of the modules about to be translated."""
        delivery = self._delivery
        if not isinstance(delivery, InlineDelivery):
            return delivery
        wanted = {
            o.module.digest: o.module
            for o in outcomes
            if isinstance(o, Ready)
            and isinstance(o.module, Module)
            and o.module.size <= delivery.max_size
        }
        blobs = {d: b for d, b in delivery.blobs.items() if d in wanted}
        for digest, module in wanted.items():
            if digest not in blobs:
                blobs[digest] = await asyncio.to_thread(module.path.read_bytes)
        self._delivery = InlineDelivery(delivery.max_size, blobs)
        return self._delivery

    async def reconcile(self) -> None:
        started = time.perf_counter()
        desired = self._desired()
        requests = {key: module_request(plugin) for key, plugin in desired.items()}

        served: dict[str, PluginResources] = {}
        served_modules: dict[str, Module] = {}
        pending: list[str] = []
        status: dict[ObjectKey, PluginStatus] = {}
        outcomes = {key: self._resolver.resolve(request) for key, request in requests.items()}
        delivery = await self._prepare_delivery(outcomes.values())
        for key, plugin in sorted(desired.items()):
            request = requests[key]
            outcome = outcomes[key]
            name = plugin.resource_name
            if isinstance(outcome, Pending):
                previous = self._served.get(name)
                if previous is not None:
                    served[name] = previous
                    if name in self._served_modules:
                        served_modules[name] = self._served_modules[name]
                else:
                    pending.append(name)
            else:
                served[name] = plugin_resources(plugin, outcome, delivery, runtime=self._runtime)
                if isinstance(outcome, Ready) and isinstance(outcome.module, Module):
                    served_modules[name] = outcome.module
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
        # After resolving: new requests exist now, and what is served is known (and kept).
        self._resolver.retain(requests.values(), in_use=served_modules.values())
        self._served_modules = served_modules

        templates = self._templates() if self._templates is not None else TemplateState()
        self.problems += templates.problems
        snapshot = build_snapshot(
            served.values(),
            pending=pending,
            previous=self._snapshot,
            templates=templates.templates,
            changed_at=self._change_seen(),
        )
        self._served = served
        self.status = status
        if self._published and snapshot.version == self._snapshot.version:
            return
        if not self._published and pending and self._clock() < self._first_deadline:
            # The first snapshot waits for the first fetches (bounded): a proxy that
            # connects now must not get listeners without plugins that merely have
            # not finished downloading, nor lose ones it already runs.
            log.info("reconcile.waiting_for_modules", pending=len(pending))
            return
        self._published = True
        self._snapshot = snapshot
        woken = self._publish(snapshot)
        if self._metrics is not None:
            self._metrics.reconcile_duration.observe(time.perf_counter() - started)
        log.info(
            "reconcile.pushed",
            version=snapshot.version,
            plugins=len(served),
            pending=len(pending),
            streams=woken,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
