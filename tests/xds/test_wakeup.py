"""A stream writer's wake-up: set before or during the wait, consumed by the wait."""

from __future__ import annotations

import asyncio

import pytest

from wasmxds.xds.wakeup import Wakeup


async def test_a_set_before_the_wait_returns_at_once_and_is_consumed():
    """Woken while busy, the writer runs again at once, and only once."""
    wake = Wakeup()
    wake.set()
    wake.set()
    async with asyncio.timeout(1):
        await wake.wait()
    assert not wake.is_set()
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    waiter.cancel()


async def test_a_set_during_the_wait_wakes_the_waiter():
    """A push while the writer sleeps wakes it."""
    wake = Wakeup()
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    wake.set()
    async with asyncio.timeout(1):
        await waiter
    assert not wake.is_set()


async def test_a_cancelled_wait_leaves_it_usable():
    """A stream closing while its writer sleeps does not break a later set/wait."""
    wake = Wakeup()
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    wake.set()
    async with asyncio.timeout(1):
        await wake.wait()
