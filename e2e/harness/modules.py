"""An HTTP server for Wasm modules whose content tests change while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

__all__ = ["ModuleServer", "module_server"]


class ModuleServer:
    """Serves ``/<name>`` from ``files``; a missing name is a 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        data = self.files.get(name)
        if data is None:
            return web.Response(status=404, text="no such module\n")
        return web.Response(body=data, content_type="application/wasm")


@contextlib.asynccontextmanager
async def module_server() -> AsyncIterator[ModuleServer]:
    server = ModuleServer()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = int(runner.addresses[0][1])
    try:
        yield server
    finally:
        await runner.cleanup()
