"""Loopback servers that trickle: hand-written HTTP one byte at a time, bounded in length."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from tests.modules.conftest import WASM

__all__ = ["OK_HEAD", "Handler", "RawServers", "drip", "drips_body", "drips_headers", "raw_servers"]

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/wasm\r\nContent-Length: 100000\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServers:
    """Plain TCP servers speaking hand-written HTTP; counts connections per port."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.connections: dict[int, int] = {}

    async def start(self, handler: Handler) -> int:
        port = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections[port] += 1
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client gave up on us, which is the point
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        self.connections[port] = 0
        return port


@contextlib.asynccontextmanager
async def raw_servers() -> AsyncIterator[RawServers]:
    servers = RawServers()
    try:
        yield servers
    finally:
        for server in servers.servers:
            server.close()
        # The handlers are bounded (a few seconds of dripping), so closing does not wait long.
        for server in servers.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 10)


async def drip(writer: asyncio.StreamWriter, data: bytes, every: float, limit: int = 100) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart; stop after ``limit`` bytes."""
    for byte in data[:limit]:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every)


async def drips_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK_HEAD)
    await drip(writer, WASM * 100, every=0.1, limit=40)


async def drips_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await drip(writer, OK_HEAD, every=0.1, limit=40)
