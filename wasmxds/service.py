"""Wire the stages together and supervise them (``wasmxds serve``).

Every long-lived task is named and runs in one TaskGroup; a task that returns
or fails takes the whole service down with a clear log line rather than
leaving a half-working control plane. Shutdown has a fixed order: stop taking
xDS streams and close the open ones within the grace period, then stop the
sources, the debouncer, the module fetches and the admin server.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from typing import Any

import structlog

from wasmxds.admin.server import AdminServer, AdminState, Pulse
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import ObjectKey
from wasmxds.bootstrap import MODULES_CLUSTER
from wasmxds.debounce import Debouncer
from wasmxds.metrics import Metrics
from wasmxds.modules.backoff import Backoff
from wasmxds.modules.http import FetcherSettings, HttpFetcher
from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.modules.oci.fetcher import DEFAULT_OCI_SETTINGS, OciFetcher
from wasmxds.modules.purge import CachePurger
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module
from wasmxds.reconcile import Reconciler
from wasmxds.reports import plugin_reports
from wasmxds.settings import ModuleDelivery, ServeSettings
from wasmxds.sources.directory import DirectorySource
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.protocol import ClientConfig
from wasmxds.sources.kube.status import PluginReport, StatusWriter
from wasmxds.sources.kubernetes import KubernetesSource
from wasmxds.sources.state import SourceState, TemplateState
from wasmxds.sources.templates import TemplateSource
from wasmxds.translate.plugins import Delivery, InlineDelivery, LocalDelivery, RemoteDelivery
from wasmxds.xds.server import TlsFiles, XdsServer

__all__ = ["Service"]

log = structlog.get_logger(__name__)


class _Stopped(Exception):
    """A long-lived task returned; that is a bug, not a shutdown."""


async def _forever(name: str, coro: Coroutine[Any, Any, None]) -> None:
    await coro
    raise _Stopped(f"task {name} returned; long-lived tasks must run until cancelled")


def _delivery(settings: ServeSettings) -> Delivery:
    match settings.module_delivery:
        case ModuleDelivery.REMOTE:
            assert settings.module_base_url is not None  # checked when flags are parsed
            return RemoteDelivery(settings.module_base_url, MODULES_CLUSTER)
        case ModuleDelivery.INLINE:
            return InlineDelivery(settings.inline_max_size)
        case _:
            return LocalDelivery(settings.cache_dir, settings.module_dir_for_proxies)


class Service:
    """All of wasmxds in one object; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.module_arrived = Pulse()
        self.debouncer = Debouncer(
            after=settings.debounce_after, max_wait=settings.debounce_max, metrics=self.metrics
        )
        self.store = ModuleStore(settings.cache_dir)
        fetch_settings = FetcherSettings(
            max_size=settings.max_module_size,
            insecure_hosts=settings.insecure_registries,
            ca_file=settings.registry_ca,
        )
        self.http = HttpFetcher(settings=fetch_settings)
        self.index = ModuleIndex.load(settings.cache_dir / INDEX_FILE)
        log.info("modules.index_loaded", path=str(self.index.path), refs=len(self.index))
        self.pull_secrets = PullSecrets()
        self.oci = OciFetcher(
            store=self.store,
            index=self.index,
            settings=dataclasses.replace(fetch_settings, tries=DEFAULT_OCI_SETTINGS.tries),
            pull_secrets=self.pull_secrets,
        )
        self.resolver = ModuleResolver(
            store=self.store,
            fetchers={"http": self.http, "https": self.http, "oci": self.oci},
            index=self.index,
            pull_secrets=self.pull_secrets,
            max_parallel=settings.max_parallel_pulls,
            on_fetched=self._fetched,
            metrics=self.metrics,
            on_change=self.debouncer.trigger,
            retry=Backoff(
                initial=min(1.0, settings.fetch_retry_max),
                factor=2.0,
                max=settings.fetch_retry_max,
                jitter=0.1,
            ),
        )
        self.purger = CachePurger(
            store=self.store,
            index=self.index,
            in_use=self.resolver.in_use,
            expiry=settings.module_expiry,
            max_bytes=settings.cache_max_bytes,
        )
        self.source = DirectorySource(settings.config_dirs, on_change=self.debouncer.trigger)
        if not settings.config_dirs:
            self.source.loaded.set()  # Kubernetes only: no directories to wait for
        self._init_kubernetes(settings)
        self.templates = (
            TemplateSource(settings.listener_dirs, on_change=self.debouncer.trigger)
            if settings.listener_dirs
            else None
        )
        tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.client_ca)
        self.xds = XdsServer(
            address=settings.xds_address,
            root_namespace=settings.root_namespace,
            tls=tls,
            metrics=self.metrics,
        )
        self.reconciler = Reconciler(
            # First source wins on duplicates: directories before the cluster.
            sources=[lambda: self.source.state, self._kubernetes_state],
            resolver=self.resolver,
            delivery=_delivery(settings),
            runtime=settings.wasm_runtime,
            publish=self.xds.publish,
            root_namespace=settings.root_namespace,
            pull_secrets=self.pull_secrets,
            templates=self._template_state if self.templates is not None else None,
            initial_wait=settings.initial_fetch_wait,
            change_seen=lambda: self.debouncer.window_opened_at,
            metrics=self.metrics,
        )
        self.metrics.live_gauge(
            "wasmxds_module_cache_entries",
            "modules in the cache",
            (),
            lambda: [((), float(self.index.totals()[0]))],
        )
        self.metrics.live_gauge(
            "wasmxds_module_cache_bytes",
            "bytes of modules in the cache",
            (),
            lambda: [((), float(self.index.totals()[1]))],
        )
        self.metrics.live_gauge(
            "wasmxds_source_problems",
            "problems the sources report now (each file or object keeps its last good version)",
            ("severity",),
            self._problem_counts,
        )
        self.xds_started = asyncio.Event()
        self.admin_started = asyncio.Event()
        self.admin = AdminServer(
            address=settings.admin_address,
            state=AdminState(
                readiness=self.readiness,
                sessions=lambda: self.xds.sessions,
                snapshot=lambda: self.xds.snapshot,
                plugins=lambda: self.reconciler.status,
                problems=lambda: self.reconciler.problems,
                delivery=settings.module_delivery.value,
                store=self.store,
                metrics=self.metrics,
                module_arrived=self.module_arrived,
            ),
        )

    async def _first_push_deadline(self) -> None:
        """Make sure a reconcile runs when the start-up wait for module fetches ends."""
        await asyncio.sleep(self.settings.initial_fetch_wait)
        self.debouncer.trigger()
        await asyncio.Event().wait()  # nothing more to do; stay until shutdown

    def _init_kubernetes(self, settings: ServeSettings) -> None:
        self.kube_client: KubeClient | None = None
        self.kubernetes: KubernetesSource | None = None
        self.status_writer: StatusWriter | None = None
        if not settings.kubernetes:
            return
        self.kube_client = KubeClient(ClientConfig(kubeconfig=settings.kubeconfig))
        self.kubernetes = KubernetesSource(
            self.kube_client, namespaces=settings.namespaces, on_change=self.debouncer.trigger
        )
        if settings.write_status:
            self.status_writer = StatusWriter(
                self.kube_client, objects=self.kubernetes.observed, reports=self._plugin_reports
            )

    def _kubernetes_state(self) -> SourceState:
        return self.kubernetes.state if self.kubernetes is not None else SourceState()

    def _plugin_reports(self) -> dict[ObjectKey, PluginReport]:
        return plugin_reports(self.reconciler.status, self.xds.sessions, self.xds.snapshot)

    async def _reconcile(self) -> None:
        await self.reconciler.reconcile()
        if self.status_writer is not None:
            self.status_writer.trigger()

    def _template_state(self) -> TemplateState:
        return self.templates.state if self.templates is not None else TemplateState()

    def _fetched(self, module: Module) -> None:
        self.purger.wake()
        self.module_arrived.fire()

    def _problem_counts(self) -> list[tuple[tuple[str, ...], float]]:
        errors = sum(1 for p in self.reconciler.problems if p.is_error)
        warnings = len(self.reconciler.problems) - errors
        return [(("error",), float(errors)), (("warning",), float(warnings))]

    def readiness(self) -> Readiness:
        templates_loaded = self.templates is None or self.templates.loaded
        return Readiness(
            sources_loaded=self.source.loaded.is_set()
            and templates_loaded
            and (self.kubernetes is None or self.kubernetes.loaded.is_set()),
            first_push=self.reconciler.published,
            xds_listening=self.xds_started.is_set(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run every stage until ``stop`` is set, then shut down in order."""
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with asyncio.TaskGroup() as group:
                settings = self.settings
                optional = [
                    ("sources.directory", self.source.run() if settings.config_dirs else None),
                    ("sources.kubernetes", self.kubernetes.run() if self.kubernetes else None),
                    ("sources.templates", self.templates.run() if self.templates else None),
                    ("kubernetes.status", self.status_writer.run() if self.status_writer else None),
                    (
                        "modules.repull",
                        self.resolver.run_repull(settings.repull_interval)
                        if settings.repull_interval is not None
                        else None,
                    ),
                ]
                stages = [
                    ("modules.resolver", self.resolver.run()),
                    ("modules.purge", self.purger.run()),
                    ("debounce", self.debouncer.run(self._reconcile)),
                    ("admin", self.admin.run(self.admin_started)),
                    ("reconcile.first-push-deadline", self._first_push_deadline()),
                    *((name, coro) for name, coro in optional if coro is not None),
                ]
                background = [
                    group.create_task(_forever(name, coro), name=name) for name, coro in stages
                ]
                xds = group.create_task(_forever("xds", self.xds.run(self.xds_started)), name="xds")
                await stop.wait()
                log.info("service.stopping")
                await self.xds.stop()
                xds.cancel()
                for task in background:
                    task.cancel()
        finally:
            await self.http.aclose()
            await self.oci.aclose()
            await self.index.flush()
            if self.kube_client is not None:
                await self.kube_client.aclose()
        log.info("service.stopped")
