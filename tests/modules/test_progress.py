"""The minimum-rate rule: the sliding window alone, then every fetcher against trickling servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.modules.conftest import WASM, fetch_bytes
from tests.modules.trickle import Handler, RawServers, drip, drips_body, drips_headers, raw_servers
from wasmxds.backoff import Backoff
from wasmxds.errors import FetchError
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.oci.client import Credentials, RegistryClient
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.progress import RateWindow, format_rate
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest

# A one-second window keeps these tests short; the drips are far below 1 KiB/s.
STRICT = FetcherSettings(
    tries=3,
    backoff=Backoff(initial=0.001, max=0.004),
    connect_timeout=5.0,
    read_timeout=5.0,
    min_rate=1024.0,
    rate_window=1.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------- the window


def test_no_judgement_during_the_first_window() -> None:
    """Nothing received is fine until a whole window has passed (the grace period)."""
    clock = Clock()
    window = RateWindow(1000.0, 10.0, clock)
    clock.now += 9.9
    window.add(0)
    assert window.shortfall() is None
    clock.now += 0.1
    received, seconds = window.shortfall() or (-1, 0.0)
    assert received == 0
    assert seconds == pytest.approx(10.0)


def test_a_trickle_falls_short_and_says_how_much_arrived() -> None:
    """One byte every 5 s over a 20 s window is reported as the bytes and seconds it was."""
    clock = Clock()
    window = RateWindow(1024.0, 20.0, clock)
    for _ in range(4):
        clock.now += 5.0
        window.add(1)
    received, seconds = window.shortfall() or (-1, 0.0)
    assert received == 4
    assert seconds == pytest.approx(20.0)


def test_a_steady_transfer_above_the_rate_passes() -> None:
    """A server sending 2 KiB every second never falls below 1 KiB/s, however long it runs."""
    clock = Clock()
    window = RateWindow(1024.0, 10.0, clock)
    for _ in range(60):
        clock.now += 1.0
        window.add(2048)
        assert window.shortfall() is None


def test_a_fast_start_does_not_excuse_a_stall() -> None:
    """The window slides: megabytes early on do not cover a trickle a window later."""
    clock = Clock()
    window = RateWindow(1024.0, 10.0, clock)
    clock.now += 1.0
    window.add(10 << 20)
    stalled_for = 0.0
    while window.shortfall() is None:
        clock.now += 1.0
        stalled_for += 1.0
        window.add(1)
        assert stalled_for < 20.0, "the stall was never noticed"
    received, seconds = window.shortfall() or (0, 0.0)
    assert received < 1024 * seconds
    assert stalled_for <= 12.0


def test_restart_starts_a_new_grace_period() -> None:
    """After restart (a new request on a kept connection) the idle time before it is forgiven."""
    clock = Clock()
    window = RateWindow(1024.0, 5.0, clock)
    clock.now += 60.0
    assert window.shortfall() is not None
    window.restart()
    assert window.shortfall() is None


def test_zero_rate_turns_the_check_off() -> None:
    """min_rate 0 never falls short, even with nothing received for ages."""
    clock = Clock()
    window = RateWindow(0.0, 1.0, clock)
    clock.now += 3600.0
    assert window.shortfall() is None


def test_rates_are_shown_in_the_flag_units() -> None:
    """Messages show rates as the flag takes them: B/s, KiB/s, MiB/s."""
    assert format_rate(1024.0) == "1 KiB/s"
    assert format_rate(512.0) == "512 B/s"
    assert format_rate(2.5 * (1 << 20)) == "2.5 MiB/s"


# ------------------------------------------------------------ real servers


@pytest.fixture
async def raw() -> AsyncIterator[RawServers]:
    async with raw_servers() as servers:
        yield servers


@pytest.mark.parametrize("handler", [drips_body, drips_headers], ids=["body", "headers"])
async def test_http_trickle_fails_after_one_window_with_a_clear_sentence(
    raw: RawServers, handler: Handler, module_store: ModuleStore
) -> None:
    """A server dripping its body (or its headers) fails once, retryable, naming the rate."""
    port = await raw.start(handler)
    url = f"http://127.0.0.1:{port}/slow.wasm"
    async with HttpFetcher(store=module_store, settings=STRICT) as fetcher:
        started = asyncio.get_running_loop().time()
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(ModuleRequest(url=url))
        took = asyncio.get_running_loop().time() - started
    message = str(caught.value)
    print(f"\ngave up on the trickle after {took:.2f} s: {message}")
    assert message.startswith(f"{url}: the server sent ")
    assert "in 1 s, below the minimum rate of 1 KiB/s" in message
    assert "lower --fetch-min-rate" in message
    assert caught.value.retryable
    # Not retried within the fetch: it just had a whole window; the resolver retries later.
    assert raw.connections[port] == 1


async def test_a_steady_server_above_the_rate_is_not_cut_off(
    raw: RawServers, module_store: ModuleStore
) -> None:
    """A body arriving at ~80 KiB/s for two windows completes against a 1 KiB/s minimum.

    Each 8 KiB piece alone exceeds what a window needs (1.5 KiB), so even if the machine
    stalls for seconds the read that ends the stall brings the window above the rate."""
    body = WASM + bytes(8192 * 30)

    async def steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for start in range(0, len(body), 8192):
            writer.write(body[start : start + 8192])
            await writer.drain()
            await asyncio.sleep(0.1)  # ~80 KiB/s for about 3 s: two windows

    port = await raw.start(steady)
    settings = FetcherSettings(min_rate=1024.0, rate_window=1.5, tries=1)
    async with HttpFetcher(store=module_store, settings=settings) as fetcher:
        data = await fetch_bytes(fetcher, ModuleRequest(url=f"http://127.0.0.1:{port}/m.wasm"))
    assert data == body


async def test_a_kept_alive_connection_is_judged_from_the_new_request(
    raw: RawServers, module_store: ModuleStore
) -> None:
    """Time a connection rested in the pool does not count against the server's rate."""

    async def keeps_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(WASM)}\r\n\r\n".encode())
            writer.write(WASM)
            await writer.drain()

    port = await raw.start(keeps_alive)
    settings = FetcherSettings(min_rate=1024.0, rate_window=0.3, tries=1)
    async with HttpFetcher(store=module_store, settings=settings) as fetcher:
        request = ModuleRequest(url=f"http://127.0.0.1:{port}/m.wasm")
        assert await fetch_bytes(fetcher, request) == WASM
        await asyncio.sleep(0.6)  # two windows of rest, well inside keep-alive expiry
        assert await fetch_bytes(fetcher, request) == WASM
    assert raw.connections[port] == 1, "the second fetch should have reused the connection"


async def test_oci_manifest_trickle_fails_with_the_request_and_the_rate(raw: RawServers) -> None:
    """A registry dripping a manifest fails the pull once, naming the request and the rate."""
    port = await raw.start(drips_body)
    host = f"127.0.0.1:{port}"
    async with RegistryClient(settings=STRICT) as client:
        client.mark_plain(host)
        repo = client.repository(parse_reference(f"{host}/slow/module:v1"), Credentials())
        with pytest.raises(FetchError) as caught:
            await repo.manifest("v1", ["application/vnd.oci.image.manifest.v1+json"])
    message = str(caught.value)
    assert message.startswith(f"oci://{host}/slow/module:v1: GET http://{host}/v2/slow/module/")
    assert "below the minimum rate of 1 KiB/s" in message
    assert "lower --fetch-min-rate" in message
    assert caught.value.retryable
    assert raw.connections[port] == 1


async def test_oci_token_realm_trickle_fails_with_the_rate(raw: RawServers) -> None:
    """A token service that drips its answer is a slow-host failure too, naming the realm."""
    port = 0

    async def challenge_then_drip(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /token"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            await drip(writer, b'{"token": "' + b"x" * 100, every=0.1, limit=40)
            return
        realm = f"http://127.0.0.1:{port}/token"
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
            + f'WWW-Authenticate: Bearer realm="{realm}",service="test"\r\n\r\n'.encode()
        )
        await writer.drain()

    port = await raw.start(challenge_then_drip)
    host = f"127.0.0.1:{port}"
    async with RegistryClient(settings=STRICT) as client:
        client.mark_plain(host)
        repo = client.repository(parse_reference(f"{host}/slow/module:v1"), Credentials())
        with pytest.raises(FetchError) as caught:
            await repo.manifest("v1", ["application/vnd.oci.image.manifest.v1+json"])
    message = str(caught.value)
    assert f"the token service on {host}: the server sent " in message
    assert "below the minimum rate of 1 KiB/s" in message


async def test_redirect_hops_share_one_grace_period(
    raw: RawServers, module_store: ModuleStore
) -> None:
    """Each hop of a redirect chain answering slowly does not earn a fresh grace window: the
    fetch fails about one window after it started, not one window per hop."""
    port = 0

    async def slow_redirects(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        hop = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1] or b"0")
        await asyncio.sleep(0.7)  # just inside one window per hop
        writer.write(
            b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n"
            + f"Location: http://127.0.0.1:{port}/hop/{hop + 1}\r\n\r\n".encode()
        )
        await writer.drain()

    port = await raw.start(slow_redirects)
    settings = FetcherSettings(min_rate=1024.0, rate_window=1.0, tries=1, max_redirects=10)
    async with HttpFetcher(store=module_store, settings=settings) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(ModuleRequest(url=f"http://127.0.0.1:{port}/hop/0"))
    message = str(caught.value)
    print(f"\nthe redirect chain was given up after {raw.connections[port]} hops: {message}")
    assert "below the minimum rate of 1 KiB/s" in message, message
    assert raw.connections[port] <= 3, "a fresh grace per hop would follow all ten hops"


async def test_a_silent_registry_fails_the_pull_once_at_the_idle_timeout(raw: RawServers) -> None:
    """A registry that accepts and never answers fails after one idle timeout, retryable,
    instead of holding the download slot for every try."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; ends when the client hangs up

    port = await raw.start(silent)
    host = f"127.0.0.1:{port}"
    settings = FetcherSettings(tries=3, read_timeout=0.3, backoff=Backoff(initial=0.001))
    async with RegistryClient(settings=settings) as client:
        client.mark_plain(host)
        repo = client.repository(parse_reference(f"{host}/silent/module:v1"), Credentials())
        with pytest.raises(FetchError) as caught:
            await repo.manifest("v1", ["application/vnd.oci.image.manifest.v1+json"])
    message = str(caught.value)
    assert "no data for 0.3 s" in message, message
    assert "--fetch-idle-timeout" in message, message
    assert caught.value.retryable
    assert raw.connections[port] == 1
