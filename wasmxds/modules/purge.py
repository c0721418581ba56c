"""Keep the module cache bounded: expire unused modules, evict least recently used ones.

Rules, in order:

1. a module the current snapshot references (or a current request is ready
   with) is never deleted, whatever its age or the size limit;
2. a module unused for ``expiry`` seconds is deleted (Istio's
   ``WASM_MODULE_EXPIRY``, 24 h by default). "Used" is the last time a
   snapshot referenced it, from the index; a file the index does not know
   counts from its modification time;
3. if the cache is still over ``max_bytes``, the least recently used modules
   go until it fits (or only protected modules are left, which is logged).

Deleting a module also drops it from the index, so nothing later resolves to
a file that is gone. Temporary files a crash left behind are removed too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.store import ModuleStore

__all__ = ["CachePurger", "PurgeReport"]

log = structlog.get_logger(__name__)

# Istio's WASM_PURGE_INTERVAL; shorter when the expiry itself is short.
_MAX_INTERVAL = 3600.0
_MIN_INTERVAL = 1.0
_STALE_TEMPORARY = 3600.0


@dataclass(frozen=True, slots=True)
class PurgeReport:
    expired: tuple[str, ...] = ()
    evicted: tuple[str, ...] = ()
    kept_bytes: int = 0


class CachePurger:
    """Runs the purge rules over a store and its index (see module docstring)."""

    def __init__(
        self,
        *,
        store: ModuleStore,
        index: ModuleIndex,
        in_use: Callable[[], set[str]],
        expiry: float,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._index = index
        self._in_use = in_use
        self.expiry = expiry
        self.max_bytes = max_bytes
        self._clock = clock
        self._wake = asyncio.Event()

    @property
    def interval(self) -> float:
        return min(_MAX_INTERVAL, max(_MIN_INTERVAL, self.expiry / 4))

    def wake(self) -> None:
        """Ask for a purge soon (a new module may have pushed the cache over its size limit)."""
        if self.max_bytes is not None:
            self._wake.set()

    async def run(self) -> None:
        """Purge every ``interval`` (and when woken) and flush the index; until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.purge()

    async def purge(self) -> PurgeReport:
        protected = self._in_use()
        now = self._clock()
        listed = await asyncio.to_thread(self._store.list_modules)
        known = self._index.known_modules()
        candidates: list[tuple[float, str, int]] = []
        total = 0
        for module, mtime in listed:
            total += module.size
            candidates.append((known.get(module.digest, mtime), module.digest, module.size))
        expired: list[str] = []
        evicted: list[str] = []
        freed = 0
        for last_used, digest, size in sorted(candidates):
            if digest in protected:
                continue
            over = self.max_bytes is not None and total > self.max_bytes
            if now - last_used < self.expiry and not over:
                continue
            if await asyncio.to_thread(self._store.remove, digest):
                (expired if now - last_used >= self.expiry else evicted).append(digest)
                total -= size
                freed += size
            self._index.forget(digest)
        for digest in known.keys() - {module.digest for module, _ in listed}:
            self._index.forget(digest)  # already gone from disk
        await asyncio.to_thread(self._store.remove_stale_temporaries, now - _STALE_TEMPORARY)
        if self.max_bytes is not None and total > self.max_bytes:
            log.warning(
                "modules.cache_over_limit",
                size=total,
                limit=self.max_bytes,
                reason="every remaining module is referenced by the current snapshot",
            )
        report = PurgeReport(tuple(expired), tuple(evicted), total)
        if expired or evicted:
            log.info(
                "modules.purged",
                expired=len(expired),
                evicted=len(evicted),
                freed_bytes=freed,
                cache_bytes=total,
            )
        await self._index.flush()
        return report
