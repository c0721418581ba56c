"""The download core both fetchers share: retry rules, capped reads, error translation.

- :func:`httpx_errors` turns httpx's exceptions into ours at the boundary (as
  httpx's own ``map_httpcore_exceptions`` does for httpcore), naming the URL.
- :func:`retrying` runs one request up to ``tries`` times while it raises
  :class:`TryAgain` (what Istio retries at once: transport errors and 5xx but
  501/505/511), with backoff that does not count against the transfer rate.
- :func:`read_capped` reads a body under a size cap, refusing it up front from
  Content-Length when it can; :func:`save_capped` does the same into a file,
  hashing as it goes, so a large module is never held in memory.

A host below the minimum transfer rate, or one that times out (silent for the
idle timeout, not connecting or finishing the TLS handshake within the connect
timeout), fails at once without the quick retries: it has just had its whole
timeout to answer, and retrying inside the download slot would hold that slot
for ``tries`` timeouts. The resolver retries it later with its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, TypeVar

import httpx
import structlog

from wasmxds.errors import CacheWriteError, FetchError, ModuleError
from wasmxds.modules.progress import excused, too_slow
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.transport import guarded_client

__all__ = [
    "IDENTITY",
    "SLOW_HINT",
    "Downloader",
    "Saved",
    "TryAgain",
    "describe",
    "httpx_errors",
    "read_capped",
    "retry_later",
    "retry_now",
    "retrying",
    "save_capped",
    "scrub",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Retried within one fetch, as Istio does: the server says the fault is its own
# and transient. 501/505/511 are 5xx that no amount of retrying changes.
_PERMANENT_5XX = frozenset({501, 505, 511})
# Not retried within the fetch, but worth retrying later: the module may not be
# published yet (404), access may be granted (401/403), or the server asked us
# to slow down (408/425/429). Every other status is a configuration problem
# that needs a human (400, 405, 410, 501, an unfollowable 3xx...).
_LATER_4XX = frozenset({401, 403, 404, 408, 425, 429})
# No transfer encoding: what is hashed is what was sent.
IDENTITY = frozenset({"", "identity"})
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
# What to do about a host below the minimum rate, for every fetcher's message.
SLOW_HINT = "check the host, or lower --fetch-min-rate (0 turns the check off)"
# Written to disk in slices this large, each in a worker thread.
_WRITE_SLICE = 1 << 20


class Downloader:
    """One SSRF-guarded connection pool (``http``) and the settings it was built from;
    ``async with`` closes the pool."""

    def __init__(
        self,
        settings: FetcherSettings,
        *,
        accept_encoding: str,
        address_resolver: AddressResolver | None,
    ) -> None:
        self.settings = settings
        self.http, self.insecure = guarded_client(
            settings, accept_encoding=accept_encoding, address_resolver=address_resolver
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()


def retry_now(status: int) -> bool:
    """A status Istio retries within the fetch: the server's own, transient fault."""
    return 500 <= status <= 599 and status not in _PERMANENT_5XX


def retry_later(status: int) -> bool:
    """A status a later fetch may not see again (so the failure is ``retryable``)."""
    return retry_now(status) or status in _LATER_4XX


class TryAgain(Exception):
    """One attempt failed in a way worth retrying at once; only :func:`retrying` sees it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def retrying(
    once: Callable[[], Awaitable[T]],
    *,
    settings: FetcherSettings,
    url: str,
    summary: Callable[[str, str], str],
) -> T:
    """``once()``, again while it raises :class:`TryAgain`, up to ``settings.tries`` times.

    When every try failed, the :class:`FetchError` says ``summary(detail, "N attempts")``.
    """
    tries = settings.tries
    for attempt in range(1, tries + 1):
        try:
            return await once()
        except TryAgain as again:
            failure = again
            log.debug("module.fetch_retry", url=url, attempt=attempt, error=again.detail)
            if attempt < tries:
                async with excused():
                    await asyncio.sleep(settings.backoff.delay(attempt))
    noun = "attempt" if tries == 1 else "attempts"
    raise FetchError(summary(failure.detail, f"{tries} {noun}"), url=url) from failure.__cause__


@contextlib.contextmanager
def httpx_errors(
    url: str,
    settings: FetcherSettings,
    *,
    unreachable: Callable[[httpx.TransportError], BaseException],
    where: str = "",
) -> Iterator[None]:
    """Translate httpx's errors (and name ``url`` on ours) inside the block.

    ``where`` (a request, a token service) leads the detail when the URL alone
    does not say which request failed. ``unreachable`` decides what a transport
    failure that is not a timeout becomes: a :class:`TryAgain`, or a
    :class:`FetchError` saying what to change (a TLS certificate).
    """
    lead = f"{where}: " if where else ""
    try:
        yield
    except ModuleError as exc:
        exc.about(url)
        raise
    except httpx.TooManyRedirects as exc:
        raise FetchError(
            f"{lead}more than {settings.max_redirects} redirects", url=url, retryable=False
        ) from exc
    except httpx.TimeoutException as exc:
        # Silent, too slow or not answering the handshake: it just had its whole
        # timeout to prove itself. Retrying at once would hold the download slot
        # for tries times the timeout; the resolver's backoff retries it later instead.
        slow = too_slow(exc)
        detail = f"{slow}; {SLOW_HINT}" if slow is not None else _timeout_detail(exc, settings)
        raise FetchError(lead + detail, url=url) from exc
    except httpx.UnsupportedProtocol as exc:
        raise FetchError(lead + scrub(str(exc)), url=url, retryable=False) from exc
    except httpx.TransportError as exc:
        error = unreachable(exc)
        if isinstance(error, ModuleError):
            error.about(url)
        raise error from exc
    except httpx.HTTPError as exc:
        raise FetchError(lead + describe(exc), url=url, retryable=False) from exc
    except httpx.InvalidURL as exc:
        raise FetchError(f"{lead}invalid URL: {scrub(str(exc))}", url=url, retryable=False) from exc


def _timeout_detail(exc: httpx.TimeoutException, settings: FetcherSettings) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return (
            f"connecting timed out after {settings.connect_timeout:g} s (--fetch-connect-timeout)"
        )
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data for {settings.read_timeout:g} s (read timeout, --fetch-idle-timeout)"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no free connection for {settings.read_timeout:g} s (too many downloads at once)"
    return describe(exc)


def describe(exc: Exception) -> str:
    """``Name: message`` of a third-party error, without credentials."""
    message = scrub(str(exc))
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def scrub(message: str) -> str:
    """Drop any ``user:password@`` a library put in a message (a redirect target, say)."""
    return _USERINFO.sub("", message)


def _check_encoding(response: httpx.Response, encodings: frozenset[str]) -> None:
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in encodings:
        raise FetchError(
            f"the server sent unsupported Content-Encoding {encoding!r}", retryable=False
        )


def _declared(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    # Malformed or absent: the streaming cap still applies.
    return int(value) if value.isdigit() else None


async def _capped(
    response: httpx.Response,
    limit: int,
    too_large: Callable[[int | None], ModuleError],
    encodings: frozenset[str],
) -> AsyncGenerator[bytes]:
    """The raw body's chunks, refused with ``too_large(announced size or None)`` past
    ``limit`` bytes: up front from Content-Length when it says so, else as they arrive.

    Raw: httpx's own decoding has no cap; callers that accept gzip unbox it with one.
    """
    _check_encoding(response, encodings)
    declared = _declared(response)
    if declared is not None and declared > limit:
        raise too_large(declared)
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise too_large(None)
        yield chunk


async def read_capped(
    response: httpx.Response,
    limit: int,
    too_large: Callable[[int | None], ModuleError],
    *,
    encodings: frozenset[str] = IDENTITY,
) -> bytes:
    """A small body (a manifest, a token, an error document) in memory, capped."""
    async with contextlib.aclosing(_capped(response, limit, too_large, encodings)) as chunks:
        return b"".join([chunk async for chunk in chunks])


@dataclass(frozen=True, slots=True)
class Saved:
    """A body written to ``path`` (a temporary file the caller now owns)."""

    path: Path
    digest: str
    size: int


async def save_capped(
    response: httpx.Response,
    directory: Path,
    limit: int,
    too_large: Callable[[int | None], ModuleError],
    *,
    encodings: frozenset[str] = IDENTITY,
) -> Saved:
    """A body of any size into a new ``.tmp-*`` file in ``directory``, hashed as it arrives.

    The file is in the directory the module store renames into, so keeping it
    is a rename; on any failure it is removed. Writes go to a worker thread in
    slices, so a slow disk does not stall the event loop.
    """
    hasher = hashlib.sha256()
    try:
        path, out = await asyncio.to_thread(_open_temporary, directory)
    except OSError as exc:
        raise CacheWriteError(f"cannot write the download to {directory}: {exc}") from exc
    size = 0
    try:
        pending = bytearray()
        async with contextlib.aclosing(_capped(response, limit, too_large, encodings)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                pending += chunk
                if len(pending) >= _WRITE_SLICE:
                    await asyncio.to_thread(_write, out, hasher.update, bytes(pending))
                    pending.clear()
        await asyncio.to_thread(_write, out, hasher.update, bytes(pending))
        await asyncio.to_thread(out.close)
    except BaseException as exc:
        out.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if isinstance(exc, OSError):
            raise CacheWriteError(f"cannot write the download to {directory}: {exc}") from exc
        raise
    return Saved(path, hasher.hexdigest(), size)


def _open_temporary(directory: Path) -> tuple[Path, BinaryIO]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    return Path(name), os.fdopen(fd, "wb")


def _write(out: BinaryIO, update: Callable[[bytes], None], data: bytes) -> None:
    update(data)
    out.write(data)
