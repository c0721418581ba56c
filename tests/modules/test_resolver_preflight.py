"""ModuleResolver with the pre-flight check: a refused module is never Ready; one check a digest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.modules.conftest import ModuleServer, Signal
from tests.modules.wat import EMPTY, proxy_module
from wasmxds.backoff import Backoff
from wasmxds.errors import ModuleIncompatibleError
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.preflight import Preflight
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import (
    Failed,
    LocalFile,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
    Ready,
    Verdict,
)

RETRY = Backoff(initial=0.005, factor=2.0, max=0.02)
HTTP_ONLY = proxy_module(http=True, network=False)
NETWORK_ONLY = proxy_module(http=False, network=True)
MAGIC = proxy_module(imports='(import "env" "proxy_get_magic" (func (param i32) (result i32)))')


class CountingPreflight:
    """The real check, counting the modules it was asked about."""

    def __init__(self) -> None:
        self.real = Preflight()
        self.checked: list[str] = []

    async def __call__(self, module: Module) -> Verdict:
        self.checked.append(module.digest)
        return await self.real(module)


@pytest.fixture
async def preflight() -> AsyncIterator[CountingPreflight]:
    check = CountingPreflight()
    yield check
    check.real.close()


@pytest.fixture
async def http_fetcher(tmp_path: Path) -> AsyncIterator[HttpFetcher]:
    settings = FetcherSettings(tries=1, backoff=Backoff(initial=0.001, max=0.001))
    store = ModuleStore(tmp_path / "cache")
    async with HttpFetcher(store=store, settings=settings) as fetcher:
        yield fetcher


Make = Callable[..., ModuleResolver]


@pytest.fixture
def make(tmp_path: Path, http_fetcher: HttpFetcher, preflight: CountingPreflight) -> Make:
    def build(
        changes: Signal, *, index: ModuleIndex | None = None, check: bool = True
    ) -> ModuleResolver:
        return ModuleResolver(
            store=ModuleStore(tmp_path / "cache"),
            fetchers={"http": http_fetcher},
            on_change=changes.notify,
            retry=RETRY,
            index=index,
            preflight=preflight if check else None,
        )

    return build


@contextlib.asynccontextmanager
async def running(resolver: ModuleResolver) -> AsyncIterator[None]:
    task = asyncio.create_task(resolver.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def settled(resolver: ModuleResolver, request: ModuleRequest) -> Callable[[], bool]:
    return lambda: not isinstance(resolver.outcome(request), Pending | None)


def stale_or_failed(outcome: ModuleOutcome | None) -> bool:
    return isinstance(outcome, Failed) or (isinstance(outcome, Ready) and outcome.stale is not None)


async def test_incompatible_module_fails_and_is_never_ready(
    make: Make, server: ModuleServer
) -> None:
    """A module importing an unknown host function is a module_incompatible failure."""
    changes = Signal()
    request = ModuleRequest(url=server.serve("/magic.wasm", MAGIC))
    resolver = make(changes)
    seen: list[ModuleOutcome | None] = []

    def retried() -> bool:
        seen.append(resolver.outcome(request))
        return isinstance(seen[-1], Failed) and server.hits["/magic.wasm"] >= 2

    async with running(resolver):
        seen.append(resolver.resolve(request))
        await changes.wait_for(retried)
    assert not any(isinstance(o, Ready) for o in seen)
    outcome = resolver.outcome(request)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, ModuleIncompatibleError)
    assert outcome.error.reason == "module_incompatible"
    assert str(outcome.error) == (
        f"{request.url}: the module cannot run in Envoy: it imports env.proxy_get_magic,"
        " which Envoy's proxy-wasm host does not provide"
    )
    # Refused bytes are not what the URL "resolved to": nothing reuses them later.
    assert resolver.index.ref(request.url, "") is None


async def test_compatible_module_is_ready_with_its_capabilities(
    make: Make, server: ModuleServer
) -> None:
    """A module that passes is Ready, and the module says what it implements."""
    changes = Signal()
    http = ModuleRequest(url=server.serve("/http.wasm", HTTP_ONLY))
    network = ModuleRequest(url=server.serve("/net.wasm", NETWORK_ONLY))
    resolver = make(changes)
    async with running(resolver):
        resolver.resolve(http)
        resolver.resolve(network)
        await changes.wait_for(lambda: settled(resolver, http)() and settled(resolver, network)())
    modules = []
    for request in (http, network):
        outcome = resolver.outcome(request)
        assert isinstance(outcome, Ready)
        assert isinstance(outcome.module, Module)
        modules.append(outcome.module.abi)
    assert [(abi.http, abi.network) for abi in modules if abi] == [(True, False), (False, True)]


async def test_a_module_is_checked_once_per_digest(
    make: Make, server: ModuleServer, preflight: CountingPreflight
) -> None:
    """Two URLs serving the same bytes, and a later generation, share one check."""
    changes = Signal()
    first = ModuleRequest(url=server.serve("/a.wasm", HTTP_ONLY), pull_policy=PullPolicy.ALWAYS)
    second = ModuleRequest(url=server.serve("/b.wasm", HTTP_ONLY))
    resolver = make(changes)
    async with running(resolver):
        resolver.resolve(first)
        resolver.resolve(second)
        await changes.wait_for(lambda: settled(resolver, first)() and settled(resolver, second)())
        again = ModuleRequest(url=first.url, pull_policy=PullPolicy.ALWAYS, generation="2")
        resolver.resolve(again)
        await changes.wait_for(settled(resolver, again))
    assert server.hits["/a.wasm"] == 2
    assert len(preflight.checked) == 1


async def test_verdicts_survive_a_restart(
    make: Make, server: ModuleServer, preflight: CountingPreflight, tmp_path: Path
) -> None:
    """A restarted resolver serves a checked module from the index without checking again."""
    index_file = tmp_path / "index.json"
    request = ModuleRequest(url=server.serve("/m.wasm", HTTP_ONLY))
    changes = Signal()
    resolver = make(changes, index=ModuleIndex.load(index_file))
    async with running(resolver):
        resolver.resolve(request)
        await changes.wait_for(settled(resolver, request))
    await resolver.index.flush()  # as `wasmxds serve` does when it stops
    assert len(preflight.checked) == 1

    restarted = make(Signal(), index=ModuleIndex.load(index_file))
    outcome = restarted.resolve(request)
    assert isinstance(outcome, Ready)
    assert isinstance(outcome.module, Module)
    assert outcome.module.abi is not None
    assert outcome.module.abi.http
    assert len(preflight.checked) == 1
    assert server.hits["/m.wasm"] == 1


async def test_a_cached_module_never_checked_is_checked_before_it_is_served(
    make: Make, server: ModuleServer, preflight: CountingPreflight, tmp_path: Path
) -> None:
    """Modules cached before the check existed are checked first: Pending, then the verdict."""
    index_file = tmp_path / "index.json"
    good = ModuleRequest(url=server.serve("/good.wasm", HTTP_ONLY))
    empty = ModuleRequest(url=server.serve("/empty.wasm", EMPTY))
    changes = Signal()
    unchecked = make(changes, index=ModuleIndex.load(index_file), check=False)
    async with running(unchecked):
        unchecked.resolve(good)
        unchecked.resolve(empty)
        await changes.wait_for(lambda: settled(unchecked, good)() and settled(unchecked, empty)())
    await unchecked.index.flush()
    assert isinstance(unchecked.outcome(empty), Ready)  # served unchecked, as before

    changes = Signal()
    resolver = make(changes, index=ModuleIndex.load(index_file))
    assert isinstance(resolver.resolve(good), Pending)
    assert isinstance(resolver.resolve(empty), Pending)
    seen: list[ModuleOutcome | None] = []

    def done() -> bool:
        seen.append(resolver.outcome(empty))
        return isinstance(resolver.outcome(good), Ready) and isinstance(seen[-1], Failed)

    async with running(resolver):
        await changes.wait_for(done)
    assert not any(isinstance(o, Ready) for o in seen)
    failed = resolver.outcome(empty)
    assert isinstance(failed, Failed)
    assert "exports no proxy-wasm ABI version function" in str(failed.error)
    assert len(preflight.checked) == 2


async def test_always_repull_to_an_incompatible_module_keeps_the_earlier_one(
    make: Make, server: ModuleServer
) -> None:
    """The tag moved to bad bytes: the earlier module is served, stale with the reason."""
    changes = Signal()
    url = server.serve("/m.wasm", HTTP_ONLY)
    gen1 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="1")
    gen2 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="2")
    resolver = make(changes)
    async with running(resolver):
        resolver.resolve(gen1)
        await changes.wait_for(settled(resolver, gen1))
        earlier = resolver.outcome(gen1)
        assert isinstance(earlier, Ready)
        server.serve("/m.wasm", EMPTY)
        resolver.resolve(gen2)
        await changes.wait_for(lambda: stale_or_failed(resolver.outcome(gen2)))
    outcome = resolver.outcome(gen2)
    assert isinstance(outcome, Ready)
    assert outcome.module == earlier.module
    assert isinstance(outcome.stale, ModuleIncompatibleError)


def test_file_urls_are_not_checked(make: Make, preflight: CountingPreflight) -> None:
    """file:// modules live on the proxy: passed through, not checked."""
    request = ModuleRequest(url="file:///etc/envoy/filter.wasm")
    assert make(Signal()).resolve(request) == Ready(LocalFile("/etc/envoy/filter.wasm"))
    assert preflight.checked == []
