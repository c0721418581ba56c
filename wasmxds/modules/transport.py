"""TLS choices shared by every module download: verified, trusted-on-request, or plain HTTP.

Both fetchers (http(s) and OCI) send every request through :class:`TlsRouter`:
the verifying pool for ordinary hosts, the non-verifying one only for hosts the
operator listed with ``--insecure-registry``. Both pools sit on the SSRF-guarded
transport, so the choice of TLS never bypasses the address guard.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpcore
import httpx

from wasmxds import __version__
from wasmxds.errors import SettingsError
from wasmxds.modules.progress import MeteredBackend
from wasmxds.modules.ssrf import AddressGuard, AddressResolver, GuardedTransport

if TYPE_CHECKING:
    from wasmxds.modules.settings import FetcherSettings

__all__ = [
    "DEFAULT_PORTS",
    "InsecureHosts",
    "TlsRouter",
    "guarded_client",
    "parse_insecure_host",
    "plain_http_answer",
    "tls_verification_failure",
    "trusting_context",
    "verifying_context",
]

DEFAULT_PORTS = {"http": 80, "https": 443}
# OpenSSL's words for "the peer answered the ClientHello with something that is
# not TLS", which is what a plain-HTTP server's "HTTP/1.1 400" looks like.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})


def verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    """System trust, plus ``ca_file`` when given (private and public hosts side by side)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot load CA file {ca_file}: {exc}") from exc
    return context


def trusting_context() -> ssl.SSLContext:
    # Only used for hosts the operator explicitly listed as insecure registries.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _ssl_errors(exc: BaseException) -> Iterable[ssl.SSLError]:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            yield seen
        seen = seen.__cause__ or seen.__context__


def tls_verification_failure(exc: BaseException) -> str | None:
    """Why the server's certificate was rejected, when that is what ``exc`` is about."""
    for error in _ssl_errors(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            return str(error.verify_message or error.reason or "certificate rejected")
    return None


def plain_http_answer(exc: BaseException) -> bool:
    """True when a TLS handshake failed because the server speaks plain HTTP."""
    return any(error.reason in _NOT_TLS_REASONS for error in _ssl_errors(exc))


class InsecureHosts:
    """Hosts whose TLS certificates are not verified (``--insecure-registry``).

    Istio compares the entry with the URL's ``host[:port]`` verbatim; here a bare
    ``host`` covers every port of that host, and ``host:port`` also matches a URL
    that leaves the scheme's default port implicit.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self._everything = False
        self._hosts: set[str] = set()
        self._host_ports: set[tuple[str, int]] = set()
        for entry in entries:
            host, port = parse_insecure_host(entry)
            if host == "*":
                self._everything = True
            elif port is None:
                self._hosts.add(host)
            else:
                self._host_ports.add((host, port))

    def __bool__(self) -> bool:
        return self._everything or bool(self._hosts) or bool(self._host_ports)

    def matches(self, url: httpx.URL) -> bool:
        return self.matches_host(url.host, url.port or DEFAULT_PORTS.get(url.scheme))

    def matches_host(self, host: str, port: int | None) -> bool:
        host = host.lower().strip("[]")
        if self._everything or host in self._hosts:
            return True
        return port is not None and (host, port) in self._host_ports


def parse_insecure_host(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address, or ``*``."""
    text = entry.strip().lower()
    if text == "*":
        return "*", None
    if text.count(":") > 1 and not text.startswith("["):
        # Only a bare IPv6 address has several colons and no brackets.
        try:
            return str(ipaddress.IPv6Address(text)), None
        except ValueError as exc:
            raise SettingsError(f"insecure registry {entry!r} is not HOST or HOST:PORT") from exc
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SettingsError(f"insecure registry {entry!r} is not HOST or HOST:PORT") from exc
    if not host:
        raise SettingsError(f"insecure registry {entry!r} is not HOST or HOST:PORT")
    return host, port


class TlsRouter(httpx.AsyncBaseTransport):
    """Sends each request (redirect hops included) to the verifying or the trusting pool."""

    def __init__(
        self,
        verified: GuardedTransport,
        unverified: GuardedTransport | None,
        insecure: InsecureHosts,
    ) -> None:
        self._verified = verified
        self._unverified = unverified
        self._insecure = insecure

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._verified
        if self._unverified is not None and self._insecure.matches(request.url):
            transport = self._unverified
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._verified.aclose()
        if self._unverified is not None:
            await self._unverified.aclose()


def guarded_client(
    settings: FetcherSettings,
    *,
    accept_encoding: str,
    address_resolver: AddressResolver | None = None,
) -> tuple[httpx.AsyncClient, InsecureHosts]:
    """The HTTP client every module download uses, and the insecure hosts it routes.

    Every connection goes through the address guard; TLS is verified except for
    ``--insecure-registry`` hosts; redirects are bounded. Every connection must
    also make progress: connecting within ``connect_timeout``, never silent for
    ``read_timeout``, and at least ``min_rate`` bytes/s over each ``rate_window``
    (:mod:`wasmxds.modules.progress`), so a trickling server lets go of its slot.
    """
    guard = AddressGuard(settings.blocked_cidrs)
    insecure = InsecureHosts(settings.insecure_hosts)

    def transport(context: ssl.SSLContext) -> GuardedTransport:
        metered = MeteredBackend(
            httpcore.AnyIOBackend(), min_rate=settings.min_rate, window=settings.rate_window
        )
        return GuardedTransport(
            guard=guard,
            ssl_context=context,
            resolver=address_resolver,
            inner=metered,
            max_connections=settings.max_connections,
        )

    verified = transport(verifying_context(settings.ca_file))
    unverified = transport(trusting_context()) if insecure else None
    client = httpx.AsyncClient(
        transport=TlsRouter(verified, unverified, insecure),
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        follow_redirects=True,
        max_redirects=settings.max_redirects,
        # No proxies or .netrc from the environment: they bypass the guard or add secrets.
        trust_env=False,
        headers={"User-Agent": f"wasmxds/{__version__}", "Accept-Encoding": accept_encoding},
    )
    return client, insecure
