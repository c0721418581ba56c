"""A download must make progress or let go: the minimum transfer rate every module fetch obeys.

httpx's read timeout only notices a server that goes completely silent; one
that trickles a byte every few seconds resets it forever and holds its
download slot until the total timeout. :class:`MeteredBackend` wraps the
network backend under the module-download client, so every byte read on every
connection (status line and headers included, for http(s), OCI manifests,
blobs and token realms alike) is counted in one place. Once an answer has been
awaited for a full window, the bytes received over the last window must reach
``min_rate`` per second, or the read fails with :class:`TooSlowError`.

The same counts feed whoever listens through :data:`transfer_observer` for the
current task (the resolver's download slots), so a transfer that has stalled
can be recognised without each fetcher reporting it.

Inside :func:`one_grace` (what each fetcher wraps one ``fetch()`` in) every
request of the fetch is judged on one window that starts with the fetch: the
first window is the only grace, so ten redirect hops, a manifest then a blob,
or a token round trip do not each get a fresh one. Waits of our own
(:func:`excused`: backoff sleeps between quick retries, waiting for another
pull of the same image) do not count against the server. Outside it (a
direct client call), each connection judges each request from when it was sent.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpcore

__all__ = [
    "MeteredBackend",
    "RateWindow",
    "TooSlowError",
    "excused",
    "format_rate",
    "one_grace",
    "too_slow",
    "transfer_observer",
]

# Called with the size of every read made on behalf of the current task.
transfer_observer: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "wasmxds_transfer_observer", default=None
)

# The window one whole fetch is judged on, when the fetcher opened one (one_grace).
_fetch_window: contextvars.ContextVar[RateWindow | None] = contextvars.ContextVar(
    "wasmxds_fetch_window", default=None
)

# How many marks a window keeps: finer costs memory, coarser over-counts recent bytes.
_MARKS_PER_WINDOW = 8


def format_rate(bytes_per_second: float) -> str:
    """``1 KiB/s``, ``512 B/s``, ``2.5 MiB/s``: the units the flag accepts."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if bytes_per_second >= size:
            return f"{bytes_per_second / size:g} {unit}/s"
    return f"{bytes_per_second:g} B/s"


class RateWindow:
    """Bytes received over a sliding window, and whether they fall short of a rate.

    No judgement is made until a whole window has passed since :meth:`restart`:
    that is the grace period for connecting and for the server to start answering.
    """

    def __init__(
        self, min_rate: float, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if min_rate < 0:
            raise ValueError(f"minimum rate must not be negative, got {min_rate}")
        if window <= 0:
            raise ValueError(f"rate window must be positive, got {window}")
        self.min_rate = min_rate
        self.window = window
        self._clock = clock
        self._step = window / _MARKS_PER_WINDOW
        self._total = 0
        self._marks: deque[tuple[float, int]] = deque()
        self.restart()

    def restart(self) -> None:
        """Start judging afresh (a new request on a kept-alive connection)."""
        self._marks.clear()
        self._marks.append((self._clock(), self._total))

    def excuse(self, seconds: float) -> None:
        """Leave the last ``seconds`` out, as if they had not passed (a wait of our own)."""
        if seconds > 0:
            self._marks = deque((when + seconds, total) for when, total in self._marks)

    def add(self, count: int) -> None:
        now = self._clock()
        self._total += count
        if now - self._marks[-1][0] >= self._step:
            self._marks.append((now, self._total))
        self._prune(now)

    def shortfall(self) -> tuple[int, float] | None:
        """``(bytes, seconds)`` received over the last window when below the rate, else None."""
        if self.min_rate <= 0:
            return None
        now = self._clock()
        self._prune(now)
        since, received_before = self._marks[0]
        span = now - since
        if span < self.window:
            return None
        received = self._total - received_before
        if received >= self.min_rate * span:
            return None
        return received, span

    def _prune(self, now: float) -> None:
        # Keep exactly one mark at or before the window's start: it is the baseline.
        cutoff = now - self.window
        while len(self._marks) >= 2 and self._marks[1][0] <= cutoff:
            self._marks.popleft()


@contextlib.contextmanager
def one_grace(
    min_rate: float, window: float, clock: Callable[[], float] = time.monotonic
) -> Iterator[RateWindow]:
    """Judge every request made in this block on one window: one grace period per fetch."""
    rate = RateWindow(min_rate, window, clock)
    token = _fetch_window.set(rate)
    try:
        yield rate
    finally:
        _fetch_window.reset(token)


@contextlib.asynccontextmanager
async def excused(clock: Callable[[], float] = time.monotonic) -> AsyncIterator[None]:
    """Time spent in this block (waiting on ourselves) is not held against the server."""
    rate = _fetch_window.get()
    started = clock()
    try:
        yield
    finally:
        if rate is not None:
            rate.excuse(clock() - started)


class TooSlowError(httpcore.ReadTimeout):
    """A server sent less than the minimum rate over a whole window.

    A :class:`httpcore.ReadTimeout` so that the connection is discarded and the
    error travels the same way as other timeouts; :func:`too_slow` finds it again.
    """

    def __init__(self, received: int, seconds: float, min_rate: float) -> None:
        noun = "byte" if received == 1 else "bytes"
        super().__init__(
            f"the server sent {received} {noun} in {seconds:.0f} s, below the minimum rate"
            f" of {format_rate(min_rate)}"
        )
        self.received = received
        self.seconds = seconds
        self.min_rate = min_rate


def too_slow(exc: BaseException) -> TooSlowError | None:
    """The :class:`TooSlowError` behind ``exc`` (httpx wraps it), if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TooSlowError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _MeteredStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, window: RateWindow) -> None:
        self._inner = inner
        self._window = window

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        observer = transfer_observer.get()
        if observer is not None:
            observer(len(data))
        window = _fetch_window.get() or self._window
        window.add(len(data))
        shortfall = window.shortfall()
        if shortfall is not None:
            raise TooSlowError(*shortfall, window.min_rate)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)
        # Without a fetch window, the answer is awaited from the end of the request:
        # an upload, or a connection resting in the pool, is not the server being slow.
        # A fetch window started with the fetch and is never restarted.
        self._window.restart()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # The handshake is bounded by the connect timeout; the meter goes on above TLS.
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _MeteredStream(inner, self._window)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class MeteredBackend(httpcore.AsyncNetworkBackend):
    """Network backend whose connections enforce ``min_rate`` bytes/s over ``window`` s."""

    def __init__(
        self,
        inner: httpcore.AsyncNetworkBackend,
        *,
        min_rate: float,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        RateWindow(min_rate, window)  # validates the numbers once, up front
        self._inner = inner
        self._min_rate = min_rate
        self._window = window
        self._clock = clock

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _MeteredStream(stream, RateWindow(self._min_rate, self._window, self._clock))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _MeteredStream(stream, RateWindow(self._min_rate, self._window, self._clock))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
