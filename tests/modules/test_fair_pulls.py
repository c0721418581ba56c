"""The resolver with real fetchers: trickling hosts never hold back another host's module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.modules.conftest import WASM, ModuleServer, Signal
from tests.modules.trickle import RawServers, drip, raw_servers
from wasmxds.backoff import Backoff
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, ModuleRequest, Pending, Ready

# The slow hosts are given up on after one 4 s window; the good module needs a fraction
# of a second, so a loaded machine stalling for a second or two cannot mix them up.
SETTINGS = FetcherSettings(tries=3, min_rate=1024.0, rate_window=4.0, read_timeout=8.0)
RETRY = Backoff(initial=0.2, max=0.5)


async def drips_for_seconds(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    await drip(writer, WASM * 20, every=0.25, limit=40)  # ten seconds, then it hangs up


@pytest.fixture
async def raw() -> AsyncIterator[RawServers]:
    async with raw_servers() as servers:
        yield servers


@contextlib.asynccontextmanager
async def resolving(
    tmp_path: Path, changes: Signal, **slots: int | float
) -> AsyncIterator[ModuleResolver]:
    store = ModuleStore(tmp_path / "cache")
    async with HttpFetcher(store=store, settings=SETTINGS) as fetcher:
        resolver = ModuleResolver(
            store=store,
            fetchers={"http": fetcher},
            on_change=changes.notify,
            retry=RETRY,
            max_parallel=4,
            **slots,  # type: ignore[arg-type]
        )
        task = asyncio.create_task(resolver.run())
        try:
            yield resolver
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_good_host_is_served_while_four_slow_hosts_trickle(
    tmp_path: Path, raw: RawServers, server: ModuleServer
) -> None:
    """Four trickling hosts take all four slots first; the good module is ready long before
    any of them is given up on, and each slow one then fails with the rate sentence."""
    changes = Signal()
    slow = [
        ModuleRequest(url=f"http://127.0.0.1:{await raw.start(drips_for_seconds)}/slow.wasm")
        for _ in range(4)
    ]
    good = ModuleRequest(url=server.serve("/good.wasm", WASM))
    async with resolving(tmp_path, changes, max_per_host=2, lend_stalled_after=0.3) as resolver:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for request in slow:
            assert isinstance(resolver.resolve(request), Pending)
        await asyncio.sleep(0.05)  # the slow ones hold every slot before the good one asks
        resolver.resolve(good)
        await changes.wait_for(lambda: isinstance(resolver.outcome(good), Ready))
        served_after = loop.time() - started
        print(f"\ngood module ready {served_after:.2f} s after four slow hosts took the slots")
        assert all(isinstance(resolver.outcome(r), Pending) for r in slow), (
            "the good module should not have waited for the slow ones to be given up on"
        )
        await changes.wait_for(
            lambda: all(isinstance(resolver.outcome(r), Failed) for r in slow), deadline=30
        )
    for request in slow:
        outcome = resolver.outcome(request)
        assert isinstance(outcome, Failed)
        assert "below the minimum rate of 1 KiB/s" in str(outcome.error), outcome.error
        assert outcome.error.reason == "fetch_failed"


async def test_one_slow_host_uses_the_idle_slots_but_not_another_hosts_turn(
    tmp_path: Path, raw: RawServers, server: ModuleServer
) -> None:
    """A lone host with six modules uses all four slots (the per-host cap does not keep slots
    idle); a good host's module is still ready long before any of them is given up on, and
    the slow host never gets a fifth connection."""
    changes = Signal()
    port = await raw.start(drips_for_seconds)
    slow = [ModuleRequest(url=f"http://127.0.0.1:{port}/slow-{i}.wasm") for i in range(6)]
    good = ModuleRequest(url=server.serve("/good.wasm", WASM))
    async with resolving(tmp_path, changes, max_per_host=2, lend_stalled_after=0.3) as resolver:
        for request in slow:
            resolver.resolve(request)

        async with asyncio.timeout(5):
            while raw.connections[port] < 4:
                await asyncio.sleep(0.02)
        assert raw.connections[port] == 4, "no slot stays idle while only this host asks"
        assert all(isinstance(resolver.outcome(r), Pending) for r in slow)
        resolver.resolve(good)
        await changes.wait_for(lambda: isinstance(resolver.outcome(good), Ready))
        assert all(isinstance(resolver.outcome(r), Pending) for r in slow)
        assert raw.connections[port] == 4, "lending helps the other host, not this one"
