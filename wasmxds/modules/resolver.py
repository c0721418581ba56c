"""Turn module requests into outcomes without ever blocking the reconcile stage.

The reconcile stage calls :meth:`ModuleResolver.resolve` for every plugin on
every pass. The answer comes from memory at once (``Ready``, ``Failed`` or
``Pending``); downloads run in the background inside :meth:`ModuleResolver.run`,
and each change of an outcome calls ``on_change`` so the caller can reconcile
again (it debounces). Compared with Istio's agent: concurrent requests for one
module share a single download, and failures are retried with backoff rather
than waiting for the next config push.

Cache semantics follow Istio (``pkg/wasm/cache.go``): a known ``sha256`` that is
already on disk is a hit whatever the pull policy; ``IfNotPresent`` reuses the
last module fetched for the same URL (and sha256) across plugin generations;
``Always`` pulls again for each new generation and, if that pull fails, keeps
serving what the previous pull fetched (``Ready(stale=error)``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from wasmxds.errors import FetchError, ModuleError, UnsupportedSchemeError
from wasmxds.modules.backoff import Backoff
from wasmxds.modules.store import ModuleStore, is_digest
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

__all__ = ["Fetcher", "ModuleResolver", "ModuleState"]

log = structlog.get_logger(__name__)

_FILE_PREFIX = "file://"

CacheKey = tuple[str, ...]
# The URL index key: which bytes a (url, sha256) pair last turned out to be.
UrlKey = tuple[str, str]


class Fetcher(Protocol):
    """Downloads one module and returns its verified Wasm bytes, or raises ModuleError."""

    async def fetch(self, request: ModuleRequest) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ModuleState:
    """One wanted module as a status page shows it. ``url`` never carries credentials."""

    url: str
    sha256: str
    pull_policy: str
    generation: str
    state: Literal["pending", "ready", "stale", "failed"]
    fetching: bool
    attempts: int
    last_error: str | None
    error_reason: str | None
    digest: str | None
    size: int | None
    path: str | None
    next_retry_in: float | None


class _Entry:
    """The resolver's bookkeeping for one cache key."""

    __slots__ = ("attempts", "fetching", "outcome", "request", "retry_at", "task")

    def __init__(self, request: ModuleRequest, outcome: ModuleOutcome) -> None:
        self.request = request
        self.outcome = outcome
        self.attempts = 0
        self.fetching = False
        self.retry_at: float | None = None
        self.task: asyncio.Task[None] | None = None


class ModuleResolver:
    """Resolves module requests from memory and fetches missing modules in the background.

    :meth:`run` must be running for anything to be downloaded. ``resolve`` may be
    called before it starts: the work is queued and begins when ``run`` starts.
    If ``run`` is cancelled, unfinished work is queued again and resumes if
    ``run`` is started anew.
    """

    def __init__(
        self,
        *,
        store: ModuleStore,
        fetchers: Mapping[str, Fetcher],
        on_change: Callable[[], None],
        retry: Backoff,
        max_parallel: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self._store = store
        self._fetchers = dict(fetchers)
        self._on_change = on_change
        self._retry = retry
        self._clock = clock
        self._slots = asyncio.Semaphore(max_parallel)
        self._entries: dict[CacheKey, _Entry] = {}
        # Last module each (url, sha256) was fetched as; survives retain() so that
        # IfNotPresent reuse and Always fallbacks work across plugin generations.
        self._by_url: dict[UrlKey, Module] = {}
        self._queue: asyncio.Queue[CacheKey] = asyncio.Queue()
        self._running = False

    # ----------------------------------------------------------------- queries

    def resolve(self, request: ModuleRequest) -> ModuleOutcome:
        """The module's outcome now; schedules a download when none is known. Never blocks."""
        key = request.cache_key
        if request.url.startswith(_FILE_PREFIX):
            # Istio passes file:// through untouched: the path is on the proxy, not here.
            return self._record(request, Ready(LocalFile(request.url.removeprefix(_FILE_PREFIX))))
        known = self._known_digest(request)
        if known is not None:
            return self._record(request, Ready(known))
        entry = self._entries.get(key)
        if entry is not None:
            return entry.outcome
        if request.pull_policy is PullPolicy.IF_NOT_PRESENT:
            previous = self._previous(request)
            if previous is not None:
                return self._record(request, Ready(previous))
        if _scheme(request) not in self._fetchers:
            # Determined by configuration, not by the remote side: retrying cannot help.
            return self._record(
                request,
                Failed(_unsupported(request, self._fetchers), attempts=1, next_retry_in=math.inf),
            )
        entry = _Entry(request, Pending(started_at=self._clock()))
        self._entries[key] = entry
        self._queue.put_nowait(key)
        return entry.outcome

    def outcome(self, request: ModuleRequest) -> ModuleOutcome | None:
        """The recorded outcome for ``request``, without scheduling anything."""
        entry = self._entries.get(request.cache_key)
        return None if entry is None else entry.outcome

    def retain(self, requests: Iterable[ModuleRequest]) -> None:
        """Keep only these requests: others stop retrying and their outcomes are forgotten.

        Modules already fetched stay on disk and in the URL index, so a request
        that comes back later is served from the cache under IfNotPresent.
        """
        wanted = {request.cache_key for request in requests}
        for key in [key for key in self._entries if key not in wanted]:
            entry = self._entries.pop(key)
            if entry.task is not None:
                entry.task.cancel()
            log.debug("module.dropped", url=entry.request.display_url)

    def snapshot_state(self) -> list[ModuleState]:
        """Per-request status for debugging and status pages."""
        now = self._clock()
        return [self._state(entry, now) for entry in self._entries.values()]

    # ----------------------------------------------------------------- running

    async def run(self) -> None:
        """Own every download and retry task until cancelled; no task outlives this call."""
        if self._running:
            raise RuntimeError("ModuleResolver.run() is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    key = await self._queue.get()
                    entry = self._entries.get(key)
                    if entry is None or entry.task is not None:
                        continue  # dropped by retain(), or already being worked on
                    entry.task = group.create_task(
                        self._work(entry), name=f"module {entry.request.display_url}"
                    )
        finally:
            self._running = False
            # The group has cancelled and awaited every task; requeue their work
            # so a later run() picks it up instead of leaving it Pending forever.
            for key, entry in self._entries.items():
                if entry.task is not None:
                    entry.task = None
                    entry.fetching = False
                    self._queue.put_nowait(key)

    async def _work(self, entry: _Entry) -> None:
        request = entry.request
        fetcher = self._fetchers[_scheme(request)]
        while True:
            async with self._slots:
                started = self._clock()
                entry.fetching = True
                try:
                    module = await self._store.put(await fetcher.fetch(request))
                except ModuleError as exc:
                    error: ModuleError = exc
                except Exception as exc:
                    # A bug in a fetcher must not take every other download down with it.
                    log.exception("module.fetch_crashed", url=request.display_url)
                    error = FetchError(
                        f"{request.display_url}: unexpected {type(exc).__name__} while fetching"
                    )
                else:
                    self._succeeded(entry, module, self._clock() - started)
                    return
                finally:
                    entry.fetching = False
            delay = self._failed(entry, error)
            await asyncio.sleep(delay)

    def _succeeded(self, entry: _Entry, module: Module, duration: float) -> None:
        request = entry.request
        self._by_url[_url_key(request)] = module
        entry.attempts += 1
        entry.retry_at = None
        entry.task = None
        log.info(
            "module.fetched",
            url=request.display_url,
            digest=module.digest,
            size=module.size,
            duration_ms=round(duration * 1000),
            attempt=entry.attempts,
        )
        self._update(entry, Ready(module))

    def _failed(self, entry: _Entry, error: ModuleError) -> float:
        request = entry.request
        entry.attempts += 1
        delay = self._retry.delay(entry.attempts)
        entry.retry_at = self._clock() + delay
        log.warning(
            "module.fetch_failed",
            url=request.display_url,
            error=str(error),
            reason=error.reason,
            attempt=entry.attempts,
            retry_in=round(delay, 3),
        )
        previous = self._previous(request)
        outcome: ModuleOutcome
        if previous is not None:
            # Keep serving what worked (a re-pull under Always); report the failure.
            outcome = Ready(previous, stale=error)
        else:
            outcome = Failed(error, attempts=entry.attempts, next_retry_in=delay)
        self._update(entry, outcome)
        return delay

    # ----------------------------------------------------------------- helpers

    def _record(self, request: ModuleRequest, outcome: ModuleOutcome) -> ModuleOutcome:
        """Remember an outcome decided without downloading (for snapshot_state)."""
        key = request.cache_key
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(request, outcome)
            return outcome
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None
        entry.retry_at = None
        self._update(entry, outcome)
        return outcome

    def _update(self, entry: _Entry, outcome: ModuleOutcome) -> None:
        if outcome == entry.outcome:
            return
        entry.outcome = outcome
        try:
            self._on_change()
        except Exception:
            log.exception("module.on_change_failed")

    def _known_digest(self, request: ModuleRequest) -> Module | None:
        digest = request.sha256.strip().lower()
        return self._store.get(digest) if is_digest(digest) else None

    def _previous(self, request: ModuleRequest) -> Module | None:
        """The module this URL was last fetched as, if it is still on disk."""
        module = self._by_url.get(_url_key(request))
        if module is None:
            return None
        if self._store.get(module.digest) is None:
            del self._by_url[_url_key(request)]  # someone cleaned the cache directory
            return None
        return module

    def _state(self, entry: _Entry, now: float) -> ModuleState:
        request = entry.request
        outcome = entry.outcome
        error: ModuleError | None = None
        module: Module | LocalFile | None = None
        state: Literal["pending", "ready", "stale", "failed"]
        match outcome:
            case Ready(module=module, stale=error):
                state = "ready" if error is None else "stale"
            case Failed(error=error):
                state = "failed"
            case Pending():
                state = "pending"
        retry_in = None
        if entry.retry_at is not None and entry.task is not None:
            retry_in = max(entry.retry_at - now, 0.0)
        return ModuleState(
            url=request.display_url,
            sha256=request.sha256,
            pull_policy=request.pull_policy.value,
            generation=request.generation,
            state=state,
            fetching=entry.fetching,
            attempts=entry.attempts,
            last_error=None if error is None else str(error),
            error_reason=None if error is None else error.reason,
            digest=module.digest if isinstance(module, Module) else None,
            size=module.size if isinstance(module, Module) else None,
            path=str(module.path) if module is not None else None,
            next_retry_in=retry_in,
        )


def _url_key(request: ModuleRequest) -> UrlKey:
    return (request.url, request.sha256.strip().lower())


def _scheme(request: ModuleRequest) -> str:
    try:
        return request.scheme
    except ValueError:
        # A malformed URL: let the fetcher for its scheme report what is wrong with it.
        return request.url.partition("://")[0].lower()


def _unsupported(request: ModuleRequest, fetchers: Mapping[str, Fetcher]) -> UnsupportedSchemeError:
    scheme = _scheme(request)
    if scheme == "oci":
        return UnsupportedSchemeError(
            f"{request.display_url}: oci:// modules are not supported yet"
        )
    supported = ", ".join(sorted({"file", *fetchers}))
    return UnsupportedSchemeError(
        f"{request.display_url}: unsupported module URL scheme {scheme!r} (supported: {supported})"
    )
