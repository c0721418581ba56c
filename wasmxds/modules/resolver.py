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

Beyond Istio, a digest is not a key to the cache: a hit is served only to
credentials that pulled the module, or that the registry accepted for it
recently; any other request is re-authorised against its own registry first
(:mod:`wasmxds.modules.access`). A refusal (``module_access_denied``) is a
failed fetch like any other. Under a signature requirement every hit, IfNotPresent
reuse included, is served at once only when its signature was checked within
the access TTL; otherwise it is checked again first (one manifest and one
signature request; an earlier Ready keeps being served meanwhile). A request that must be signed
(``ModuleRequest.verify``) is refused at once unless it is OCI: nothing else
can carry a signature.

Before a fetched module becomes ``Ready`` it passes the pre-flight check, when
one is given (``preflight``, :mod:`wasmxds.modules.preflight`): a module Envoy
could not load fails like a fetch (``module_incompatible``) and is never
served. The verdict is kept per module digest in the index, so a module is
checked once; a cached module that was never checked (an index from before the
check) is checked before it is served. ``file://`` modules are paths on the
proxy and cannot be checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import structlog

from wasmxds.backoff import Backoff
from wasmxds.errors import (
    FetchError,
    MissingPullSecretError,
    ModuleAccessDeniedError,
    ModuleError,
    ModuleIncompatibleError,
    SignatureInvalidError,
    UnsupportedSchemeError,
)
from wasmxds.metrics import Metrics
from wasmxds.modules.access import (
    DEFAULT_ACCESS_TTL,
    ModuleAccess,
    find_hit,
    pinned_digest,
    puller,
    with_manifests,
)
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.slots import PullSlots, SlotTakenBack
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import (
    CacheHit,
    Failed,
    Fetched,
    LocalFile,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
    Ready,
    Verdict,
)

__all__ = [
    "DEFAULT_ACCESS_TTL",
    "Checker",
    "Fetcher",
    "ModuleResolver",
    "PreflightCheck",
    "pinned_digest",
]

log = structlog.get_logger(__name__)

_FILE_PREFIX = "file://"
# Verdicts about this request, not trouble reaching the module: an earlier copy is
# not served in their place (the reconciler's last good version still is).
_REFUSALS = (ModuleAccessDeniedError, SignatureInvalidError)

CacheKey = tuple[str, ...]
# The pre-flight check: the verdict on a stored module (raises ModuleError when it cannot
# give one, e.g. it timed out).
PreflightCheck = Callable[[Module], Awaitable[Verdict]]


class Fetcher(Protocol):
    """Downloads one module and returns its verified Wasm bytes, or raises ModuleError.

    A fetcher may instead store the module itself and return :class:`Fetched`
    (the OCI fetcher does, to deduplicate by manifest digest).
    """

    async def fetch(self, request: ModuleRequest) -> bytes | Fetched: ...


@runtime_checkable
class Checker(Protocol):
    """A fetcher that can re-authorise a cache hit without downloading it (OCI).

    ``check`` asks the request's own registry, with the request's credentials,
    for a manifest that holds ``hit.module`` (and verifies its signature when the
    request needs one); it returns the hit as :class:`Fetched` or raises
    :class:`~wasmxds.errors.ModuleAccessDeniedError` (or another ModuleError).
    """

    async def check(self, request: ModuleRequest, hit: CacheHit) -> Fetched: ...


class _Entry:
    """The resolver's bookkeeping for one cache key."""

    __slots__ = (
        "attempts",
        "fetched_at",
        "fetching",
        "hit",
        "outcome",
        "request",
        "secret_version",
        "task",
        "vet",
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
        # Set when the work is re-authorising a cache hit rather than fetching.
        self.hit: CacheHit | None = None
        # Set when the work is only checking a cached module that was never checked.
        self.vet: Module | None = None


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
        access_ttl: float = DEFAULT_ACCESS_TTL,
        preflight: PreflightCheck | None = None,
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
        self._access = ModuleAccess(access_ttl, clock=clock)
        self._on_fetched = on_fetched
        self._metrics = metrics
        # None: modules are served unchecked (--preflight off, and unit tests' fake modules).
        self._preflight = preflight
        # One check per digest at a time: concurrent fetches of the same bytes wait for it.
        self._checking: dict[str, asyncio.Lock] = {}
        # Digests the current snapshot references (from retain); never purged.
        self._in_use: set[str] = set()
        self._queue: asyncio.Queue[CacheKey] = asyncio.Queue()
        self._running = False

    # ----------------------------------------------------------------- queries

    def resolve(self, request: ModuleRequest) -> ModuleOutcome:
        """The module's outcome now; schedules a download when none is known. Never blocks."""
        key = request.cache_key
        if request.verify and (
            _scheme(request) != "oci" or not all(group.keys for group in request.verify)
        ):
            return self._record(
                request, Failed(_unverifiable(request), attempts=1, next_retry_in=math.inf)
            )
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
        entry = self._entries.get(key)
        if entry is not None:
            settled = isinstance(entry.outcome, Ready) and entry.outcome.stale is None
            if entry.secret_version != secret_version and not settled:
                # The secret appeared or changed since this failed: start over now.
                log.info(
                    "module.secret_changed",
                    url=request.display_url,
                    secret=str(request.pull_secret),
                )
                self._drop(key)
                entry = None
        hit = find_hit(request, self.index, self._store)
        if hit is not None:
            outcome = self._use_hit(request, hit, entry, secret_version)
            if outcome is not None:
                return outcome
        if entry is not None:
            entry.secret_version = secret_version
            return entry.outcome
        if request.pull_policy is PullPolicy.IF_NOT_PRESENT:
            previous = self._previous(request)
            if previous is not None:
                # Under a signature requirement, reuse is a cache hit like any other: the
                # signature is checked again once the last check is older than the TTL.
                outcome = (
                    self._use_hit(request, CacheHit(previous), None, secret_version)
                    if request.verify
                    else self._ready_if_checked(request, previous, None, secret_version)
                )
                if outcome is not None:
                    return outcome
        if _scheme(request) not in self._fetchers:
            # Determined by configuration, not by the remote side: retrying cannot help.
            return self._record(
                request,
                Failed(_unsupported(request, self._fetchers), attempts=1, next_retry_in=math.inf),
            )
        return self._schedule(request, secret_version).outcome

    def _schedule(
        self, request: ModuleRequest, secret_version: str | None, hit: CacheHit | None = None
    ) -> _Entry:
        entry = _Entry(request, Pending(started_at=self._clock()), secret_version)
        entry.hit = hit
        self._entries[request.cache_key] = entry
        self._queue.put_nowait(request.cache_key)
        if self._metrics is not None:
            self._metrics.cache_lookups.labels("miss").inc()
        return entry

    def _use_hit(
        self,
        request: ModuleRequest,
        hit: CacheHit,
        entry: _Entry | None,
        secret_version: str | None,
    ) -> ModuleOutcome | None:
        """The outcome for a request that names a cached module; None: fetch it as usual.

        Served at once when the registry accepted these credentials for it (and,
        under a signature requirement, the signature checked out) within the access
        TTL, or, without a requirement, when these credentials pulled the module;
        else the registry is asked in the background, and an earlier "yes" for
        this request keeps being served meanwhile. A requirement is not met by
        having pulled the module once: a signature can be removed since.
        """
        digest = hit.module.digest
        if (
            _scheme(request) != "oci"
            or self._access.allowed(request, secret_version, digest)
            or (not request.verify and self.index.pulled_by(digest, puller(request)))
        ):
            return self._ready_if_checked(request, hit.module, entry, secret_version)
        if not isinstance(self._fetchers.get("oci"), Checker):
            return None  # nothing can check without downloading: a fetch decides
        hit = with_manifests(hit, self.index, request.url)
        if entry is None:
            log.info(
                "module.access_check",
                url=request.display_url,
                digest=digest,
                secret=str(request.pull_secret) if request.pull_secret else None,
            )
            return self._schedule(request, secret_version, hit).outcome
        entry.secret_version = secret_version
        if entry.task is None and isinstance(entry.outcome, Ready):
            entry.hit = hit  # the last "yes" expired: ask again, serving meanwhile
            self._queue.put_nowait(request.cache_key)
        return entry.outcome

    def _ready_if_checked(
        self,
        request: ModuleRequest,
        module: Module,
        entry: _Entry | None,
        secret_version: str | None,
    ) -> ModuleOutcome | None:
        """``Ready`` for a cached module that passed the pre-flight check (or when there is
        none); Pending while one that was never checked is; None when it failed (fetched
        as usual: the URL may name other bytes now, and a fetch of the same ones fails)."""
        if self._preflight is None:
            return self._record(request, Ready(module))
        verdict = self.index.verdict(module.digest)
        if verdict is None:
            if entry is not None and entry.vet is not None and entry.vet.digest == module.digest:
                return entry.outcome  # being checked
            if entry is not None:
                self._drop(request.cache_key)
            scheduled = self._schedule(request, secret_version)
            scheduled.vet = module
            return scheduled.outcome
        if verdict.abi is None:
            return None
        return self._record(request, Ready(dataclasses.replace(module, abi=verdict.abi)))

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
        while True:
            started = self._clock()
            checked_only = entry.vet is not None
            fetched, error = await self._attempt(entry)
            if fetched is not None:
                try:
                    module = await self._vet(fetched.module)
                except ModuleError as exc:
                    error = exc.about(request.display_url)
                else:
                    fetched = dataclasses.replace(fetched, module=module)
                    self._succeeded(entry, fetched, self._clock() - started, checked_only)
                    break
            assert error is not None
            previous = None if isinstance(error, _REFUSALS) else await self._fallback(request)
            delay = self._failed(entry, error, previous)
            # The next try fetches: the URL may name other bytes by then.
            entry.vet = None
            await asyncio.sleep(delay)
        # Outside the slot: the index is local work, not a download.
        await self.index.flush()

    async def _attempt(self, entry: _Entry) -> tuple[Fetched | None, ModuleError | None]:
        """One download (or re-authorisation) in a pull slot: the module, or why not."""
        request = entry.request
        if entry.vet is not None:
            return Fetched(entry.vet), None  # cached already: only the check is left
        fetcher = self._fetchers[_scheme(request)]
        try:
            async with self._slots.slot(_host(request), retry=entry.attempts > 0) as ticket:
                entry.fetching = True
                try:
                    result: bytes | Fetched
                    if entry.hit is not None and isinstance(fetcher, Checker):
                        result = await fetcher.check(request, entry.hit)
                    else:
                        result = await fetcher.fetch(request)
                    ticket.keep()  # downloaded: storing it is not stalling
                    if isinstance(result, Fetched):
                        return result, None
                    return Fetched(await self._store.put(result)), None
                except ModuleError as exc:
                    return None, exc
                except Exception as exc:
                    # A bug in a fetcher must not take every other download down with it.
                    log.exception("module.fetch_crashed", url=request.display_url)
                    return None, FetchError(
                        f"unexpected {type(exc).__name__} while fetching",
                        url=request.display_url,
                    )
                finally:
                    entry.fetching = False
        except SlotTakenBack as exc:
            # Cancelled for a first pull that waited; the backoff retries it later.
            return None, FetchError(str(exc), url=request.display_url)

    async def _vet(self, module: Module) -> Module:
        """``module`` with what it implements, once it passed the pre-flight check (checked
        once per digest); raises ModuleIncompatibleError when Envoy could not run it."""
        if self._preflight is None:
            return module
        lock = self._checking.setdefault(module.digest, asyncio.Lock())
        try:
            async with lock:
                verdict = await self._verdict(module, self._preflight)
        finally:
            if not lock.locked():
                self._checking.pop(module.digest, None)
        if verdict.abi is None:
            raise ModuleIncompatibleError(f"the module cannot run in Envoy: it {verdict.problem}")
        return dataclasses.replace(module, abi=verdict.abi)

    async def _verdict(self, module: Module, preflight: PreflightCheck) -> Verdict:
        """The remembered verdict on ``module``, or a new one (remembered in the index)."""
        verdict = self.index.verdict(module.digest)
        if verdict is None:
            started = self._clock()
            try:
                verdict = await preflight(module)
            except ModuleError:
                raise
            except Exception as exc:
                log.exception("module.preflight_crashed", digest=module.digest)
                raise ModuleIncompatibleError(
                    f"the pre-flight check failed unexpectedly ({type(exc).__name__});"
                    " the module is not served until a check passes",
                    retryable=True,
                ) from exc
            self.index.record_verdict(module.digest, module.size, verdict)
            log.info(
                "module.preflight",
                digest=module.digest,
                size=module.size,
                duration_ms=round((self._clock() - started) * 1000, 1),
                abi=verdict.abi.version if verdict.abi else None,
                http=verdict.abi.http if verdict.abi else None,
                network=verdict.abi.network if verdict.abi else None,
                problem=verdict.problem or None,
            )
        return verdict

    async def _fallback(self, request: ModuleRequest) -> Module | None:
        """What this URL was last fetched as, if it is on disk and passes the check."""
        previous = self._previous(request)
        if previous is None:
            return None
        try:
            return await self._vet(previous)
        except ModuleError:
            return None

    def _succeeded(
        self, entry: _Entry, fetched: Fetched, duration: float, checked_only: bool = False
    ) -> None:
        request = entry.request
        module = fetched.module
        entry.vet = None
        if checked_only:
            # A cached module that was never checked: nothing was pulled or re-authorised.
            entry.task = None
            self._update(entry, Ready(module))
            return
        # Pulled or re-authorised (and the signature checked): asked again after the TTL.
        self._access.grant(request, entry.secret_version, module.digest)
        if entry.hit is None:
            self.index.record(
                request.url,
                request.sha256,
                module.digest,
                module.size,
                secret=_secret(request),
                manifest=fetched.manifest_digest,
                layout=fetched.layout,
                requirement=request.requirement,
                puller=puller(request),
            )
        entry.attempts += 1
        entry.task = None
        entry.fetched_at = self._clock()
        log.info(
            "module.access_granted" if entry.hit is not None else "module.fetched",
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

    def _failed(self, entry: _Entry, error: ModuleError, previous: Module | None) -> float:
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
            if self._metrics is not None and isinstance(outcome, Failed):
                # Decided without a download (a missing secret, a module that cannot be
                # verified): counted once, as the failed fetch it stands for.
                self._metrics.module_fetches.labels(outcome.error.reason, _scheme(request)).inc()
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

    def _previous(self, request: ModuleRequest) -> Module | None:
        """The module this URL was last fetched as, if it is still on disk."""
        ref = self.index.ref(request.url, request.sha256, _secret(request), request.requirement)
        if ref is None:
            return None
        module = self._store.get(ref.digest)
        if module is None:
            self.index.forget(ref.digest)  # someone cleaned the cache directory
            return None
        return module


def _secret(request: ModuleRequest) -> str:
    return "" if request.pull_secret is None else str(request.pull_secret)


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


def _unverifiable(request: ModuleRequest) -> SignatureInvalidError:
    for group in request.verify:
        if not group.keys:
            return SignatureInvalidError(
                f"no key can verify the module: {group.source}",
                url=request.display_url,
                retryable=False,
            )
    scheme = _scheme(request)
    sources = " and ".join(dict.fromkeys(group.source for group in request.verify))
    return SignatureInvalidError(
        f"a signed module is required ({sources}), but a {scheme}:// module cannot carry"
        " a signature: signatures are looked up in an OCI registry; push the module to a"
        " registry and sign it (`wasmxds push --sign KEY`, or `cosign sign --key`)",
        url=request.display_url,
        retryable=False,
    )
