"""Turn module requests into outcomes without ever blocking the reconcile stage.

The reconcile stage calls :meth:`ModuleResolver.resolve` for every plugin on
every pass. The answer comes from memory at once (``Ready``, ``Failed`` or
``Pending``); downloads run in the background inside :meth:`ModuleResolver.run`,
and each change of an outcome calls ``on_change`` so the caller can reconcile
again (it debounces). Compared with Istio's agent: concurrent requests for one
module share a single download, and failures are retried with backoff rather
than waiting for the next config push. Downloads take turns in
:class:`~wasmxds.modules.slots.PullSlots` (a per-host cap, first pulls before
retries, stalled transfers give their slot back), so slow or failing hosts
cannot hold back other hosts' modules.

Cache semantics follow Istio (``pkg/wasm/cache.go``): a known ``sha256`` that is
already on disk is a hit whatever the pull policy; ``IfNotPresent`` reuses the
last module fetched for the same URL (and sha256) across plugin generations;
``Always`` pulls again for each new generation and, if that pull fails, keeps
serving what the previous pull fetched (``Ready(stale=error)``).

What a URL last resolved to lives in the persistent :class:`ModuleIndex`, so
all of that holds across restarts: a restarted server serves every module it
knew with the registry down. For OCI, a ``sha256`` (or an ``@sha256:`` in the
URL) that names a known *manifest* is a hit too. A request naming an image
pull secret that does not exist fails at once (Istio: "missing image pulling
secret"), and when the secret appears or changes, failed fetches that use it
start over immediately instead of waiting out their backoff.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from wasmxds.api.moduleurl import OCI_PREFIX
from wasmxds.backoff import Backoff
from wasmxds.errors import (
    FetchError,
    MissingPullSecretError,
    ModuleError,
    UnsupportedSchemeError,
)
from wasmxds.metrics import Metrics
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.slots import PullSlots, SlotTakenBack
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.modules.types import (
    Failed,
    Fetched,
    LocalFile,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
    Ready,
)

__all__ = ["Fetcher", "ModuleResolver", "pinned_digest"]

log = structlog.get_logger(__name__)

_FILE_PREFIX = "file://"
_PINNED = "@sha256:"

CacheKey = tuple[str, ...]


class Fetcher(Protocol):
    """Downloads one module and returns its verified Wasm bytes, or raises ModuleError.

    A fetcher may instead store the module itself and return :class:`Fetched`
    (the OCI fetcher does, to deduplicate by manifest digest).
    """

    async def fetch(self, request: ModuleRequest) -> bytes | Fetched: ...


class _Entry:
    """The resolver's bookkeeping for one cache key."""

    __slots__ = (
        "attempts",
        "fetched_at",
        "fetching",
        "outcome",
        "request",
        "secret_version",
        "task",
    )

    def __init__(
        self, request: ModuleRequest, outcome: ModuleOutcome, secret_version: str | None = None
    ) -> None:
        self.request = request
        self.outcome = outcome
        self.attempts = 0
        self.fetching = False
        self.task: asyncio.Task[None] | None = None
        # The pull secret's content version this entry's fetches used.
        self.secret_version = secret_version
        # When the last successful fetch finished (for --repull-interval).
        self.fetched_at: float | None = None


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
        max_per_host: int | None = None,
        lend_stalled_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        index: ModuleIndex | None = None,
        pull_secrets: PullSecrets | None = None,
        on_fetched: Callable[[Module], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._fetchers = dict(fetchers)
        self._on_change = on_change
        self._retry = retry
        self._clock = clock
        # Fair slots: a slow or failing host cannot hold back other hosts' modules.
        self._slots = PullSlots(max_parallel, per_host=max_per_host, lend_after=lend_stalled_after)
        self._entries: dict[CacheKey, _Entry] = {}
        # Last module each (url, sha256, secret) was fetched as; survives retain()
        # (and restarts) so IfNotPresent reuse and Always fallbacks keep working.
        self.index = index if index is not None else ModuleIndex()
        self._secrets = pull_secrets
        self._on_fetched = on_fetched
        self._metrics = metrics
        # Digests the current snapshot references (from retain); never purged.
        self._in_use: set[str] = set()
        self._queue: asyncio.Queue[CacheKey] = asyncio.Queue()
        self._running = False

    # ----------------------------------------------------------------- queries

    def resolve(self, request: ModuleRequest) -> ModuleOutcome:
        """The module's outcome now; schedules a download when none is known. Never blocks."""
        key = request.cache_key
        if request.url.startswith(_FILE_PREFIX):
            # Istio passes file:// through untouched: the path is on the proxy, not here.
            return self._record(request, Ready(LocalFile(request.url.removeprefix(_FILE_PREFIX))))
        secret_version: str | None = None
        if request.pull_secret is not None:
            secret_version = (
                None if self._secrets is None else self._secrets.version(request.pull_secret)
            )
            if secret_version is None:
                # Before any cache lookup, as in Istio: a plugin whose secret is gone fails.
                error = MissingPullSecretError(
                    f"image pull secret {request.pull_secret} not found"
                    f" (a Secret of type kubernetes.io/dockerconfigjson in namespace"
                    f" {request.pull_secret.namespace})",
                    url=request.display_url,
                )
                return self._record(request, Failed(error, attempts=1, next_retry_in=math.inf))
        known = self._known_digest(request)
        if known is not None:
            return self._record(request, Ready(known))
        entry = self._entries.get(key)
        if entry is not None:
            settled = isinstance(entry.outcome, Ready) and entry.outcome.stale is None
            if entry.secret_version == secret_version or settled:
                entry.secret_version = secret_version
                return entry.outcome
            # The secret appeared or changed since this failed: start over now.
            log.info(
                "module.secret_changed", url=request.display_url, secret=str(request.pull_secret)
            )
            self._drop(key)
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
        entry = _Entry(request, Pending(started_at=self._clock()), secret_version)
        self._entries[key] = entry
        self._queue.put_nowait(key)
        if self._metrics is not None:
            self._metrics.cache_lookups.labels("miss").inc()
        return entry.outcome

    def outcome(self, request: ModuleRequest) -> ModuleOutcome | None:
        """The recorded outcome for ``request``, without scheduling anything."""
        entry = self._entries.get(request.cache_key)
        return None if entry is None else entry.outcome

    def retain(self, requests: Iterable[ModuleRequest], in_use: Iterable[Module] = ()) -> None:
        """Keep only these requests: others stop retrying and their outcomes are forgotten.

        ``in_use`` are the modules the published snapshot references (including
        a previous version kept while its replacement is pending); they, and
        every module a kept request is ready with, are recorded as used now and
        are never purged. Modules already fetched stay on disk and in the index,
        so a request that comes back later is served from the cache under
        IfNotPresent.
        """
        wanted = {request.cache_key for request in requests}
        for key in [key for key in self._entries if key not in wanted]:
            log.debug("module.dropped", url=self._entries[key].request.display_url)
            self._drop(key)
        used = {module.digest: module for module in in_use}
        for entry in self._entries.values():
            if isinstance(entry.outcome, Ready) and isinstance(entry.outcome.module, Module):
                used.setdefault(entry.outcome.module.digest, entry.outcome.module)
        self._in_use = set(used)
        self.index.touch((module.digest, module.size) for module in used.values())

    def in_use(self) -> set[str]:
        """Digests of modules that must stay on disk: referenced now, or ready for a request."""
        digests = set(self._in_use)
        for entry in self._entries.values():
            if isinstance(entry.outcome, Ready) and isinstance(entry.outcome.module, Module):
                digests.add(entry.outcome.module.digest)
        return digests

    def repull(self, max_age: float) -> int:
        """Re-check the tags of ``Always`` requests last fetched more than ``max_age`` s ago.

        The module keeps being served meanwhile; a new image replaces it, a
        failure keeps it (stale) and is retried with backoff. Digest-pinned URLs
        never change and are skipped. Returns how many re-pulls were queued.
        """
        now = self._clock()
        queued = 0
        for key, entry in self._entries.items():
            request = entry.request
            if (
                request.pull_policy is not PullPolicy.ALWAYS
                or entry.task is not None
                or entry.fetched_at is None
                or now - entry.fetched_at < max_age
                or pinned_digest(request.url)
                or not isinstance(entry.outcome, Ready)
            ):
                continue
            self._queue.put_nowait(key)
            queued += 1
        return queued

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

    async def run_repull(self, interval: float) -> None:
        """Call :meth:`repull` often enough that no tag waits much longer than ``interval``."""
        while True:
            await asyncio.sleep(max(interval / 4, 0.05))
            queued = self.repull(interval)
            if queued:
                log.debug("module.repull", queued=queued)

    async def _work(self, entry: _Entry) -> None:
        request = entry.request
        fetcher = self._fetchers[_scheme(request)]
        host = _host(request)
        while True:
            error: ModuleError
            try:
                async with self._slots.slot(host, retry=entry.attempts > 0) as ticket:
                    started = self._clock()
                    entry.fetching = True
                    try:
                        result = await fetcher.fetch(request)
                        ticket.keep()  # downloaded: storing it is not stalling
                        if isinstance(result, Fetched):
                            fetched = result
                        else:
                            fetched = Fetched(await self._store.put(result))
                    except ModuleError as exc:
                        error = exc
                    except Exception as exc:
                        # A bug in a fetcher must not take every other download down with it.
                        log.exception("module.fetch_crashed", url=request.display_url)
                        error = FetchError(
                            f"unexpected {type(exc).__name__} while fetching",
                            url=request.display_url,
                        )
                    else:
                        self._succeeded(entry, fetched, self._clock() - started)
                        break
                    finally:
                        entry.fetching = False
            except SlotTakenBack as exc:
                # Cancelled for a first pull that waited; the backoff retries it later.
                error = FetchError(str(exc), url=request.display_url)
            delay = self._failed(entry, error)
            await asyncio.sleep(delay)
        # Outside the slot: the index is local work, not a download.
        await self.index.flush()

    def _succeeded(self, entry: _Entry, fetched: Fetched, duration: float) -> None:
        request = entry.request
        module = fetched.module
        self.index.record(
            request.url,
            request.sha256,
            module.digest,
            module.size,
            secret=_secret(request),
            manifest=fetched.manifest_digest,
            layout=fetched.layout,
        )
        entry.attempts += 1
        entry.task = None
        entry.fetched_at = self._clock()
        log.info(
            "module.fetched",
            url=request.display_url,
            digest=module.digest,
            size=module.size,
            layout=fetched.layout or None,
            manifest_digest=fetched.manifest_digest or None,
            duration_ms=round(duration * 1000),
            attempt=entry.attempts,
        )
        if self._on_fetched is not None:
            self._on_fetched(module)
        if self._metrics is not None:
            self._metrics.module_fetches.labels("success", _scheme(request)).inc()
        self._update(entry, Ready(module))

    def _failed(self, entry: _Entry, error: ModuleError) -> float:
        request = entry.request
        entry.attempts += 1
        delay = self._retry.delay(entry.attempts)
        log.warning(
            "module.fetch_failed",
            url=request.display_url,
            error=str(error),
            reason=error.reason,
            attempt=entry.attempts,
            retry_in=round(delay, 3),
        )
        if self._metrics is not None:
            self._metrics.module_fetches.labels(error.reason, _scheme(request)).inc()
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
        """Remember an outcome decided without downloading."""
        key = request.cache_key
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(request, outcome)
            if self._metrics is not None and isinstance(outcome, Ready):
                self._metrics.cache_lookups.labels("hit").inc()
            return outcome
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None
        self._update(entry, outcome)
        return outcome

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()

    def _update(self, entry: _Entry, outcome: ModuleOutcome) -> None:
        if outcome == entry.outcome:
            return
        entry.outcome = outcome
        try:
            self._on_change()
        except Exception:
            log.exception("module.on_change_failed")

    def _known_digest(self, request: ModuleRequest) -> Module | None:
        """A cached module the request pins by content: its sha256 names the module, or
        (OCI) a manifest we fetched before; or the URL's ``@sha256:`` names such a manifest."""
        candidates: list[str | None] = []
        digest = request.sha256.strip().lower()
        if is_digest(digest):
            candidates += [digest, self.index.manifest_module(digest)]
        pinned = pinned_digest(request.url)
        if pinned:
            candidates.append(self.index.manifest_module(pinned))
        for candidate in candidates:
            if candidate is not None and (module := self._store.get(candidate)) is not None:
                return module
        return None

    def _previous(self, request: ModuleRequest) -> Module | None:
        """The module this URL was last fetched as, if it is still on disk."""
        ref = self.index.ref(request.url, request.sha256, _secret(request))
        if ref is None:
            return None
        module = self._store.get(ref.digest)
        if module is None:
            self.index.forget(ref.digest)  # someone cleaned the cache directory
            return None
        return module


def _secret(request: ModuleRequest) -> str:
    return "" if request.pull_secret is None else str(request.pull_secret)


def pinned_digest(url: str) -> str:
    """The hex digest an ``oci://…@sha256:`` URL pins, or ""."""
    if not url.startswith(OCI_PREFIX) or _PINNED not in url:
        return ""
    digest = url.rsplit(_PINNED, 1)[1].lower()
    return digest if is_digest(digest) else ""


def _host(request: ModuleRequest) -> str:
    """The ``host[:port]`` a request downloads from: the unit of fairness between pulls."""
    try:
        parts = urlsplit(request.url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return ""  # malformed: the fetcher reports it, and at once
    return f"{host}:{port}" if port is not None else host


def _scheme(request: ModuleRequest) -> str:
    try:
        return request.scheme
    except ValueError:
        # A malformed URL: let the fetcher for its scheme report what is wrong with it.
        return request.url.partition("://")[0].lower()


def _unsupported(request: ModuleRequest, fetchers: Mapping[str, Fetcher]) -> UnsupportedSchemeError:
    scheme = _scheme(request)
    supported = ", ".join(sorted({"file", *fetchers}))
    return UnsupportedSchemeError(
        f"unsupported module URL scheme {scheme!r} (supported: {supported})",
        url=request.display_url,
    )
