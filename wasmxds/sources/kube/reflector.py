"""List, then watch, one collection and keep a copy of its objects (client-go's Reflector).

- The first list fills the copy and gives the resourceVersion to watch from;
  every watch resumes from the last resourceVersion seen (an event's object or
  a BOOKMARK), so a dropped connection loses nothing and replays nothing.
- 410 Gone (an HTTP 410, or an ERROR event with code 410) means that version
  left the server's history: list again, and replace the copy whole, so
  objects deleted while we were away disappear.
- A failed request (no answer, 5xx, 429, a refused request) is retried with
  exponential backoff and jitter. The copy is only ever replaced by a complete
  list: while the server is unreachable, the last known objects stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Set
from typing import Any

import structlog

from wasmxds.api.objects import ObjectKey
from wasmxds.backoff import Backoff
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.protocol import (
    Collection,
    Gone,
    KubeApiError,
    WatchEvent,
    object_key,
    status_event_error,
)

__all__ = ["DEFAULT_BACKOFF", "Reflector"]

log = structlog.get_logger(__name__)

DEFAULT_BACKOFF = Backoff(initial=0.5, factor=2.0, max=30.0, jitter=0.2)
# client-go's range: a watch lasts 5 to 10 minutes, so many clients do not all
# come back at the same moment, and a watch the server forgot is noticed.
DEFAULT_WATCH_TIMEOUT = (300, 600)
# A watch that ends cleanly sooner than this without a single event counts as a failure.
_SHORTEST_WATCH = 1.0


def _resource_version(value: dict[str, Any]) -> str:
    metadata = value.get("metadata")
    found = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return found if isinstance(found, str) else ""


class Reflector:
    """Keeps ``objects`` equal to ``collection`` on the server (see module docstring).

    ``on_change`` gets the keys that changed after each list and each batch of
    watch events (possibly none after a list). ``synced`` is set after the
    first successful list; ``tried`` after the first list attempt, whatever
    its outcome.
    """

    def __init__(
        self,
        client: KubeClient,
        collection: Collection,
        *,
        on_change: Callable[[Set[ObjectKey]], None],
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: tuple[int, int] = DEFAULT_WATCH_TIMEOUT,
        page_size: int = 500,
    ) -> None:
        self.client = client
        self.collection = collection
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.tried = asyncio.Event()
        self.not_found = asyncio.Event()
        """Set once the collection answered 404 (its CRD is not installed)."""
        self.failures = 0
        """Requests failed in a row (0 while the watch is healthy)."""
        self._on_change = on_change
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._page_size = page_size

    async def run(self) -> None:
        """List and watch until cancelled."""
        gone_in_a_row = 0
        while True:
            try:
                if self.resource_version is None:
                    try:
                        await self._list()
                    finally:
                        self.tried.set()
                gone_in_a_row = 0
                await self._watch()
            except Gone as exc:
                # Relist at once (the copy stays until the new list is complete); only a
                # second 410 in a row, with no list in between, waits like a failure.
                log.info("kubernetes.relist", collection=str(self.collection), reason=exc.message)
                self.resource_version = None
                gone_in_a_row += 1
                if gone_in_a_row > 1:
                    self.failures += 1
                    await asyncio.sleep(self._backoff.delay(self.failures))
            except KubeApiError as exc:
                if exc.status == 404:
                    self.not_found.set()
                self.failures += 1
                delay = self._backoff.delay(self.failures)
                emit = log.warning if exc.transient else log.error
                emit(
                    "kubernetes.request_failed",
                    collection=str(self.collection),
                    error=str(exc),
                    hint=_hint(exc, self.collection),
                    attempt=self.failures,
                    retry_in=round(delay, 2),
                    keeping=len(self.objects),
                )
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        started = time.perf_counter()
        result = await self.client.list_all(self.collection, page_size=self._page_size)
        fresh: dict[ObjectKey, dict[str, Any]] = {}
        for item in result.items:
            key = object_key(item)
            if key is not None:
                fresh[key] = item
        changed = {key for key in self.objects if key not in fresh}
        changed.update(
            key
            for key, item in fresh.items()
            if key not in self.objects
            or _resource_version(self.objects[key]) != _resource_version(item)
        )
        self.objects = fresh
        self.resource_version = result.resource_version
        self.failures = 0
        self.synced.set()
        log.info(
            "kubernetes.listed",
            collection=str(self.collection),
            objects=len(fresh),
            changed=len(changed),
            resource_version=result.resource_version,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        self._on_change(changed)

    async def _watch(self) -> None:
        """Follow one watch request until the server ends it."""
        low, high = self._watch_timeout
        timeout = int(low + (high - low) * random.random())
        accepted = False
        events = 0
        started = time.monotonic()
        assert self.resource_version is not None
        stream = self.client.watch(self.collection, self.resource_version, timeout_seconds=timeout)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                if not accepted:
                    accepted = True
                    self.failures = 0
                    log.debug(
                        "kubernetes.watching",
                        collection=str(self.collection),
                        resource_version=self.resource_version,
                    )
                events += len(batch)
                self._apply(batch)
        if not events and time.monotonic() - started < _SHORTEST_WATCH:
            # As client-go does: something between us and the server cuts watches at
            # once; going straight back would spin.
            raise KubeApiError(f"watch {self.collection}", 0, "the server ended the watch at once")

    def _apply(self, batch: list[WatchEvent]) -> None:
        changed: set[ObjectKey] = set()
        try:
            for event in batch:
                if event.type == "ERROR":
                    raise status_event_error(f"watch {self.collection}", event.object)
                version = event.resource_version
                if event.type in ("ADDED", "MODIFIED", "DELETED"):
                    key = object_key(event.object)
                    if key is not None:
                        if event.type == "DELETED":
                            self.objects.pop(key, None)
                        else:
                            self.objects[key] = event.object
                        changed.add(key)
                elif event.type != "BOOKMARK":
                    log.warning(
                        "kubernetes.unknown_event",
                        collection=str(self.collection),
                        type=event.type,
                    )
                if version:
                    self.resource_version = version
        finally:
            # Events before an ERROR in the same read were real; report them.
            if changed:
                self._on_change(changed)


def _hint(exc: KubeApiError, collection: Collection) -> str:
    """What to check, for the errors a person has to fix."""
    verb = "list and watch"
    if exc.status in (401, 403):
        return (
            f"the credentials in use may not {verb} {collection.resource}"
            " (check the service account's RBAC)"
        )
    if exc.status == 404 and collection.resource == "wasmplugins":
        return "is the WasmPlugin CRD (wasmplugins.extensions.istio.io) installed?"
    if exc.status == 404 and collection.resource == "trafficextensions":
        return (
            "is the TrafficExtension CRD (trafficextensions.extensions.istio.io, Istio 1.30)"
            " installed? WasmPlugins are served meanwhile"
        )
    return ""
