"""Admin HTTP endpoints, served with aiohttp on the admin address (loopback by default)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from wasmxds.settings import HostPort

__all__ = ["AdminServer"]

log = structlog.get_logger(__name__)


class AdminServer:
    """``/healthz`` (the process is up) and ``/readyz`` (ready to serve proxies)."""

    def __init__(self, *, address: HostPort, is_ready: Callable[[], bool]) -> None:
        self._address = address
        self._is_ready = is_ready
        self.port: int | None = None
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

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
