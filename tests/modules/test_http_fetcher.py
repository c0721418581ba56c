"""HttpFetcher against real loopback servers: retries, caps, unboxing, checks, TLS, SSRF."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.modules.conftest import WASM, ModuleServer, fetch_bytes
from tests.modules.trickle import raw_servers
from wasmxds import __version__
from wasmxds.backoff import Backoff
from wasmxds.errors import (
    BlockedAddressError,
    ChecksumMismatchError,
    FetchError,
    ModuleError,
    ModuleTooLargeError,
    NotWasmError,
    SettingsError,
)
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest, redact_url

LIMIT = 64 * 1024
FAST = FetcherSettings(
    tries=3,
    backoff=Backoff(initial=0.001, factor=2.0, max=0.004),
    connect_timeout=5.0,
    read_timeout=5.0,
    max_size=LIMIT,
)

MakeFetcher = Callable[..., HttpFetcher]


@pytest.fixture
async def make_fetcher(module_store: ModuleStore) -> AsyncIterator[MakeFetcher]:
    """Build fetchers from FAST with overrides; all are closed at teardown."""
    made: list[HttpFetcher] = []

    def make(*, address_resolver: AddressResolver | None = None, **overrides: Any) -> HttpFetcher:
        fetcher = HttpFetcher(
            store=module_store,
            settings=dataclasses.replace(FAST, **overrides),
            address_resolver=address_resolver,
        )
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """Start plain TCP servers speaking hand-written HTTP; returns their ports."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await handler(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def request(url: str, sha256: str = "") -> ModuleRequest:
    return ModuleRequest(url=url, sha256=sha256)


# ------------------------------------------------------------------ success paths


async def test_plain_module_is_fetched(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """A 200 with Wasm bytes returns them, and the request identifies wasmxds."""
    url = server.serve("/m.wasm")
    assert await fetch_bytes(make_fetcher(), request(url)) == WASM
    sent = server.requests[0].headers
    assert sent["User-Agent"] == f"wasmxds/{__version__}"
    assert "gzip" in sent["Accept-Encoding"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(gzip.compress(WASM), {}, id="wasm.gz"),
        pytest.param(gzip.compress(gzip.compress(WASM)), {}, id="double-gzip"),
        pytest.param(gzip.compress(WASM), {"Content-Encoding": "gzip"}, id="content-encoding"),
    ],
)
async def test_compressed_modules_are_unboxed(
    server: ModuleServer, make_fetcher: MakeFetcher, body: bytes, headers: dict[str, str]
) -> None:
    """gzip layers, including a gzip Content-Encoding, are peeled off before returning."""
    url = server.serve("/m", body, headers=headers)
    assert await fetch_bytes(make_fetcher(), request(url)) == WASM


async def test_tar_gz_module_is_unboxed(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """A tar.gz bundle yields its first file."""
    from tests.modules.test_unbox import make_tar

    url = server.serve("/plugin.tar.gz", gzip.compress(make_tar(("plugin.wasm", WASM))))
    assert await fetch_bytes(make_fetcher(), request(url)) == WASM


async def test_redirect_is_followed(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """A 302 to another path is followed and the target's bytes returned."""
    target = server.serve("/real.wasm")

    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target)

    url = server.route("/latest", redirect)
    assert await fetch_bytes(make_fetcher(), request(url)) == WASM
    assert (server.hits["/latest"], server.hits["/real.wasm"]) == (1, 1)


# ------------------------------------------------------------------ verification


async def test_sha256_match_is_accepted(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """The sha256 of the unboxed bytes is what is compared, case-insensitively."""
    url = server.serve("/m.wasm.gz", gzip.compress(WASM))
    digest = hashlib.sha256(WASM).hexdigest().upper()
    assert await fetch_bytes(make_fetcher(), request(url, digest)) == WASM


async def test_sha256_mismatch_names_both_digests(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A mismatch raises ChecksumMismatchError carrying the actual and expected digests."""
    url = server.serve("/m.wasm")
    expected = "ab" * 32
    with pytest.raises(ChecksumMismatchError) as caught:
        await make_fetcher().fetch(request(url, expected))
    message = str(caught.value)
    assert hashlib.sha256(WASM).hexdigest() in message
    assert expected in message
    assert url in message


async def test_non_wasm_body_is_rejected(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """An HTML page served with 200 is NotWasmError, showing what it starts with."""
    url = server.serve("/m.wasm", b"<html>login page</html>")
    with pytest.raises(NotWasmError, match="<html>"):
        await make_fetcher().fetch(request(url))


# ------------------------------------------------------------------ statuses and retries


async def test_503_is_retried_until_success(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """Two 503s then a 200: the fetch succeeds on the third request."""

    async def flaky(_: web.Request) -> web.StreamResponse:
        if server.hits["/m.wasm"] < 3:
            return web.Response(status=503)
        return web.Response(body=WASM)

    url = server.route("/m.wasm", flaky)
    assert await fetch_bytes(make_fetcher(), request(url)) == WASM
    assert server.hits["/m.wasm"] == 3


async def test_persistent_5xx_gives_up_after_tries(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A 500 every time uses all tries, then fails retryable, naming the status."""
    url = server.serve("/m.wasm", b"", status=500)
    with pytest.raises(FetchError, match=r"after 3 attempts: HTTP 500") as caught:
        await make_fetcher().fetch(request(url))
    assert caught.value.retryable
    assert server.hits["/m.wasm"] == 3


@pytest.mark.parametrize("status", [501, 505, 511])
async def test_permanent_5xx_is_not_retried(
    server: ModuleServer, make_fetcher: MakeFetcher, status: int
) -> None:
    """501/505/511 fail on the first request, marked not retryable (Istio's rule)."""
    url = server.serve("/m.wasm", b"", status=status)
    with pytest.raises(FetchError, match=f"HTTP {status}") as caught:
        await make_fetcher().fetch(request(url))
    assert not caught.value.retryable
    assert server.hits["/m.wasm"] == 1


@pytest.mark.parametrize("status", [401, 403, 404, 429])
async def test_client_errors_fail_at_once_but_are_retryable_later(
    server: ModuleServer, make_fetcher: MakeFetcher, status: int
) -> None:
    """404/403/429...: one request only, but a later background retry may succeed."""
    url = server.serve("/m.wasm", b"", status=status)
    with pytest.raises(FetchError, match=f"HTTP {status}") as caught:
        await make_fetcher().fetch(request(url))
    assert caught.value.retryable
    assert server.hits["/m.wasm"] == 1


@pytest.mark.parametrize("status", [400, 410])
async def test_other_client_errors_are_permanent(
    server: ModuleServer, make_fetcher: MakeFetcher, status: int
) -> None:
    """A 400 or 410 needs a human: not retried, not retryable."""
    url = server.serve("/m.wasm", b"", status=status)
    with pytest.raises(FetchError) as caught:
        await make_fetcher().fetch(request(url))
    assert not caught.value.retryable
    assert server.hits["/m.wasm"] == 1


async def test_connection_refused_is_retried_then_fails(make_fetcher: MakeFetcher) -> None:
    """With nothing listening, every try fails to connect and the error says how often."""
    url = f"http://127.0.0.1:{closed_port()}/m.wasm"
    with pytest.raises(FetchError, match=r"after 3 attempts: ConnectError") as caught:
        await make_fetcher().fetch(request(url))
    assert caught.value.retryable


async def test_dropped_connections_are_retried(
    raw_server: Callable[[RawHandler], Awaitable[int]], make_fetcher: MakeFetcher
) -> None:
    """A server that hangs up without answering is retried; each try is a new connection."""
    connections = 0

    async def hang_up(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1

    port = await raw_server(hang_up)
    with pytest.raises(FetchError, match="after 3 attempts"):
        await make_fetcher().fetch(request(f"http://127.0.0.1:{port}/m.wasm"))
    assert connections == 3


async def test_read_timeout_fails_the_fetch_at_once_for_a_later_retry(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A body that stops flowing fails at its first read timeout, retryable later: retrying
    at once would hold the download slot for tries x the idle timeout."""

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(WASM)
        await server.stall()
        return response

    url = server.route("/m.wasm", stalls)
    with pytest.raises(FetchError, match="read timeout") as caught:
        await make_fetcher(tries=3, read_timeout=0.2).fetch(request(url))
    assert server.hits["/m.wasm"] == 1
    assert caught.value.retryable
    assert "--fetch-idle-timeout" in str(caught.value)


async def test_total_timeout_bounds_the_whole_fetch(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A server that never answers is abandoned at total_timeout, not after every try."""

    async def never(_: web.Request) -> web.StreamResponse:
        await server.stall()
        return web.Response(body=WASM)

    url = server.route("/m.wasm", never)
    with pytest.raises(FetchError, match=r"did not finish within 0\.2 s"):
        await make_fetcher(total_timeout=0.2, read_timeout=30.0).fetch(request(url))


async def test_redirect_loop_is_bounded(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """Endless redirects stop after max_redirects with a permanent error."""

    async def loop(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(server.url("/loop"))

    url = server.route("/loop", loop)
    with pytest.raises(FetchError, match="more than 3 redirects") as caught:
        await make_fetcher(max_redirects=3).fetch(request(url))
    assert not caught.value.retryable
    assert server.hits["/loop"] == 4


async def test_unsupported_content_encoding_is_refused(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """An encoding we cannot inflate with a bound (br) fails clearly instead of as 'not Wasm'."""
    url = server.serve("/m.wasm", b"\x0b\x02", headers={"Content-Encoding": "br"})
    with pytest.raises(FetchError, match="Content-Encoding 'br'"):
        await make_fetcher().fetch(request(url))


# ------------------------------------------------------------------ size cap


async def test_oversize_content_length_is_refused_up_front(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A Content-Length over the cap fails at once, without waiting for a stalled body."""

    async def announces_too_much(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = LIMIT + 1
        await response.prepare(request)
        await response.write(WASM)
        await server.stall()
        return response

    url = server.route("/m.wasm", announces_too_much)
    with pytest.raises(ModuleTooLargeError, match=f"announces {LIMIT + 1} bytes"):
        await make_fetcher(read_timeout=30.0).fetch(request(url))
    assert server.hits["/m.wasm"] == 1


async def test_oversize_chunked_body_is_refused(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """Without Content-Length (chunked), the streaming cap stops the download."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(LIMIT // 4096 + 2):
            await response.write(b"\0" * 4096)
        await response.write_eof()
        return response

    url = server.route("/m.wasm", chunked)
    with pytest.raises(ModuleTooLargeError, match=f"exceeds the {LIMIT}-byte limit"):
        await make_fetcher().fetch(request(url))


async def test_oversize_close_delimited_body_is_refused(
    raw_server: Callable[[RawHandler], Awaitable[int]], make_fetcher: MakeFetcher
) -> None:
    """A body with no length at all (ended by closing) is capped while streaming too."""

    async def endless(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        writer.write(WASM + b"\0" * (2 * LIMIT))
        await writer.drain()

    port = await raw_server(endless)
    with pytest.raises(ModuleTooLargeError, match="exceeds"):
        await make_fetcher().fetch(request(f"http://127.0.0.1:{port}/m.wasm"))


async def test_gzip_bomb_is_refused(server: ModuleServer, make_fetcher: MakeFetcher) -> None:
    """A small download that inflates past the cap is ModuleTooLargeError naming the URL."""
    url = server.serve("/bomb.wasm.gz", gzip.compress(b"\0" * (64 * LIMIT)))
    with pytest.raises(ModuleTooLargeError, match="gzip layer") as caught:
        await make_fetcher().fetch(request(url))
    assert url in str(caught.value)


# ------------------------------------------------------------------ SSRF guard


async def test_link_local_url_is_blocked(make_fetcher: MakeFetcher) -> None:
    """The metadata address itself is refused before any connection, and not retried."""
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254: link-local") as caught:
        await make_fetcher().fetch(request("http://169.254.169.254/latest/meta-data/"))
    assert not caught.value.retryable


async def test_redirect_to_metadata_is_blocked(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """A loopback server redirecting to 169.254.169.254 is caught at connect time."""

    async def to_metadata(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/")

    url = server.route("/m.wasm", to_metadata)
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254"):
        await make_fetcher().fetch(request(url))
    assert server.hits["/m.wasm"] == 1


async def test_hostname_resolving_to_link_local_is_blocked(make_fetcher: MakeFetcher) -> None:
    """A DNS name that resolves to a link-local address is refused, naming host and IP."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["fe80::a9fe:a9fe"] if host == "metadata.example" else []

    fetcher = make_fetcher(address_resolver=resolve)
    with pytest.raises(BlockedAddressError, match=r"metadata\.example \(fe80::a9fe:a9fe\)"):
        await fetcher.fetch(request("http://metadata.example/m.wasm"))


async def test_blocked_cidrs_apply_to_fetches(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """Operator CIDRs block even loopback when asked to."""
    url = server.serve("/m.wasm")
    with pytest.raises(BlockedAddressError, match=r"in blocked range 127\.0\.0\.0/8"):
        await make_fetcher(blocked_cidrs=("127.0.0.0/8",)).fetch(request(url))
    assert server.hits["/m.wasm"] == 0


# ------------------------------------------------------------------ TLS


async def test_https_with_ca_file(
    tls_server: ModuleServer, make_fetcher: MakeFetcher, ca_file: Path
) -> None:
    """A server signed by a private CA is trusted once that CA is given as ca_file."""
    url = tls_server.serve("/m.wasm")
    assert await fetch_bytes(make_fetcher(ca_file=ca_file), request(url)) == WASM


async def test_https_untrusted_certificate_fails_clearly(
    tls_server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """Without the CA, verification fails once (no inner retries) with a hint how to fix it."""
    url = tls_server.serve("/m.wasm")
    with pytest.raises(FetchError, match="certificate verification failed") as caught:
        await make_fetcher().fetch(request(url))
    assert "insecure registry" in str(caught.value)
    assert "after" not in str(caught.value)
    assert tls_server.hits.total() == 0


@pytest.mark.parametrize("entry", ["127.0.0.1:{port}", "127.0.0.1", "*"])
async def test_insecure_hosts_skip_verification(
    tls_server: ModuleServer, make_fetcher: MakeFetcher, entry: str
) -> None:
    """host:port, host (any port) and * all disable TLS verification for that server."""
    url = tls_server.serve("/m.wasm")
    insecure = frozenset({entry.format(port=tls_server.port)})
    assert await fetch_bytes(make_fetcher(insecure_hosts=insecure), request(url)) == WASM


async def test_insecure_hosts_do_not_leak_to_other_hosts(
    tls_server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """An insecure entry for another port or host leaves this server verified."""
    url = tls_server.serve("/m.wasm")
    insecure = frozenset({"127.0.0.1:1", "registry.example"})
    with pytest.raises(FetchError, match="certificate verification failed"):
        await make_fetcher(insecure_hosts=insecure).fetch(request(url))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1/m.wasm", "invalid URL"),
        ("http:///m.wasm", "missing"),
        ("http://127.0.0.1:99999/m.wasm", "invalid port 99999"),
    ],
)
async def test_malformed_urls_are_fetch_errors(
    make_fetcher: MakeFetcher, url: str, message: str
) -> None:
    """Malformed URLs fail as FetchError naming the problem, never as a crash."""
    with pytest.raises(FetchError, match=message):
        await make_fetcher(tries=1).fetch(request(url))


def test_bad_settings_are_reported(module_store: ModuleStore) -> None:
    """A malformed insecure host or an unreadable CA file is a SettingsError naming it."""
    with pytest.raises(SettingsError, match="host:port:x"):
        HttpFetcher(
            store=module_store, settings=FetcherSettings(insecure_hosts=frozenset({"host:port:x"}))
        )
    with pytest.raises(SettingsError, match="registry:http"):
        HttpFetcher(
            store=module_store,
            settings=FetcherSettings(insecure_hosts=frozenset({"registry:http"})),
        )
    with pytest.raises(SettingsError, match=r"missing-ca\.pem"):
        HttpFetcher(
            store=module_store,
            settings=FetcherSettings(ca_file=Path("/nonexistent/missing-ca.pem")),
        )


# ------------------------------------------------------------------ credentials


def chain_text(error: BaseException) -> str:
    """Every message on the exception's cause/context chain."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def test_credentials_never_appear_in_errors(
    server: ModuleServer, make_fetcher: MakeFetcher
) -> None:
    """Userinfo in the URL is redacted from every failure message and its causes."""
    closed = closed_port()

    async def to_closed_port(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://bob:hunter2@127.0.0.1:{closed}/m.wasm")

    server.route("/redirect", to_closed_port)
    server.serve("/html", b"<html></html>")
    netloc = f"alice:s3cret@127.0.0.1:{server.port}"
    urls = [
        f"http://{netloc}/missing.wasm",
        f"http://{netloc}/html",
        f"http://{netloc}/redirect",
        f"http://alice:s3cret@127.0.0.1:{closed}/m.wasm",
        "http://alice:s3cret@169.254.169.254/m.wasm",
        "http://alice:s3cret@[::1/m.wasm",
    ]
    fetcher = make_fetcher(tries=1)
    for url in urls:
        with pytest.raises(ModuleError) as caught:
            await fetcher.fetch(request(url, "cd" * 32))
        text = chain_text(caught.value)
        assert "s3cret" not in text, url
        assert "hunter2" not in text, url
        assert "127.0.0.1" in text or "169.254" in text or "[::1" in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@h/m.wasm", "https://h/m.wasm"),
        (
            "https://bucket.s3/m.wasm?X-Amz-Signature=abc&X-Amz-Expires=60",
            "https://bucket.s3/m.wasm?X-Amz-Signature=REDACTED&X-Amz-Expires=REDACTED",
        ),
        ("https://h/m.wasm", "https://h/m.wasm"),
        ("http://[::1/x?token=t", "http://[::1/x?token=REDACTED"),
    ],
)
def test_redact_url_hides_userinfo_and_query_values(url: str, shown: str) -> None:
    """Credentials in userinfo or in a signed URL's query never reach logs or errors."""
    assert redact_url(url) == shown


async def test_a_stalled_tls_handshake_fails_once_within_the_connect_timeout(
    make_fetcher: MakeFetcher,
) -> None:
    """A host that accepts and never answers the ClientHello fails after one connect timeout,
    retryable later, instead of holding the download slot for every try."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)  # the ClientHello, never answered
        await reader.read()  # until the client gives up and hangs up

    async with raw_servers() as servers:
        port = await servers.start(silent)
        fetcher = make_fetcher(tries=3, connect_timeout=0.3)
        with pytest.raises(FetchError, match="connecting timed out") as caught:
            await fetcher.fetch(request(f"https://127.0.0.1:{port}/m.wasm"))
        assert servers.connections[port] == 1
    assert caught.value.retryable
