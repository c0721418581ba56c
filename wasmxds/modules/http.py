"""Download http(s) modules with Istio's retry rules, a hard size cap, and the SSRF guard.

Parity with Istio's ``HTTPFetcher``: up to 5 attempts with exponential backoff
from 500 ms, retrying transport errors and 5xx except 501, 505 and 511; a 15 s
per-request timeout; gzip/tar unboxing; the sha256 of the *unboxed* bytes is
what ``spec.sha256`` is checked against. Differences, all in the failing-clearly
direction: the size cap raises instead of truncating, the body is streamed to
the store's directory and refused as soon as it passes the cap (or up front
from Content-Length), and every failure says whether a later retry could help
(``ModuleError.retryable``). The retry loop, the error translation, the slow
host and timeout rules are :mod:`wasmxds.modules.download`'s, shared with the
OCI client.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx

from wasmxds.errors import (
    ChecksumMismatchError,
    FetchError,
    ModuleError,
    ModuleTooLargeError,
    NotWasmError,
)
from wasmxds.modules.download import (
    Downloader,
    Saved,
    TryAgain,
    describe,
    httpx_errors,
    retry_later,
    retry_now,
    retrying,
    save_capped,
)
from wasmxds.modules.progress import one_grace
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.transport import tls_verification_failure
from wasmxds.modules.types import Fetched, Module, ModuleRequest
from wasmxds.modules.unbox import is_wasm, read_header, unbox

__all__ = ["HttpFetcher"]

# Encodings we can undo with a bounded decoder: gzip bodies go through unbox().
_ACCEPTED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip"})


class HttpFetcher(Downloader):
    """Fetches http(s) modules into the module store, verified and unboxed.

    The body is written to a file in the store's directory while it arrives
    (hashed on the way), so a module is never held in memory whole when it is
    sent as plain Wasm; a gzip or tar box is opened from that file with the
    caps of :func:`~wasmxds.modules.unbox.unbox`. ``address_resolver``
    replaces the system's name resolution (tests use it to point a name at a
    metadata address); it defaults to the event loop's getaddrinfo.
    """

    def __init__(
        self,
        *,
        store: ModuleStore,
        settings: FetcherSettings | None = None,
        address_resolver: AddressResolver | None = None,
    ) -> None:
        # The body is read raw and unboxed under our own size cap (httpx's
        # decoding has none), so gzip is welcome.
        super().__init__(
            settings or FetcherSettings(),
            accept_encoding="gzip",
            address_resolver=address_resolver,
        )
        self._store = store

    async def fetch(self, request: ModuleRequest) -> Fetched:
        """Download, unbox, verify and store the module; raise a :class:`ModuleError` if not."""
        display_url = request.display_url
        settings = self.settings
        total = settings.total_timeout
        spool = await self._store.spool()
        try:
            with one_grace(settings.min_rate, settings.rate_window):
                async with asyncio.timeout(total):
                    saved = await retrying(
                        lambda: self._get(request.url, display_url, spool),
                        settings=settings,
                        url=display_url,
                        summary=lambda detail, tries: f"download failed after {tries}: {detail}",
                    )
        except TimeoutError as exc:
            if total is None:
                raise  # not our deadline
            raise FetchError(
                f"download did not finish within {total:g} s", url=display_url
            ) from exc
        try:
            return Fetched(await self._keep(saved, request))
        except ModuleError as exc:
            exc.about(display_url)
            raise
        finally:
            await asyncio.to_thread(saved.path.unlink, missing_ok=True)

    async def _get(self, url: str, display_url: str, spool: Path) -> Saved:
        """One GET; raises TryAgain for failures Istio retries at once, else a ModuleError."""
        with httpx_errors(display_url, self.settings, unreachable=_unreachable):
            async with self.http.stream("GET", url) as response:
                return await self._save_body(response, spool)

    async def _save_body(self, response: httpx.Response, spool: Path) -> Saved:
        status = response.status_code
        if status != httpx.codes.OK:
            detail = f"HTTP {status} {response.reason_phrase}".rstrip()
            if retry_now(status):
                raise TryAgain(detail)
            raise FetchError(detail, retryable=retry_later(status))
        limit = self.settings.max_size

        def too_large(announced: int | None) -> ModuleError:
            if announced is not None:
                return ModuleTooLargeError(
                    f"server announces {announced} bytes, over the {limit}-byte limit"
                )
            return ModuleTooLargeError(f"body exceeds the {limit}-byte limit")

        return await save_capped(response, spool, limit, too_large, encodings=_ACCEPTED_ENCODINGS)

    async def _keep(self, saved: Saved, request: ModuleRequest) -> Module:
        head = await asyncio.to_thread(read_header, saved.path)
        if is_wasm(head):
            # Sent as plain Wasm: the body's digest is the module's, and the file is it.
            self._check_sha256(saved.digest, request)
            return await self._store.adopt(saved.path, saved.digest)
        # Inflating and hashing up to max_size bytes would stall every xDS stream
        # sharing the event loop; zlib and hashlib release the GIL, so a worker helps.
        data = await asyncio.to_thread(self._unbox, saved, request)
        return await self._store.put(data)

    def _unbox(self, saved: Saved, request: ModuleRequest) -> bytes:
        body = saved.path.read_bytes()
        data = unbox(body, max_size=self.settings.max_size)
        if not is_wasm(data):
            raise NotWasmError(
                f"the {len(body)} bytes downloaded are not a Wasm module"
                f" (they start with {body[:8]!r}, not b'\\x00asm')"
            )
        self._check_sha256(hashlib.sha256(data).hexdigest(), request)
        return data

    @staticmethod
    def _check_sha256(actual: str, request: ModuleRequest) -> None:
        expected = request.sha256.strip().lower()
        if expected and actual != expected:
            raise ChecksumMismatchError(
                f"module has sha256 {actual}, but the plugin expects {expected}"
            )


def _unreachable(exc: httpx.TransportError) -> BaseException:
    reason = tls_verification_failure(exc)
    if reason is not None:
        # Retrying within seconds cannot fix a certificate; a later retry might.
        return FetchError(
            f"TLS certificate verification failed ({reason}); trust the server's CA with"
            " a CA file or list the host as an insecure registry"
        )
    return TryAgain(describe(exc))
