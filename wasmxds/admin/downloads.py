"""Module downloads (``/modules/sha256/<hex>``, for ``--module-delivery remote``).

Only modules a current plugin references (served, last good, or being fetched)
are served, and with client certificates only to a client of a namespace such a
plugin applies to. A download may wait briefly for a fetch under way here that
will bring its digest: behind a Service, a proxy can ask this replica for a
module another replica has just fetched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from wasmxds.api.objects import ObjectKey
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.resolver import pinned_digest
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.modules.types import Module, ModuleRequest, Pending, Ready
from wasmxds.reconcile import PluginStatus

__all__ = ["ModuleDownloads", "Pulse"]

# How long a module download waits for a fetch under way that is known to
# produce its digest (Envoy's own http_uri timeout for remote modules is 30 s).
_MODULE_WAIT = 20.0
# A digest nothing here names may still come from a fetch whose result is not
# known yet (an unpinned URL, an OCI tag never pulled here, or before the first
# reconcile): behind a Service another replica may have fetched it first. Such
# requests wait briefly, and only this many at once; the rest are a 404 at once,
# so no client can tie up connections by asking for made-up digests.
_UNKNOWN_WAIT = 5.0
_UNKNOWN_WAITERS = 64
# Requests waiting for a digest a fetch is known to bring: a whole fleet may ask at
# once, but not without bound. The rest get a 503, which Envoy's remote fetch retries.
_KNOWN_WAITERS = 1024
# What fetches under way may produce is worked out again on every pulse, and
# otherwise at most this often, however many requests ask.
_EXPECTATION_MAX_AGE = 1.0


@dataclass(frozen=True, slots=True)
class _Expectation:
    """Which module digests the fetches under way here can bring."""

    digests: frozenset[str]
    """Digests a fetch under way is known to produce (pinned, or resolved before)."""
    open_in: frozenset[str] | None
    """The namespaces whose plugins' fetches under way may produce a digest not known
    yet (None: any namespace's, before the first reconcile)."""

    @property
    def open(self) -> bool:
        """Some fetch under way (or the first reconcile) may produce a digest not known yet."""
        return self.open_in is None or bool(self.open_in)

    def open_for(self, namespaces: Iterable[str]) -> bool:
        """Whether a fetch for one of ``namespaces`` may produce a digest not known yet."""
        return self.open_in is None or not self.open_in.isdisjoint(namespaces)


def _expectation(
    plugins: Iterable[PluginStatus], index: ModuleIndex | None, first_push: bool
) -> _Expectation:
    if not first_push:
        return _Expectation(frozenset(), open_in=None)  # what plugins want is not known yet
    digests: set[str] = set()
    open_in: set[str] = set()
    for status in plugins:
        if not isinstance(status.outcome, Pending):
            continue  # only a first fetch still under way can land a new digest
        known, exact = _digests_of(status.request, index)
        digests |= known
        if not exact:
            open_in.add(status.plugin.key.namespace)
    return _Expectation(frozenset(digests), frozenset(open_in))


def _digests_of(request: ModuleRequest, index: ModuleIndex | None) -> tuple[set[str], bool]:
    """The module digests fetching ``request`` may store, and whether that is all of them."""
    try:
        scheme = request.scheme
    except ValueError:
        return set(), True  # a malformed URL fails at once; nothing to wait for
    if scheme not in ("http", "https", "oci"):
        return set(), True  # file:// is a path on the proxy, never stored here
    pinned = request.sha256.strip().lower()
    if scheme != "oci" and is_digest(pinned):
        return {pinned}, True  # the module's own digest: this one or a failed fetch
    known: set[str] = set()
    exact = False
    if index is not None:
        secret = "" if request.pull_secret is None else str(request.pull_secret)
        ref = index.ref(request.url, request.sha256, secret, request.requirement)
        if ref is not None:
            known.add(ref.digest)  # what this URL resolved to before (a tag may have moved)
        # OCI: sha256 (Istio's meaning) or the URL's @sha256: name the manifest,
        # and a manifest seen before names its module for good.
        for manifest in (pinned, pinned_digest(request.url)):
            if is_digest(manifest) and (module := index.manifest_module(manifest)) is not None:
                known.add(module)
                exact = True
    if is_digest(pinned):
        known.add(pinned)  # an OCI sha256 may also be the module's own digest
    return known, exact


class Pulse:
    """Wakes every current waiter each time it fires (an Event re-armed after setting)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.fired = 0
        """How many times it has fired: who caches what it guards compares this."""

    def fire(self) -> None:
        self.fired += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class ModuleDownloads:
    """Answers module downloads from the store, for the plugins reconcile reports."""

    def __init__(
        self,
        *,
        plugins: Callable[[], Mapping[ObjectKey, PluginStatus]],
        store: ModuleStore,
        arrived: Pulse,
        first_push: Callable[[], bool],
        index: ModuleIndex | None,
        root_namespace: str,
    ) -> None:
        self._plugins = plugins
        self._store = store
        self._arrived = arrived
        self._first_push = first_push
        self._index = index
        self._root_namespace = root_namespace
        self._expectation: tuple[int, float, _Expectation] | None = None
        self._unknown_waiters = 0
        self._known_waiters = 0

    def users(self, digest: str) -> set[str]:
        """The namespaces of the current plugins that serve, keep or fetch module ``digest``."""
        users: set[str] = set()
        for status in self._plugins().values():
            digests: set[str] = set()
            if status.served_module is not None:
                digests.add(status.served_module.digest)  # last good
            match status.outcome:
                case Ready(module=Module() as module):
                    digests.add(module.digest)
                case Pending():
                    # A module already cached while its plugin is pending is waiting for
                    # that plugin's access or signature check, not for a download: until
                    # the check says yes, the plugin's namespace may not have it.
                    digests |= {
                        known
                        for known in _digests_of(status.request, self._index)[0]
                        if self._store.get(known) is None
                    }
            if digest in digests:
                users.add(status.plugin.key.namespace)
        return users

    async def serve(self, digest: str, namespaces: frozenset[str] | None) -> web.StreamResponse:
        """Module ``digest`` for a client of ``namespaces`` (None: anyone, no client CA)."""

        def allowed(users: set[str]) -> bool:
            if namespaces is None:
                return bool(users)
            # A root-namespace plugin applies to every namespace.
            return self._root_namespace in users or not namespaces.isdisjoint(users)

        module = self._store.get(digest)
        users = self.users(digest)
        if module is not None and not allowed(users):
            if namespaces is None:
                # The cache may keep modules no plugin uses any more (or that one
                # namespace pulled with its secret): only what is referenced is served.
                raise web.HTTPNotFound(text=f"module {digest} is not used by any current plugin\n")
            module = None
        elif module is None and (namespaces is None or allowed(users) or not users):
            # Behind a Service, a proxy can ask this replica for a module another
            # replica has just fetched; this one is most likely fetching it too. (A
            # digest another namespace's fetch brings is not waited for.)
            module = await self._await_module(digest, allowed, namespaces)
        if module is None:
            # With client certificates: not one of this namespace's modules, not cached,
            # or not used any more, all one answer at once, so that another tenant's
            # digests cannot be told from made-up ones.
            if namespaces is not None:
                shown = ", ".join(sorted(namespaces))
                raise web.HTTPNotFound(
                    text=f"module {digest}: no current plugin that applies to the namespace of"
                    f" your client certificate ({shown}) uses it, or it is not in the cache\n"
                )
            raise web.HTTPNotFound(text=f"module {digest} is not in the cache\n")
        return web.FileResponse(module.path, headers={"Content-Type": "application/wasm"})

    def _expected(self) -> _Expectation:
        """What fetches under way may bring; cached until the next pulse (or a second)."""
        now = time.monotonic()
        cached = self._expectation
        fired = self._arrived.fired
        if cached is None or cached[0] != fired or now - cached[1] > _EXPECTATION_MAX_AGE:
            expectation = _expectation(self._plugins().values(), self._index, self._first_push())
            self._expectation = cached = (fired, now, expectation)
        return cached[2]

    def _may_come(self, digest: str, namespaces: frozenset[str] | None) -> bool:
        """Whether a fetch under way may bring ``digest`` (for a client of ``namespaces``)."""
        expected = self._expected()
        if digest in expected.digests:
            return True
        if namespaces is None:
            return expected.open
        return expected.open_for(namespaces | {self._root_namespace})

    async def _await_module(
        self,
        digest: str,
        allowed: Callable[[set[str]], bool],
        namespaces: frozenset[str] | None,
    ) -> Module | None:
        """The module once a fetch under way here lands it for a client ``allowed`` to use
        it, or None at once if none may.

        A digest a fetch is known to bring waits up to ``_MODULE_WAIT`` (only
        ``_KNOWN_WAITERS`` requests at a time; a 503 past that); one that only an
        open-ended fetch might bring waits ``_UNKNOWN_WAIT``, only ``_UNKNOWN_WAITERS``
        such requests at a time, and with client certificates only when such a fetch
        is for a plugin of the client's ``namespaces`` (or the root namespace). Waiters
        wake on the pulse (a module landed, or a reconcile saw a fetch end) and let go
        as soon as nothing under way can bring their digest.
        """
        expected = self._expected()
        if digest in expected.digests:
            if self._known_waiters >= _KNOWN_WAITERS:
                raise web.HTTPServiceUnavailable(
                    text=f"module {digest}: {_KNOWN_WAITERS} downloads already wait for the"
                    " fetch that brings it; retry in a moment\n",
                    headers={"Retry-After": "1"},
                )
            wait, unknown = _MODULE_WAIT, False
        elif self._may_come(digest, namespaces) and self._unknown_waiters < _UNKNOWN_WAITERS:
            wait, unknown = _UNKNOWN_WAIT, True
        else:
            return None
        self._unknown_waiters += unknown
        self._known_waiters += not unknown
        try:
            async with asyncio.timeout(wait):
                # A landed module is served once reconcile shows a plugin using it.
                while (module := self._store.get(digest)) is None or not allowed(
                    self.users(digest)
                ):
                    await self._arrived.wait()
                    if self._store.get(digest) is not None and allowed(self.users(digest)):
                        continue
                    if not self._may_come(digest, namespaces):
                        return None
        except TimeoutError:
            return None
        finally:
            self._unknown_waiters -= unknown
            self._known_waiters -= not unknown
        return module
