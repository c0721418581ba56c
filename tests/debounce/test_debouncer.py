"""Debounce timing (Istio's 100 ms quiet / 10 s max) on a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools

import pytest

from wasmxds.debounce import Debouncer


class ManualClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.time + seconds, next(self._ids), future))
        await future

    async def advance(self, seconds: float) -> None:
        self.time += seconds
        while self._sleepers and self._sleepers[0][0] <= self.time:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await _settle()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture(name="clock")
def _clock() -> ManualClock:
    return ManualClock()


async def _start(
    debouncer: Debouncer, pushes: list[float], clock: ManualClock, hold: asyncio.Event | None = None
):
    async def push() -> None:
        pushes.append(clock.now())
        if hold is not None:
            await hold.wait()

    task = asyncio.create_task(debouncer.run(push))
    await _settle()
    return task


async def test_push_after_quiet_period(clock):
    """One event is pushed once `after` has passed without another event, not before."""
    debouncer = Debouncer(after=0.1, max_wait=10, clock=clock)
    pushes: list[float] = []
    task = await _start(debouncer, pushes, clock)
    debouncer.trigger()
    await clock.advance(0.09)
    assert pushes == []
    await clock.advance(0.02)
    assert pushes == [pytest.approx(0.11)]
    await _stop(task)


async def test_burst_is_merged_into_one_push(clock):
    """Many events within the quiet period produce a single push."""
    debouncer = Debouncer(after=0.1, max_wait=10, clock=clock)
    pushes: list[float] = []
    task = await _start(debouncer, pushes, clock)
    for _ in range(5):
        debouncer.trigger()
        await clock.advance(0.05)
    await clock.advance(0.2)
    assert len(pushes) == 1
    assert debouncer.merged_events == 5
    await _stop(task)


async def test_continuous_events_push_at_max(clock):
    """Events that never pause are pushed `max_wait` after the first one."""
    debouncer = Debouncer(after=0.1, max_wait=1.0, clock=clock)
    pushes: list[float] = []
    task = await _start(debouncer, pushes, clock)
    for _ in range(30):
        debouncer.trigger()
        await clock.advance(0.05)
    assert pushes
    assert pushes[0] == pytest.approx(1.0, abs=0.051)
    await _stop(task)


async def test_events_during_a_push_start_the_next_window(clock):
    """Only one push runs at a time; events during it give exactly one more push."""
    debouncer = Debouncer(after=0.1, max_wait=10, clock=clock)
    pushes: list[float] = []
    hold = asyncio.Event()
    task = await _start(debouncer, pushes, clock, hold)
    debouncer.trigger()
    await clock.advance(0.2)
    assert len(pushes) == 1
    debouncer.trigger()
    debouncer.trigger()
    await clock.advance(0.5)
    assert len(pushes) == 1, "a second push started while the first was running"
    hold.set()
    await _settle()
    await clock.advance(0.01)
    assert len(pushes) == 2
    await _stop(task)


async def test_no_events_no_push(clock):
    """Without events nothing is pushed, however long we wait."""
    debouncer = Debouncer(after=0.1, max_wait=1, clock=clock)
    pushes: list[float] = []
    task = await _start(debouncer, pushes, clock)
    await clock.advance(100)
    assert pushes == []
    await _stop(task)


def test_negative_durations_are_refused():
    """Debounce durations must not be negative."""
    with pytest.raises(ValueError, match="negative"):
        Debouncer(after=-1, max_wait=1)
