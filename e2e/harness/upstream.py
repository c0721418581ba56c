"""An HTTP upstream that echoes what it received, so tests can see what filters did."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

__all__ = ["EchoUpstream", "echo_upstream"]


@dataclass(frozen=True)
class EchoUpstream:
    host: str
    port: int


async def _echo(request: web.Request) -> web.Response:
    # Headers as a list of pairs keeps repeats and their order: filters that
    # append the same header show up in the order they ran.
    body = {
        "method": request.method,
        "path": request.path_qs,
        "headers": [[name.lower(), value] for name, value in request.headers.items()],
    }
    return web.Response(text=json.dumps(body), content_type="application/json")


@contextlib.asynccontextmanager
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    """Serve the echo app on 127.0.0.1 with a kernel-chosen port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield EchoUpstream("127.0.0.1", port)
    finally:
        await runner.cleanup()
