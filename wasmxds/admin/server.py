"""The admin HTTP server (aiohttp), loopback by default.

/healthz                     the process is up
/readyz                      sources read, first push made, xDS listening (JSON detail)
/metrics                     Prometheus metrics
/debug/syncz                 per proxy: identity and, per type, sent / ACKed / NACKed state
/debug/plugins               per WasmPlugin: origin, module, fetch state, stand-in, proxies
/debug/problems              what the sources found wrong, as path:line: message
/debug/config_dump?node=ID   the exact resources a proxy gets (or ?namespace=&label=k=v)
/modules/sha256/<hex>        module bytes, for `--module-delivery remote`
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wasmxds.admin.views import Readiness, config_dump, plugins_view, syncz
from wasmxds.api.objects import ObjectKey, Problem
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module
from wasmxds.reconcile import PluginStatus
from wasmxds.settings import HostPort
from wasmxds.translate.node import node_info_from_metadata
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot

__all__ = ["AdminServer", "AdminState", "Pulse"]

log = structlog.get_logger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# How long a module download waits for a fetch still under way (Envoy's own
# http_uri timeout for remote modules is 30 s).
_MODULE_WAIT = 20.0


class Pulse:
    """Wakes every current waiter each time it fires (an Event re-armed after setting)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True, slots=True)
class AdminState:
    """Read-only accessors for everything the admin pages show."""

    readiness: Callable[[], Readiness]
    sessions: Callable[[], Sequence[Session]]
    snapshot: Callable[[], Snapshot]
    plugins: Callable[[], Mapping[ObjectKey, PluginStatus]]
    problems: Callable[[], Sequence[Problem]]
    delivery: str
    store: ModuleStore
    metrics: Metrics
    module_arrived: Pulse
    """Fires whenever a module lands in the store (see ``_module``)."""


class AdminServer:
    def __init__(self, *, address: HostPort, state: AdminState) -> None:
        self._address = address
        self._state = state
        self.port: int | None = None
        self.app = web.Application()
        routes = self.app.router
        routes.add_get("/healthz", self._healthz)
        routes.add_get("/readyz", self._readyz)
        routes.add_get("/metrics", self._metrics)
        routes.add_get("/debug/syncz", self._syncz)
        routes.add_get("/debug/plugins", self._plugins)
        routes.add_get("/debug/problems", self._problems)
        routes.add_get("/debug/config_dump", self._config_dump)
        routes.add_get("/modules/sha256/{digest}", self._module)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        readiness = self._state.readiness()
        body = {
            "ready": readiness.ready,
            "sources_loaded": readiness.sources_loaded,
            "first_push": readiness.first_push,
            "xds_listening": readiness.xds_listening,
        }
        return web.json_response(body, status=200 if readiness.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        payload = generate_latest(self._state.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _syncz(self, request: web.Request) -> web.Response:
        return web.json_response(syncz(self._state.sessions()))

    async def _plugins(self, request: web.Request) -> web.Response:
        state = self._state
        view = plugins_view(state.plugins(), state.snapshot(), state.sessions(), state.delivery)
        return web.json_response(view)

    async def _problems(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"path": p.path, "line": p.line, "severity": p.severity.value, "message": p.message}
                for p in self._state.problems()
            ]
        )

    async def _config_dump(self, request: web.Request) -> web.Response:
        node_id = request.query.get("node")
        snapshot = self._state.snapshot()
        if node_id:
            for session in self._state.sessions():
                if session.node.id == node_id:
                    dump = config_dump(snapshot, session.node, session.ecds_names())
                    return web.json_response(dump)
            raise web.HTTPNotFound(text=f"no connected proxy with node id {node_id!r}\n")
        labels = {}
        for item in request.query.getall("label", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise web.HTTPBadRequest(text=f"label {item!r}: expected key=value\n")
            labels[key] = value
        namespace = request.query.get("namespace")
        if namespace is None:
            raise web.HTTPBadRequest(text="give ?node=ID, or ?namespace=NS[&label=k=v...]\n")
        node = node_info_from_metadata("(hypothetical)", {"namespace": namespace, "labels": labels})
        return web.json_response(config_dump(snapshot, node, None))

    async def _module(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not _DIGEST.match(digest):
            raise web.HTTPNotFound(text="not a sha256 digest\n")
        module = self._state.store.get(digest)
        if module is None:
            # Behind a Service, a proxy can ask this replica for a module another
            # replica has just fetched; this one is most likely fetching it too.
            module = await self._await_module(digest)
        if module is None:
            raise web.HTTPNotFound(text=f"module {digest} is not in the cache\n")
        return web.FileResponse(module.path, headers={"Content-Type": "application/wasm"})

    async def _await_module(self, digest: str) -> Module | None:
        store = self._state.store
        try:
            async with asyncio.timeout(_MODULE_WAIT):
                while (module := store.get(digest)) is None:
                    await self._state.module_arrived.wait()
        except TimeoutError:
            return None
        return module

    async def run(self, started: asyncio.Event | None = None) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._address.host, self._address.port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            log.info("admin.listening", address=f"{self._address.host}:{self.port}")
            if started is not None:
                started.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
