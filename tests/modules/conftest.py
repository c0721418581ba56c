"""Real loopback HTTP(S) servers for the module tests, and small async helpers."""

from __future__ import annotations

import asyncio
import collections
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest
import trustme
from aiohttp import web

from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest

# The smallest valid Wasm binary: magic number plus version 1, no sections.
WASM = b"\0asm\x01\x00\x00\x00"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class ModuleServer:
    """An aiohttp server on 127.0.0.1, port chosen by the OS, with per-path handlers.

    Unknown paths answer 404. ``hits`` counts requests per path and ``changed``
    fires on each one. Handlers that must stall wait on ``release``, which is set
    before the server shuts down.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[web.Request] = []
        self.release = asyncio.Event()
        self.changed = Signal()
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def serve(
        self,
        path: str,
        body: bytes = WASM,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Answer ``path`` with a fixed response; returns the full URL."""

        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, status=status, headers=headers)

        self.routes[path] = handler
        return self.url(path)

    def route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url(path)

    async def stall(self) -> None:
        """Block a handler until the test ends."""
        await self.release.wait()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.requests.append(request)
        self.changed.notify()
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)


@pytest.fixture
async def server() -> AsyncIterator[ModuleServer]:
    srv = ModuleServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[ModuleServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    srv = ModuleServer(ssl_context=context)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class Signal:
    """Wakes waiters whenever something they may be waiting for has changed.

    ``notify`` is synchronous so it can serve as the resolver's ``on_change``;
    ``calls`` counts notifications.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.calls += 1
        self._event.set()

    async def wait_for(self, predicate: Callable[[], bool], *, deadline: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; ``deadline`` only guards against hangs."""
        async with asyncio.timeout(deadline):
            while not predicate():
                self._event.clear()
                await self._event.wait()


@pytest.fixture
def module_store(tmp_path: Path) -> ModuleStore:
    """An empty module store for fetchers to download into."""
    return ModuleStore(tmp_path / "cache")


async def fetch_bytes(fetcher: HttpFetcher, request: ModuleRequest) -> bytes:
    """Fetch into the store and return the stored module's content."""
    fetched = await fetcher.fetch(request)
    return fetched.module.path.read_bytes()


# Large enough that holding it (let alone twice) dwarfs the streaming buffers.
BIG = 48 << 20


def big_wasm() -> bytes:
    """A BIG-byte module (built on demand: it is not small)."""
    return b"\0asm\x01\x00\x00\x00" + bytes(BIG - 8)


# Generous: a 1 MiB write slice, httpx's read buffers and the interpreter's noise.
PEAK_BOUND = 12 << 20


async def traced_peak(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """Run ``work`` and return its result and the peak of Python allocations meanwhile."""
    tracemalloc.start()
    try:
        result = await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def temporaries(store: ModuleStore) -> list[str]:
    directory = store.root / "modules" / "sha256"
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))
