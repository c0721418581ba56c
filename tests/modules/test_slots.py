"""PullSlots: the global limit, the per-host cap, fair turns, stalled transfers lending slots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from wasmxds.modules.progress import transfer_observer
from wasmxds.modules.slots import PullSlots, SlotTakenBack


class Holder:
    """A task that takes a slot for ``host``, records the order it got in, and holds it."""

    def __init__(self, slots: PullSlots, host: str, order: list[str], *, retry: bool = False):
        self.host = host
        self.granted = asyncio.Event()
        self.release = asyncio.Event()
        self.taken_back: SlotTakenBack | None = None
        self.task = asyncio.create_task(self._run(slots, order, retry))

    async def _run(self, slots: PullSlots, order: list[str], retry: bool) -> None:
        try:
            async with slots.slot(self.host, retry=retry):
                order.append(self.host)
                self.granted.set()
                await self.release.wait()
        except SlotTakenBack as exc:
            self.taken_back = exc


@contextlib.asynccontextmanager
async def holders() -> AsyncIterator[list[Holder]]:
    made: list[Holder] = []
    try:
        yield made
    finally:
        for holder in made:
            holder.task.cancel()
        await asyncio.gather(*(h.task for h in made), return_exceptions=True)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_host_uses_idle_slots_beyond_its_cap_until_another_host_waits() -> None:
    """With 4 slots and 2 per host, a lone host gets all 4; another host's pull then gets the
    next slot that frees up, and once nobody else waits the first host gets it again."""
    slots = PullSlots(4, per_host=2)
    order: list[str] = []
    async with holders() as made:
        busy = [Holder(slots, "one.example", order) for _ in range(6)]
        made += busy
        await settle()
        assert order == ["one.example"] * 4, "no slot stays idle while only one host asks"
        other = Holder(slots, "other.example", order)
        made.append(other)
        await settle()
        assert slots.waiting == 3
        busy[0].release.set()
        await asyncio.wait_for(other.granted.wait(), 1)
        assert order[-1] == "other.example", "the other host goes before the busy host's queue"
        busy[1].release.set()
        await settle()
        assert order[-1] == "one.example", "nobody else waits: the busy host gets it back"
        assert slots.active == 4
        assert slots.waiting == 1


async def test_a_host_over_its_cap_gets_no_slot_while_another_host_waits() -> None:
    """The cap outranks first-pulls-first: a first pull of a host at its cap waits while a
    retry of a host under it takes the freed slot."""
    slots = PullSlots(2, per_host=1)
    order: list[str] = []
    async with holders() as made:
        held = [Holder(slots, "a", order), Holder(slots, "x", order)]
        made += held
        await settle()
        capped = Holder(slots, "a", order)
        retry = Holder(slots, "b", order, retry=True)
        made += [capped, retry]
        await settle()
        held[1].release.set()
        await asyncio.wait_for(retry.granted.wait(), 1)
        assert not capped.granted.is_set()
        held[0].release.set()
        await asyncio.wait_for(capped.granted.wait(), 1)
    assert order == ["a", "x", "b", "a"]


async def test_a_freed_slot_goes_to_the_host_served_least_recently() -> None:
    """Queued a1, a2, b1 behind a held slot: when it frees, b1 goes before a2."""
    slots = PullSlots(1)
    order: list[str] = []
    async with holders() as made:
        first = Holder(slots, "a", order)
        made.append(first)
        await first.granted.wait()
        for host in ("a", "a", "b"):
            made.append(Holder(slots, host, order))
            await settle()
        for holder in made:
            holder.release.set()
        await asyncio.gather(*(h.task for h in made))
    assert order == ["a", "b", "a", "a"]


async def test_first_pulls_go_before_retries() -> None:
    """A retry queued first still lets a never-tried pull (of another host) go ahead of it."""
    slots = PullSlots(1)
    order: list[str] = []
    async with holders() as made:
        first = Holder(slots, "busy", order)
        made.append(first)
        await first.granted.wait()
        made.append(Holder(slots, "failing", order, retry=True))
        await settle()
        made.append(Holder(slots, "fresh", order))
        await settle()
        for holder in made:
            holder.release.set()
        await asyncio.gather(*(h.task for h in made))
    assert order == ["busy", "fresh", "failing"]


async def test_stalled_transfers_lend_their_slots_to_waiting_pulls() -> None:
    """Four slots held by transfers receiving nothing: a fifth host gets one after lend_after."""
    slots = PullSlots(4, per_host=2, lend_after=0.2)
    order: list[str] = []
    async with holders() as made:
        made += [Holder(slots, f"slow-{i}", order) for i in range(4)]
        await settle()
        good = Holder(slots, "good", order)
        made.append(good)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(good.granted.wait(), 2)
        waited = asyncio.get_running_loop().time() - started
        print(f"\nthe fifth host waited {waited:.2f} s for a slot held by stalled transfers")
        assert slots.active == 5
        assert all(not h.task.done() for h in made[:4]), "stalled transfers carry on"


async def test_busy_transfers_keep_their_slots() -> None:
    """A transfer that keeps receiving is not stalled: a waiting pull keeps waiting."""
    slots = PullSlots(1, lend_after=0.2, stall_rate=1024.0)
    busy_until = asyncio.Event()

    async def busy() -> None:
        async with slots.slot("fast"):
            observe = transfer_observer.get()
            assert observe is not None
            while not busy_until.is_set():
                observe(64 * 1024)
                await asyncio.sleep(0.02)

    order: list[str] = []
    async with holders() as made:
        task = asyncio.create_task(busy())
        await settle()
        waiter = Holder(slots, "other", order)
        made.append(waiter)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter.granted.wait()), 0.8)
        busy_until.set()
        await task
        await asyncio.wait_for(waiter.granted.wait(), 1)


async def test_lent_slots_are_bounded_by_the_limit() -> None:
    """At most ``limit`` stalled transfers run beside the limit: 2 slots never become 5 pulls."""
    slots = PullSlots(2, lend_after=0.1)
    order: list[str] = []
    async with holders() as made:
        # Retries: they wait for a lent slot but never take one back.
        made += [Holder(slots, f"stalled-{i}", order, retry=i >= 2) for i in range(6)]
        await asyncio.sleep(1.0)
        assert slots.active == 4
        assert slots.waiting == 2


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    """Cancelling a pull that waits for a slot removes it; the slot goes to the next one."""
    slots = PullSlots(1)
    order: list[str] = []
    async with holders() as made:
        first = Holder(slots, "a", order)
        made.append(first)
        await first.granted.wait()
        gone = Holder(slots, "b", order)
        kept = Holder(slots, "c", order)
        made += [gone, kept]
        await settle()
        gone.task.cancel()
        await settle()
        assert slots.waiting == 1
        first.release.set()
        await asyncio.wait_for(kept.granted.wait(), 1)
    assert order == ["a", "c"]


async def test_a_first_pull_takes_back_the_slot_of_the_longest_stalled_lent_transfer() -> None:
    """Two slots and two lent, all four stalled: a new first pull cancels the oldest lent one
    (SlotTakenBack, worded for the user) and gets a slot; the other three carry on."""
    slots = PullSlots(2, lend_after=0.2)
    order: list[str] = []
    async with holders() as made:
        stalled = [Holder(slots, f"stalled-{i}", order) for i in range(4)]
        made += stalled
        await asyncio.wait_for(asyncio.gather(*(h.granted.wait() for h in stalled)), 5)
        assert slots.active == 4, "two counted and two lent: the lent pool is full"
        # The first two were lent first, so they have been stalled longest.
        lent_first = [h for h in stalled if h.host == order[0]]
        good = Holder(slots, "good", order)
        made.append(good)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(good.granted.wait(), 5)
        print(f"\nthe first pull waited {loop.time() - started:.2f} s with the lent pool full")
        await asyncio.wait_for(lent_first[0].task, 1)
        taken = lent_first[0].taken_back
        assert taken is not None, "the longest-stalled lent transfer lost its slot"
        assert "stalled while other modules waited for a download slot" in str(taken)
        others = [h for h in stalled if h is not lent_first[0]]
        assert all(not h.task.done() for h in others), "only one transfer is taken back"
        assert slots.active == 4


async def test_retries_never_take_a_slot_back() -> None:
    """With the lent pool full of stalled transfers, a waiting retry waits: only first pulls
    cancel a transfer (retries taking turns would only churn)."""
    slots = PullSlots(1, lend_after=0.1)
    order: list[str] = []
    async with holders() as made:
        stalled = [Holder(slots, f"stalled-{i}", order) for i in range(2)]
        made += stalled
        await asyncio.wait_for(asyncio.gather(*(h.granted.wait() for h in stalled)), 5)
        again = Holder(slots, "failing", order, retry=True)
        made.append(again)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(again.granted.wait()), 1.0)
        assert all(not h.task.done() for h in stalled)


def test_per_host_cap_never_exceeds_the_limit() -> None:
    """A per-host cap above the global limit is the global limit."""
    assert PullSlots(2, per_host=8).per_host == 2
    with pytest.raises(ValueError, match="at least 1"):
        PullSlots(0)
