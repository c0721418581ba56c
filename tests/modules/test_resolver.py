"""ModuleResolver: cache semantics, single flight, background retries, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.modules.conftest import WASM, ModuleServer, Signal
from wasmxds.backoff import Backoff
from wasmxds.errors import (
    ChecksumMismatchError,
    FetchError,
    UnsupportedSchemeError,
)
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.resolver import Fetcher, ModuleResolver
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
)

OTHER = WASM + b"\x00\x00"  # different bytes behind a valid header: a second module
RETRY = Backoff(initial=0.005, factor=2.0, max=0.02)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    return ModuleStore(tmp_path / "cache")


@pytest.fixture
async def http_fetcher(store: ModuleStore) -> AsyncIterator[HttpFetcher]:
    settings = FetcherSettings(tries=1, backoff=Backoff(initial=0.001, max=0.001))
    async with HttpFetcher(store=store, settings=settings) as fetcher:
        yield fetcher


@pytest.fixture
def changes() -> Signal:
    return Signal()


MakeResolver = Callable[..., ModuleResolver]


@pytest.fixture
def make_resolver(store: ModuleStore, http_fetcher: HttpFetcher, changes: Signal) -> MakeResolver:
    def make(
        *, fetchers: dict[str, Fetcher] | None = None, max_parallel: int = 4
    ) -> ModuleResolver:
        return ModuleResolver(
            store=store,
            fetchers=fetchers or {"http": http_fetcher, "https": http_fetcher},
            on_change=changes.notify,
            retry=RETRY,
            max_parallel=max_parallel,
        )

    return make


@contextlib.asynccontextmanager
async def running(resolver: ModuleResolver) -> AsyncIterator[asyncio.Task[None]]:
    """Run the resolver as the service would, and stop it (cancel) afterwards."""
    task = asyncio.create_task(resolver.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def outcome_is(
    resolver: ModuleResolver, request: ModuleRequest, kind: type[ModuleOutcome]
) -> Callable[[], bool]:
    return lambda: isinstance(resolver.outcome(request), kind)


def ready_module(outcome: ModuleOutcome | None) -> Module:
    assert isinstance(outcome, Ready)
    assert isinstance(outcome.module, Module)
    return outcome.module


# ------------------------------------------------------------------ answered at once


def test_file_urls_pass_through(make_resolver: MakeResolver) -> None:
    """file:// is a path on the proxy: Ready at once, never fetched or verified."""
    resolver = make_resolver()
    outcome = resolver.resolve(ModuleRequest(url="file:///etc/envoy/filter.wasm", sha256="ab"))
    assert outcome == Ready(LocalFile("/etc/envoy/filter.wasm"))


async def test_known_sha256_is_a_hit_without_fetching(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """A sha256 this URL was fetched as is Ready at once, whatever the pull policy."""
    url = server.serve("/m.wasm")
    resolver = make_resolver()
    first = ModuleRequest(url=url, sha256=digest(WASM))
    async with running(resolver):
        resolver.resolve(first)
        await changes.wait_for(outcome_is(resolver, first, Ready))
    stored = ready_module(resolver.outcome(first))
    for policy in PullPolicy:
        request = ModuleRequest(
            url=url, sha256=digest(WASM).upper(), pull_policy=policy, generation="g2"
        )
        assert resolver.resolve(request) == Ready(stored)
    assert server.hits["/m.wasm"] == 1


async def test_known_sha256_is_not_lent_to_another_url(
    make_resolver: MakeResolver, store: ModuleStore, server: ModuleServer, changes: Signal
) -> None:
    """A cached sha256 named by another http(s) URL is fetched from that URL, not borrowed."""
    await store.put(WASM)  # cached for someone else (a private OCI module, say)
    request = ModuleRequest(url=server.serve("/other.wasm", OTHER), sha256=digest(WASM))
    resolver = make_resolver()
    async with running(resolver):
        assert isinstance(resolver.resolve(request), Pending)
        await changes.wait_for(outcome_is(resolver, request, Failed))
    failed = resolver.outcome(request)
    assert isinstance(failed, Failed)
    assert isinstance(failed.error, ChecksumMismatchError)
    assert server.hits["/other.wasm"] == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "oci://registry.example/filters/auth:1.0",
            "unsupported module URL scheme 'oci' (supported: file, http, https)",
        ),
        ("ftp://files.example/m.wasm", "unsupported module URL scheme 'ftp'"),
    ],
)
def test_unsupported_scheme_fails_at_once(
    make_resolver: MakeResolver, url: str, message: str
) -> None:
    """A scheme without a fetcher is Failed(UnsupportedSchemeError) and never retried."""
    outcome = make_resolver().resolve(ModuleRequest(url=url))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, UnsupportedSchemeError)
    assert message in str(outcome.error)
    assert outcome.next_retry_in == math.inf


async def test_malformed_url_does_not_raise(make_resolver: MakeResolver, changes: Signal) -> None:
    """resolve() never raises for a bad URL; the fetcher's error becomes Failed."""
    request = ModuleRequest(url="http://[::1/m.wasm")
    resolver = make_resolver()
    assert isinstance(resolver.resolve(request), Pending)
    async with running(resolver):
        await changes.wait_for(outcome_is(resolver, request, Failed))
    outcome = resolver.outcome(request)
    assert isinstance(outcome, Failed)
    assert "invalid URL" in str(outcome.error)


# ------------------------------------------------------------------ fetching


async def test_resolve_before_run_is_queued(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """Work asked for before run() starts waits, then completes once run() is started."""
    request = ModuleRequest(url=server.serve("/m.wasm"))
    resolver = make_resolver()
    assert isinstance(resolver.resolve(request), Pending)
    await asyncio.sleep(0)
    assert server.hits.total() == 0
    async with running(resolver):
        await changes.wait_for(outcome_is(resolver, request, Ready))
    module = ready_module(resolver.resolve(request))
    assert module.digest == digest(WASM)
    assert module.path.read_bytes() == WASM
    assert changes.calls == 1


async def test_concurrent_requests_share_one_fetch(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """Equal requests, before and during the download, cause exactly one server hit."""
    gate = asyncio.Event()

    async def gated(_: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(body=WASM)

    request = ModuleRequest(url=server.route("/m.wasm", gated), generation="1")
    resolver = make_resolver()
    async with running(resolver):
        outcomes = {resolver.resolve(request) for _ in range(10)}
        await server.changed.wait_for(lambda: server.hits["/m.wasm"] == 1)
        outcomes |= {resolver.resolve(ModuleRequest(url=request.url, generation="2"))}
        assert all(isinstance(o, Pending) for o in outcomes)
        gate.set()
        await changes.wait_for(outcome_is(resolver, request, Ready))
    assert server.hits["/m.wasm"] == 1


async def test_failure_retries_in_background_until_ready(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """A 404 becomes Failed, is retried with backoff, and turns Ready once published."""
    request = ModuleRequest(url=server.url("/late.wasm"))
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(request)
        await changes.wait_for(outcome_is(resolver, request, Failed))
        failed = resolver.outcome(request)
        assert isinstance(failed, Failed)
        assert isinstance(failed.error, FetchError)
        assert "HTTP 404" in str(failed.error)
        assert failed.attempts == 1
        assert failed.next_retry_in > 0
        await server.changed.wait_for(lambda: server.hits["/late.wasm"] >= 3)
        server.serve("/late.wasm")
        await changes.wait_for(outcome_is(resolver, request, Ready))
    assert ready_module(resolver.outcome(request)).digest == digest(WASM)
    assert changes.calls >= 3  # Failed, each further Failed, then Ready


async def test_checksum_mismatch_is_failed(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """Verification errors from the fetcher surface as Failed with that error."""
    request = ModuleRequest(url=server.serve("/m.wasm"), sha256="ab" * 32)
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(request)
        await changes.wait_for(outcome_is(resolver, request, Failed))
    outcome = resolver.outcome(request)
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, ChecksumMismatchError)


async def test_retain_stops_retries_and_forgets(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """Requests no longer retained stop retrying and their outcome is dropped."""
    request = ModuleRequest(url=server.url("/gone.wasm"))
    kept = ModuleRequest(url=server.url("/kept.wasm"))
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(request)
        resolver.resolve(kept)
        await server.changed.wait_for(lambda: server.hits["/gone.wasm"] >= 2)
        resolver.retain([kept])
        assert resolver.outcome(request) is None
        stopped_at = server.hits["/gone.wasm"]
        # Several retry periods of the kept request pass; the dropped one stays silent.
        await server.changed.wait_for(lambda: server.hits["/kept.wasm"] >= stopped_at + 3)
        assert server.hits["/gone.wasm"] == stopped_at
    assert resolver.outcome(request) is None
    assert resolver.outcome(kept) is not None


async def test_if_not_present_reuses_across_generations(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """Once fetched, an IfNotPresent URL is served from cache for any later generation."""
    url = server.serve("/m.wasm")
    first = ModuleRequest(url=url, generation="1")
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(first)
        await changes.wait_for(outcome_is(resolver, first, Ready))
    module = ready_module(resolver.outcome(first))
    resolver.retain([])
    second = ModuleRequest(url=url, generation="2")
    assert resolver.resolve(second) == Ready(module)
    assert server.hits["/m.wasm"] == 1


async def test_if_not_present_refetches_when_the_file_was_removed(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """A cached module deleted from disk is not served; it is fetched again."""
    request = ModuleRequest(url=server.serve("/m.wasm"))
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(request)
        await changes.wait_for(outcome_is(resolver, request, Ready))
        ready_module(resolver.outcome(request)).path.unlink()
        resolver.retain([])
        assert isinstance(resolver.resolve(request), Pending)
        await changes.wait_for(outcome_is(resolver, request, Ready))
    assert server.hits["/m.wasm"] == 2


async def test_always_refetches_each_generation(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """With Always, a new generation downloads again and picks up new content."""
    url = server.serve("/m.wasm", WASM)
    gen1 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="1")
    gen2 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="2")
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(gen1)
        await changes.wait_for(outcome_is(resolver, gen1, Ready))
        server.serve("/m.wasm", OTHER)
        assert isinstance(resolver.resolve(gen2), Pending)
        await changes.wait_for(outcome_is(resolver, gen2, Ready))
    assert ready_module(resolver.outcome(gen1)).digest == digest(WASM)
    assert ready_module(resolver.outcome(gen2)).digest == digest(OTHER)
    assert server.hits["/m.wasm"] == 2


async def test_always_keeps_serving_the_earlier_module_when_refetch_fails(
    make_resolver: MakeResolver, server: ModuleServer, changes: Signal
) -> None:
    """A failed re-pull under Always is Ready(earlier module, stale=error), and keeps retrying."""
    url = server.serve("/m.wasm")
    gen1 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="1")
    gen2 = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="2")
    resolver = make_resolver()
    async with running(resolver):
        resolver.resolve(gen1)
        await changes.wait_for(outcome_is(resolver, gen1, Ready))
        earlier = ready_module(resolver.outcome(gen1))
        resolver.retain([gen2])
        server.serve("/m.wasm", b"", status=503)
        resolver.resolve(gen2)

        def stale() -> bool:
            outcome = resolver.outcome(gen2)
            return isinstance(outcome, Ready) and outcome.stale is not None

        await changes.wait_for(stale)
        outcome = resolver.outcome(gen2)
        assert isinstance(outcome, Ready)
        assert outcome.module == earlier
        assert isinstance(outcome.stale, FetchError)
        assert "HTTP 503" in str(outcome.stale)
        # Still retrying: once the server recovers the fresh pull replaces the stale one.
        server.serve("/m.wasm", OTHER)

        def fresh() -> bool:
            outcome = resolver.outcome(gen2)
            return isinstance(outcome, Ready) and outcome.stale is None

        await changes.wait_for(fresh)
    assert ready_module(resolver.outcome(gen2)).digest == digest(OTHER)


# ------------------------------------------------------------------ concurrency and lifecycle


class BlockingFetcher:
    """A Fetcher that holds every download open until released, counting concurrency."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.active = 0
        self.peak = 0
        self.started = Signal()

    async def fetch(self, request: ModuleRequest) -> bytes:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.started.notify()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return WASM + request.url.encode()


class CrashingFetcher:
    """A buggy Fetcher that raises something other than ModuleError."""

    async def fetch(self, request: ModuleRequest) -> bytes:
        raise RuntimeError("bug in fetcher")


def requests(n: int) -> list[ModuleRequest]:
    return [ModuleRequest(url=f"http://modules.example/{i}.wasm") for i in range(n)]


async def test_parallel_fetches_are_bounded(make_resolver: MakeResolver, changes: Signal) -> None:
    """No more than max_parallel downloads run at once; the rest wait their turn."""
    fetcher = BlockingFetcher()
    resolver = make_resolver(fetchers={"http": fetcher}, max_parallel=2)
    wanted = requests(6)
    async with running(resolver):
        for request in wanted:
            resolver.resolve(request)
        await fetcher.started.wait_for(lambda: fetcher.active == 2)
        assert fetcher.active == 2
        assert all(isinstance(resolver.outcome(r), Pending) for r in wanted)
        fetcher.release.set()
        await changes.wait_for(lambda: all(isinstance(resolver.outcome(r), Ready) for r in wanted))
    assert fetcher.peak == 2


async def test_fetcher_bug_is_contained(make_resolver: MakeResolver, changes: Signal) -> None:
    """An unexpected exception in a fetcher becomes Failed; run() and other work go on."""
    good = BlockingFetcher()
    good.release.set()
    resolver = make_resolver(fetchers={"http": CrashingFetcher(), "https": good})
    broken = ModuleRequest(url="http://modules.example/m.wasm")
    fine = ModuleRequest(url="https://modules.example/m.wasm")
    async with running(resolver) as task:
        resolver.resolve(broken)
        resolver.resolve(fine)
        await changes.wait_for(
            lambda: (
                isinstance(resolver.outcome(broken), Failed)
                and isinstance(resolver.outcome(fine), Ready)
            )
        )
        assert not task.done()
    outcome = resolver.outcome(broken)
    assert isinstance(outcome, Failed)
    assert "unexpected RuntimeError" in str(outcome.error)


async def test_cancelling_run_leaves_no_tasks_and_can_resume(
    make_resolver: MakeResolver, changes: Signal
) -> None:
    """Cancelling run() ends every download task; a new run() resumes unfinished work."""
    fetcher = BlockingFetcher()
    resolver = make_resolver(fetchers={"http": fetcher})
    wanted = requests(3)
    for request in wanted:
        resolver.resolve(request)
    baseline = asyncio.all_tasks()
    task = asyncio.create_task(resolver.run())
    await fetcher.started.wait_for(lambda: fetcher.active == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() - baseline - {task} == set()
    assert fetcher.active == 0
    assert all(isinstance(resolver.outcome(r), Pending) for r in wanted)

    fetcher.release.set()
    async with running(resolver):
        await changes.wait_for(lambda: all(isinstance(resolver.outcome(r), Ready) for r in wanted))


async def test_run_refuses_to_start_twice(make_resolver: MakeResolver) -> None:
    """A second concurrent run() is a programming error, reported at once."""
    resolver = make_resolver()
    async with running(resolver):
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await resolver.run()


def test_outcomes_never_show_credentials(make_resolver: MakeResolver) -> None:
    """A refused URL's outcome names it without its userinfo."""
    resolver = make_resolver()
    request = ModuleRequest(url="ftp://user:s3cret@modules.example/m.wasm")
    outcome = resolver.resolve(request)
    assert isinstance(outcome, Failed)
    assert outcome.error.reason == "unsupported_scheme"
    assert "ftp://modules.example/m.wasm" in str(outcome.error)
    for text in (str(outcome.error), repr(outcome), repr(resolver.outcome(request))):
        assert "s3cret" not in text
