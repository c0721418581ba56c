"""The heap freezer: long-lived objects leave the collector's walk; churn is collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from wasmxds.heap import HeapFreezer, StreamCounts


class _Cycle:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


class _Counts:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    def __call__(self) -> StreamCounts:
        return StreamCounts(self.opened, self.closed)


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    # The freezer changes process-wide state: leave the collector as it was found.
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_burst_of_new_streams_is_frozen_at_the_next_tick():
    """Fewer new streams than the burst size stay with the collector; a burst is frozen."""
    counts = _Counts()
    freezer = HeapFreezer(counts, min_streams=10)
    freezer.refresh()
    frozen = gc.get_freeze_count()
    kept = [object.__new__(_Counts) for _ in range(1000)]  # tracked, long-lived
    counts.opened = 9
    freezer.tick()
    assert freezer.freezes == 0
    counts.opened = 10
    freezer.tick()
    assert freezer.freezes == 1
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_cycles_left_by_closed_streams_are_collected_once_churn_reaches_the_fraction():
    """Frozen garbage cycles survive ticks until enough streams closed; then one refresh
    collects them and freezes again."""
    counts = _Counts()
    freezer = HeapFreezer(counts, min_streams=4, refresh_fraction=0.5)
    counts.opened = 20
    cycle = _Cycle()
    dead = weakref.ref(cycle)
    freezer.refresh()  # frozen while alive, as a stream's objects are
    del cycle
    gc.collect()
    assert dead() is not None, "a frozen cycle is not collected"
    counts.closed = 5  # 5 of 15 open: under half
    freezer.tick()
    assert dead() is not None
    assert freezer.refreshes == 1
    counts.closed = 8  # 8 closed, 12 open: over half
    freezer.tick()
    assert freezer.refreshes == 2
    assert dead() is None
    assert gc.get_freeze_count() > 0


async def test_run_freezes_at_start_and_thaws_when_cancelled():
    """The service's task freezes what start-up made and gives the collector back on stop."""
    freezer = HeapFreezer(_Counts(), interval=0.01)
    task = asyncio.create_task(freezer.run())
    async with asyncio.timeout(5):
        while freezer.refreshes == 0:
            await asyncio.sleep(0.01)
    assert gc.get_freeze_count() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0
