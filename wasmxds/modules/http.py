"""Download http(s) modules with Istio's retry rules, a hard size cap, and the SSRF guard.

Parity with Istio's ``HTTPFetcher``: up to 5 attempts with exponential backoff
from 500 ms, retrying transport errors and 5xx except 501, 505 and 511; a 15 s
per-request timeout; gzip/tar unboxing; the sha256 of the *unboxed* bytes is
what ``spec.sha256`` is checked against. Differences, all in the failing-clearly
direction: the size cap raises instead of truncating, the body is streamed and
refused as soon as it passes the cap (or up front from Content-Length), and
every failure says whether a later retry could help (``FetchError.retryable``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import structlog

from wasmxds.errors import (
    BlockedAddressError,
    ChecksumMismatchError,
    FetchError,
    ModuleTooLargeError,
    NotWasmError,
    SettingsError,
)
from wasmxds.modules.backoff import Backoff
from wasmxds.modules.ssrf import AddressResolver, IPNetwork
from wasmxds.modules.transport import guarded_client, tls_verification_failure
from wasmxds.modules.types import ModuleRequest
from wasmxds.modules.unbox import is_wasm, unbox

__all__ = ["DEFAULT_FETCH_BACKOFF", "DEFAULT_MAX_SIZE", "FetcherSettings", "HttpFetcher"]

log = structlog.get_logger(__name__)

# Istio's ISTIO_WASM_MAX_BINARY_SIZE_BYTES default.
DEFAULT_MAX_SIZE = 256 * 1024 * 1024

# Istio starts at 500 ms; 5 tries then wait 0.5 + 1 + 2 + 4 s (±20%) at most.
DEFAULT_FETCH_BACKOFF = Backoff(initial=0.5, factor=2.0, max=8.0, jitter=0.2)

# Retried within one fetch, as Istio does: the server says the fault is its own
# and transient. 501/505/511 are 5xx that no amount of retrying changes.
_PERMANENT_5XX = frozenset({501, 505, 511})
# Not retried within the fetch, but worth retrying later: the module may not be
# published yet (404), access may be granted (401/403), or the server asked us
# to slow down (408/425/429). Every other status is a configuration problem
# that needs a human (400, 405, 410, 501, an unfollowable 3xx...).
_LATER_4XX = frozenset({401, 403, 404, 408, 425, 429})
# Encodings we can undo with a bounded decoder: gzip bodies go through unbox().
_ACCEPTED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip"})
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def _retry_now(status: int) -> bool:
    return 500 <= status <= 599 and status not in _PERMANENT_5XX


def _retry_later(status: int) -> bool:
    return _retry_now(status) or status in _LATER_4XX


@dataclass(frozen=True, slots=True, kw_only=True)
class FetcherSettings:
    """How module downloads behave; the defaults follow Istio's agent where it has one.

    ``total_timeout`` bounds one ``fetch()`` including its retries, so a server
    that trickles bytes cannot hold a download slot forever (Istio uses 30 s,
    too short for a large module on a slow link). ``insecure_hosts`` holds
    ``host`` (any port) or ``host:port`` entries, or ``*``, for which TLS is not
    verified. ``ca_file`` is trusted in addition to the system store, so private
    and public module hosts work side by side. ``blocked_cidrs`` extends the SSRF
    guard (Istio's ``BLOCKED_CIDRS_IN_WASM_FETCH``).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    total_timeout: float | None = 300.0
    tries: int = 5
    backoff: Backoff = DEFAULT_FETCH_BACKOFF
    max_size: int = DEFAULT_MAX_SIZE
    max_redirects: int = 10
    ca_file: Path | None = None
    insecure_hosts: frozenset[str] = frozenset()
    blocked_cidrs: tuple[str | IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise SettingsError(f"fetch tries must be at least 1, got {self.tries}")
        if self.max_size < 1:
            raise SettingsError(f"maximum module size must be positive, got {self.max_size}")


class HttpFetcher:
    """Fetches http(s) modules and returns verified, unboxed Wasm bytes.

    ``address_resolver`` replaces the system's name resolution (tests use it to
    point a name at a metadata address); it defaults to the event loop's getaddrinfo.
    """

    def __init__(
        self,
        *,
        settings: FetcherSettings | None = None,
        address_resolver: AddressResolver | None = None,
    ) -> None:
        self._settings = settings or FetcherSettings()
        # The body is read raw and unboxed under our own size cap (httpx's
        # decoding has none), so gzip is welcome.
        self._client, _ = guarded_client(
            self._settings, accept_encoding="gzip", address_resolver=address_resolver
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, request: ModuleRequest) -> bytes:
        """Download, unbox and verify the module; raise a :class:`ModuleError` subclass if not."""
        shown = request.display_url
        total = self._settings.total_timeout
        try:
            async with asyncio.timeout(total):
                body = await self._download(request.url, shown)
        except TimeoutError as exc:
            if total is None:
                raise  # not our deadline
            raise FetchError(f"{shown}: download did not finish within {total:g} s") from exc
        # Inflating and hashing up to max_size bytes would stall every xDS stream
        # sharing the event loop; zlib and hashlib release the GIL, so a worker helps.
        return await asyncio.to_thread(self._verify, body, request)

    async def _download(self, url: str, shown: str) -> bytes:
        tries = self._settings.tries
        for attempt in range(1, tries + 1):
            try:
                return await self._get(url, shown)
            except _TryAgain as again:
                failure = again
                log.debug("module.fetch_retry", url=shown, attempt=attempt, error=again.detail)
                if attempt < tries:
                    await asyncio.sleep(self._settings.backoff.delay(attempt))
        noun = "attempt" if tries == 1 else "attempts"
        raise FetchError(
            f"{shown}: download failed after {tries} {noun}: {failure.detail}"
        ) from failure.__cause__

    async def _get(self, url: str, shown: str) -> bytes:
        """One GET; raises _TryAgain for failures Istio retries at once, else a ModuleError."""
        try:
            async with self._client.stream("GET", url) as response:
                return await self._read_body(response, shown)
        except BlockedAddressError as exc:
            raise BlockedAddressError(f"{shown}: {exc}") from exc
        except httpx.TooManyRedirects as exc:
            raise FetchError(
                f"{shown}: more than {self._settings.max_redirects} redirects", retryable=False
            ) from exc
        except httpx.TimeoutException as exc:
            raise _TryAgain(self._describe_timeout(exc)) from exc
        except httpx.UnsupportedProtocol as exc:
            raise FetchError(f"{shown}: {_scrub(str(exc))}", retryable=False) from exc
        except httpx.TransportError as exc:
            reason = tls_verification_failure(exc)
            if reason is not None:
                # Retrying within seconds cannot fix a certificate; a later retry might.
                raise FetchError(
                    f"{shown}: TLS certificate verification failed ({reason}); trust the"
                    " server's CA with a CA file or list the host as an insecure registry"
                ) from exc
            raise _TryAgain(_describe(exc)) from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{shown}: {_describe(exc)}", retryable=False) from exc
        except httpx.InvalidURL as exc:
            raise FetchError(f"{shown}: invalid URL: {_scrub(str(exc))}", retryable=False) from exc

    async def _read_body(self, response: httpx.Response, shown: str) -> bytes:
        status = response.status_code
        if status != httpx.codes.OK:
            detail = f"HTTP {status} {response.reason_phrase}".rstrip()
            if _retry_now(status):
                raise _TryAgain(detail)
            raise FetchError(f"{shown}: {detail}", retryable=_retry_later(status))
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in _ACCEPTED_ENCODINGS:
            raise FetchError(
                f"{shown}: server sent unsupported Content-Encoding {encoding!r}", retryable=False
            )
        limit = self._settings.max_size
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise ModuleTooLargeError(
                f"{shown}: server announces {declared} bytes, over the {limit}-byte limit"
            )
        body = bytearray()
        # Raw bytes: httpx's own gzip decoding is unbounded; unbox() inflates with a cap.
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:
                raise ModuleTooLargeError(f"{shown}: body exceeds the {limit}-byte limit")
        return bytes(body)

    def _verify(self, body: bytes, request: ModuleRequest) -> bytes:
        shown = request.display_url
        try:
            data = unbox(body, max_size=self._settings.max_size)
        except ModuleTooLargeError as exc:
            raise ModuleTooLargeError(f"{shown}: {exc}") from exc
        if not is_wasm(data):
            raise NotWasmError(
                f"{shown}: the {len(body)} bytes downloaded are not a Wasm module"
                f" (they start with {body[:8]!r}, not b'\\x00asm')"
            )
        if request.sha256:
            actual = hashlib.sha256(data).hexdigest()
            expected = request.sha256.strip().lower()
            if actual != expected:
                raise ChecksumMismatchError(
                    f"{shown}: module has sha256 {actual}, but the plugin expects {expected}"
                )
        return data

    def _describe_timeout(self, exc: httpx.TimeoutException) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            return f"connecting timed out after {self._settings.connect_timeout:g} s"
        if isinstance(exc, httpx.ReadTimeout):
            return f"no data for {self._settings.read_timeout:g} s (read timeout)"
        return _describe(exc)


class _TryAgain(Exception):
    """One attempt failed in a way Istio retries at once; internal to this module."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _describe(exc: Exception) -> str:
    message = _scrub(str(exc))
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def _scrub(message: str) -> str:
    """Drop any ``user:password@`` a library put in a message (a redirect target, say)."""
    return _USERINFO.sub("", message)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # malformed: the streaming cap still applies
