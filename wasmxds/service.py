"""Wire the stages together and supervise them (``wasmxds serve``).

Every long-lived task is named and runs in one TaskGroup; a task that returns
or fails takes the whole service down with a clear log line rather than
leaving a half-working control plane. Shutdown has a fixed order: stop taking
xDS streams and close the open ones within the grace period, then stop the
sources, the debouncer, the module fetches and the admin server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from wasmxds.admin.server import AdminServer
from wasmxds.debounce import Debouncer
from wasmxds.modules.backoff import Backoff
from wasmxds.modules.http import FetcherSettings, HttpFetcher
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.store import ModuleStore
from wasmxds.reconcile import Reconciler
from wasmxds.settings import ServeSettings
from wasmxds.sources.directory import DirectorySource
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.xds.server import XdsServer

__all__ = ["Service"]

log = structlog.get_logger(__name__)


class _Stopped(Exception):
    """A long-lived task returned; that is a bug, not a shutdown."""


async def _forever(name: str, coro: Coroutine[Any, Any, None]) -> None:
    await coro
    raise _Stopped(f"task {name} returned; long-lived tasks must run until cancelled")


class Service:
    """All of wasmxds in one object; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.debouncer = Debouncer(after=settings.debounce_after, max_wait=settings.debounce_max)
        self.store = ModuleStore(settings.cache_dir)
        self.http = HttpFetcher(
            settings=FetcherSettings(
                max_size=settings.max_module_size,
                insecure_hosts=settings.insecure_registries,
            )
        )
        self.resolver = ModuleResolver(
            store=self.store,
            fetchers={"http": self.http, "https": self.http},
            on_change=self.debouncer.trigger,
            retry=Backoff(
                initial=min(1.0, settings.fetch_retry_max),
                factor=2.0,
                max=settings.fetch_retry_max,
                jitter=0.1,
            ),
        )
        self.source = DirectorySource(settings.config_dirs, on_change=self.debouncer.trigger)
        self.xds = XdsServer(address=settings.xds_address, root_namespace=settings.root_namespace)
        self.reconciler = Reconciler(
            sources=[lambda: self.source.state],
            resolver=self.resolver,
            delivery=LocalDelivery(settings.cache_dir, settings.module_dir_for_proxies),
            runtime=settings.wasm_runtime,
            publish=self.xds.publish,
            root_namespace=settings.root_namespace,
        )
        self.xds_started = asyncio.Event()
        self.admin_started = asyncio.Event()
        self.admin = AdminServer(address=settings.admin_address, is_ready=self.is_ready)

    def is_ready(self) -> bool:
        return self.source.loaded.is_set() and self.xds_started.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every stage until ``stop`` is set, then shut down in order."""
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with asyncio.TaskGroup() as group:
                background = [
                    group.create_task(_forever(name, coro), name=name)
                    for name, coro in (
                        ("modules.resolver", self.resolver.run()),
                        ("sources.directory", self.source.run()),
                        ("debounce", self.debouncer.run(self.reconciler.reconcile)),
                        ("admin", self.admin.run(self.admin_started)),
                    )
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
        log.info("service.stopped")
