"""Keep the cyclic garbage collector off the objects that live as long as a stream.

A connected proxy costs the server about 90 objects the collector tracks (its
tasks, coroutine frames, gRPC call, protocol state), and they live for hours.
CPython collects the oldest generation each time it has grown by a quarter,
and a full collection walks every tracked object: at 10,000 streams that is
one 0.5-1.2 s stall of every stream, several times during a reconnect storm
and again during pushes, when the writers' short-lived objects tip the count
(``docs/performance.md``). The objects it walks are the ones that never become
garbage: imported modules, and then the streams.

So, as Instagram did for its forked workers (CPython's ``gc.freeze`` docs),
:class:`HeapFreezer` moves what exists into the permanent generation, which
the collector does not walk: once at start, and again after each burst of new
streams. Frozen objects freed by reference counting go as usual; only cycles
among them wait. Closed streams leave such cycles (a task and its frame), so
after enough streams have closed since the last full collection the freezer
thaws, collects once, and freezes again: the one full pause, paid per
``refresh_fraction`` of the fleet that came and went instead of per quarter of
growth. Memory held by dead cycles is bounded by that fraction.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

__all__ = ["HeapFreezer", "StreamCounts"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """Streams opened and closed since the server started."""

    opened: int
    closed: int


class HeapFreezer:
    """Freezes the heap after bursts of new streams; thaws and collects after churn."""

    def __init__(
        self,
        counts: Callable[[], StreamCounts],
        *,
        interval: float = 1.0,
        min_streams: int = 64,
        refresh_fraction: float = 0.25,
    ) -> None:
        """``counts`` reads the server's stream totals. A burst of at least ``min_streams``
        new streams is frozen at the next tick; closed streams trigger a full collection
        once they reach ``refresh_fraction`` of the streams then open (and ``min_streams``)."""
        self._counts = counts
        self._interval = interval
        self._min_streams = min_streams
        self._refresh_fraction = refresh_fraction
        self._frozen_opened = 0
        self._collected_closed = 0
        self.freezes = 0
        self.refreshes = 0

    async def run(self) -> None:
        """Freeze what start-up made, then check every ``interval`` until cancelled."""
        self.refresh()
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.tick()
        finally:
            # Whoever runs next in this process (tests, an embedding program)
            # gets an ordinary collector back.
            gc.unfreeze()

    def tick(self) -> None:
        counts = self._counts()
        closed = counts.closed - self._collected_closed
        live = counts.opened - counts.closed
        if closed >= max(self._min_streams, self._refresh_fraction * live):
            self.refresh()
        elif counts.opened - self._frozen_opened >= self._min_streams:
            # The young generations hold this burst's objects and some garbage;
            # a young collection drops the garbage before the rest is frozen.
            gc.collect(1)
            gc.freeze()
            self._frozen_opened = counts.opened
            self.freezes += 1
            log.debug("heap.frozen", frozen=gc.get_freeze_count(), streams=live)

    def refresh(self) -> None:
        """Thaw, collect everything once, freeze what is left."""
        counts = self._counts()
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self._frozen_opened = counts.opened
        self._collected_closed = counts.closed
        self.refreshes += 1
        log.info(
            "heap.collected",
            collected=collected,
            frozen=gc.get_freeze_count(),
            streams=counts.opened - counts.closed,
            seconds=round(time.perf_counter() - started, 3),
        )
