"""SSRF guard for module downloads: never connect to link-local or cloud-metadata addresses.

A WasmPlugin author controls the module URL, and wasmxds usually runs with more
network reach than that author (on a cloud VM, next to the instance metadata
service). Like Istio's ``BlockedIPDialContext``, the check runs at connect time on
the *resolved* IP, so it covers redirect hops and DNS names that point at a
blocked address; checking the URL string alone would miss both.

Loopback and private ranges stay allowed, as in Istio: in-cluster registries and
file servers are legitimate module hosts. Operators can block more with
``blocked_cidrs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

import httpcore
import httpx

from wasmxds.errors import BlockedAddressError, SettingsError

__all__ = [
    "AddressGuard",
    "AddressResolver",
    "GuardedNetworkBackend",
    "GuardedTransport",
    "IPNetwork",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> IP address strings; the default uses the event loop's getaddrinfo.
AddressResolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Outside link-local but reserved by their provider for instance metadata only:
# Alibaba Cloud (in RFC 6598 shared space) and AWS IMDS over IPv6 (in ULA space).
_CLOUD_METADATA = (
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::/32"),
)
_IPV4_LINK_LOCAL_MULTICAST = ipaddress.ip_network("224.0.0.0/24")
_IPV6_LINK_LOCAL_SCOPE = 0x2
_PORT_LIMIT = 1 << 16


class AddressGuard:
    """Decides which resolved IP addresses module downloads may connect to."""

    def __init__(self, blocked_cidrs: Iterable[str | IPNetwork] = ()) -> None:
        self._extra: tuple[IPNetwork, ...] = tuple(_parse_cidr(c) for c in blocked_cidrs)

    def reason(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is blocked, or None when connecting to it is allowed."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:169.254.169.254 reaches the same host as 169.254.169.254.
            ip = ip.ipv4_mapped
        if ip.is_link_local:
            return "link-local address"
        if _is_link_local_multicast(ip):
            return "link-local multicast address"
        if any(ip in net for net in _CLOUD_METADATA):
            return "known cloud metadata address"
        for net in self._extra:
            if ip.version == net.version and ip in net:
                return f"in blocked range {net}"
        return None

    def check(self, host: str, address: str) -> None:
        """Raise :class:`BlockedAddressError` naming ``host`` and ``address`` if blocked."""
        why = self.reason(address)
        if why is None:
            return
        shown = address if address == host else f"{host} ({address})"
        raise BlockedAddressError(f"refusing to connect to {shown}: {why}")


def _parse_cidr(value: str | IPNetwork) -> IPNetwork:
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise SettingsError(f"blocked CIDR {value!r} is not a valid network: {exc}") from exc


def _is_link_local_multicast(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip in _IPV4_LINK_LOCAL_MULTICAST
    # ff02::/16 and its flag variants (ff12::, ff32::...): the low nibble is the scope.
    return ip.is_multicast and ip.packed[1] & 0x0F == _IPV6_LINK_LOCAL_SCOPE


async def _system_resolve(host: str, port: int) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore backend that resolves the host itself and vets every address.

    Every address the name resolves to must pass the guard before any is
    dialled: a name that resolves to a metadata address *and* a public one is
    treated as hostile rather than dialled in the hope that the public one wins.
    TLS still verifies the original host name, because httpcore passes it to
    ``start_tls`` separately from the address we connect to.
    """

    def __init__(
        self,
        guard: AddressGuard,
        *,
        resolver: AddressResolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._guard = guard
        self._resolve = resolver or _system_resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not 0 < port < _PORT_LIMIT:
            # anyio would fail on this deep inside a task group; say what is wrong.
            raise httpcore.ConnectError(f"invalid port {port} for {host}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                found = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(found))
        for address in addresses:
            self._guard.check(host, address)
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        if last_error is not None:
            raise last_error
        raise httpcore.ConnectError(f"{host} resolved to no addresses")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("module downloads never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every TCP connection goes through the SSRF guard.

    Why not ``httpx.AsyncHTTPTransport``: in httpx 0.28 it takes no network
    backend, and swapping its private ``_pool`` would break silently on an httpx
    upgrade. Building the ``httpcore.AsyncConnectionPool`` here with
    ``network_backend=`` uses only documented extension points (httpx's
    transport API, httpcore's network backends); the price is translating
    httpcore's exceptions into httpx's, which the client and callers expect.
    No proxy support: through a proxy the guard would vet the proxy, not the
    module host.
    """

    def __init__(
        self,
        *,
        guard: AddressGuard,
        ssl_context: ssl.SSLContext,
        resolver: AddressResolver | None = None,
        max_connections: int = 10,
        keepalive_expiry: float = 5.0,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        # ``inner`` dials the addresses the guard allowed (the rate meter, in production).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=GuardedNetworkBackend(guard, resolver=resolver, inner=inner),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            core_response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.aiter_stream():
                yield chunk

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._response.aclose()


# Most specific first: the first isinstance match wins.
_ERROR_MAP: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _ERROR_MAP:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise  # ours (BlockedAddressError) and anything unexpected pass through unchanged
