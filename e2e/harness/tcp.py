"""A TCP upstream that echoes every byte it receives, for network (L4) filter tests.

Point a tcp_proxy cluster at it: whatever the filters send upstream comes
straight back to the client, so a test sees exactly the bytes that left Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TcpEcho", "tcp_echo"]

_CHUNK = 65536


class TcpEcho:
    """Where the echo server listens, and how many connections it has accepted."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.connections = 0


@contextlib.asynccontextmanager
async def tcp_echo() -> AsyncIterator[TcpEcho]:
    """Serve a TCP echo on 127.0.0.1 with a kernel-chosen port.

    Each connection gets back everything it sends; when the peer half-closes,
    the echo finishes writing and half-closes too, so the client reads to EOF.
    Connections still open on exit are closed.
    """
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo.connections += 1
        writers.add(writer)
        if (task := asyncio.current_task()) is not None:
            handlers.add(task)
            task.add_done_callback(handlers.discard)
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    echo = TcpEcho(str(host), int(port))
    try:
        yield echo
    finally:
        server.close()
        for writer in list(writers):
            writer.close()
        await server.wait_closed()
        # Closing a transport ends its handler's read loop; let the handlers finish.
        if handlers:
            await asyncio.wait(handlers, timeout=5)
